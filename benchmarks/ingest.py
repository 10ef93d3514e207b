"""Ingest: the stage's decode path (parallel, JPEG draft mode) against a naive one-process loop."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import REAL_DATA, median_seconds


def naive_decode(paths: list[Path], size: int) -> np.ndarray:
    """The baseline: one process, full-resolution decode, crop, resize."""
    from pipeline.data.images import centre_crop_resize

    return np.stack([centre_crop_resize(Image.open(path).convert("RGB"), size) for path in paths])


def bench_ingest(repeats: int, work: Path) -> dict:
    """The ingest code path (parallel, JPEG draft) against a naive one-process PIL loop."""
    from pipeline.data.ingest import decode_all

    sets = {}
    if (REAL_DATA / "HAM10000_metadata.csv").is_file():
        sets["ham10000_200x150"] = sorted(REAL_DATA.glob("HAM10000_images_part_*/*.jpg"))
    else:
        print(f"  ingest: {REAL_DATA} absent, real-data figure skipped")
    large = work / "large"
    large.mkdir()
    rng = np.random.default_rng(0)
    for number in range(1500):  # 600x450 like the original HAM10000 JPEGs
        base = rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)
        Image.fromarray(np.kron(base, np.ones((10, 10, 1), np.uint8))).save(large / f"{number}.jpg", quality=90)
    sets["synthetic_600x450"] = sorted(large.glob("*.jpg"))
    results = {}
    workers = os.cpu_count() or 1
    for name, paths in sets.items():
        stage = median_seconds(lambda: decode_all(paths, 128, True, workers), repeats)
        naive = median_seconds(lambda: naive_decode(paths, 128), repeats)
        results[name] = {
            "images": len(paths),
            "stage_images_per_second": round(len(paths) / stage, 1),
            "naive_images_per_second": round(len(paths) / naive, 1),
            "speedup": round(naive / stage, 2),
            "goal_speedup": 2.0,
        }
    return results
