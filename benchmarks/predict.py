"""Inference: images/s of the predict CLI's code path on a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import REPO_ROOT, median_seconds


def bench_predict(repeats: int, work: Path, batch_size: int) -> dict:
    """images/s of pipeline.serving.predict on a folder of 1,000 images, model loading excluded."""
    import keras

    from pipeline.config import CnnParams, load_params
    from pipeline.models.builders import build_cnn
    from pipeline.serving.predict import predict

    base, params = load_params(REPO_ROOT / "params.yaml", "train_cnn_focal", CnnParams)
    model_path = work / "model.keras"
    build_cnn(params, base.classes, base.image_size).save(model_path)
    folder = work / "predict"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for number in range(1000):
        Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(folder / f"{number}.jpg")
    keras.saving.load_model(model_path)  # warm caches
    seconds = median_seconds(lambda: list(predict(str(model_path), [str(folder)], batch_size)), repeats)
    return {"images": 1000, "batch_size": batch_size, "images_per_second": round(1000 / seconds, 1)}
