"""The committed demo data: HAM10000 layout, imbalance, lesion groups, and reproducible from code."""

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.config import HAM10000_CLASSES
from pipeline.data.demo_data import class_counts, generate
from pipeline.data.ingest import METADATA_FILE, locate_images, read_metadata

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def test_demo_data_has_the_ham10000_layout_and_imbalance(repo_root):
    demo = repo_root / "data" / "demo"
    metadata = read_metadata(demo, HAM10000_CLASSES)
    assert list(metadata.columns) == HAM_COLUMNS
    found, missing, unlisted = locate_images(demo, metadata["image_id"])
    assert not missing and unlisted == 0
    assert {path.parent.name for path in found.values()} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    counts = metadata["dx"].value_counts()
    assert set(counts.index) == set(HAM10000_CLASSES)
    assert counts.idxmax() == "nv" and 0.6 < counts["nv"] / len(metadata) < 0.7
    assert metadata.groupby("lesion_id").size().max() > 1, "several images per lesion, as in HAM10000"
    assert sum(path.stat().st_size for path in demo.rglob("*")) < 5 * 1024 * 1024


def test_committed_demo_data_is_what_the_generator_makes(repo_root, tmp_path):
    committed = repo_root / "data" / "demo"
    regenerated = generate(tmp_path / "demo")
    pd.testing.assert_frame_equal(
        pd.read_csv(committed / METADATA_FILE), pd.read_csv(tmp_path / "demo" / METADATA_FILE)
    )
    for image_id in regenerated["image_id"].iloc[::97]:
        part = next(p for p in ("HAM10000_images_part_1", "HAM10000_images_part_2") if (committed / p / f"{image_id}.jpg").exists())
        ours = np.asarray(Image.open(committed / part / f"{image_id}.jpg"), dtype=int)
        fresh = np.asarray(Image.open(tmp_path / "demo" / part / f"{image_id}.jpg"), dtype=int)
        assert np.abs(ours - fresh).mean() < 1.0


def test_class_counts_follow_ham10000_with_a_floor():
    counts = class_counts(700, minimum=16)
    assert counts["nv"] > counts["mel"] > counts["bcc"] > counts["akiec"]
    assert min(counts.values()) == 16
