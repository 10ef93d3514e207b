"""The trained model as it ships: architecture and weights in float32, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from pipeline.io import replacing


def save_for_inference(model: keras.Model, path: str | Path) -> None:
    """Save the architecture and weights only (the optimizer state would triple the file), in
    float32: a model trained in mixed precision on a GPU must predict in full precision on a
    CPU (its variables are float32 already; only the layers' compute policy changes). Atomic:
    a crash leaves no half-written model file for a later stage to trust."""
    clean = keras.Model.from_config(_portable(model.get_config()))
    clean.set_weights(model.get_weights())
    with replacing(path, ".partial.keras") as partial:
        clean.save(partial)


def _portable(config: Any) -> Any:
    """``config`` with every mixed-precision dtype policy replaced by float32 and BatchNorm's
    TensorFlow-only ``synchronized`` (set for several devices) switched off."""
    if isinstance(config, list):
        return [_portable(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith("mixed_"):
        return {**config, "config": {**config["config"], "name": "float32"}}
    if config.get("class_name") == "BatchNormalization" and config.get("config", {}).get("synchronized"):
        config = {**config, "config": {**config["config"], "synchronized": False}}  # and on into its dtype policy
    return {key: _portable(value) for key, value in config.items()}
