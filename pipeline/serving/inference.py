"""Loading trained models and turning images into class probabilities.

Used by ``evaluate`` and ``predict`` so both score images exactly as training saw them.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from pipeline.data.datasets import make_dataset
from pipeline.errors import PipelineError
from pipeline.tracking.recorder import MODEL_FILE


def load_model(reference: str | Path) -> keras.Model:
    """Load a model from a ``.keras`` file, a folder holding ``model.keras``, or ``models:/NAME@ALIAS``.

    Keras safe mode stays on: a model file cannot run arbitrary code when loaded.
    """
    reference = str(reference)
    if reference.startswith(("models:/", "runs:/")):
        from pipeline.tracking import mlflow_runs as tracking

        tracking.connect_for_loading()
        try:
            import mlflow

            return mlflow.keras.load_model(reference)
        except Exception as error:
            raise PipelineError(
                f"cannot load {reference} from MLflow at {tracking.tracking_uri()} ({error})".splitlines()[0]
            ) from error
    path = Path(reference)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: model file not found")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:
        raise PipelineError(f"{path}: cannot load model ({error})".splitlines()[0]) from error


def predict_probabilities(
    model: keras.Model, images: np.ndarray, batch_size: int = 64, tta: bool = False
) -> np.ndarray:
    """Class probabilities for uint8 images at the model's input size.

    With ``tta`` the prediction is the mean over the image and its horizontal, vertical and
    both-axes flips (dermoscopy has no canonical orientation).
    """
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    views = [images]
    if tta:
        views += [images[:, :, ::-1], images[:, ::-1, :], images[:, ::-1, ::-1]]
    total = None
    for view in views:
        dataset = make_dataset(np.ascontiguousarray(view), None, model.output_shape[-1], batch_size)
        probabilities = model.predict(dataset, verbose=0).astype(np.float64)
        total = probabilities if total is None else total + probabilities
    return (total / len(views)).astype(np.float32)
