"""What every benchmark shares: where things are, median timing, synthetic training data."""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "bench.json"
REAL_DATA = Path(os.environ.get("HAM10000_DIR") or REPO_ROOT.parent / "shared" / "ham10000")


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``function`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def training_data(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random uint8 images of ``size`` px and their labels (7 classes), seeded."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, count).astype(np.int32)
    images = rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8)
    return images, labels


def compiled(model, params, jit_compile: bool | str = "auto"):
    """``model`` compiled with the pipeline's own loss and optimizer for ``params``."""
    from pipeline.training.recipe import build_loss, build_optimizer

    model.compile(
        optimizer=build_optimizer(params, params.learning_rate, 10, 1),
        loss=build_loss(params, None),
        jit_compile=jit_compile,
    )
    return model


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
