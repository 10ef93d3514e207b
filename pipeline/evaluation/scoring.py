"""Scoring one model's predictions on a labelled image set: the test metrics of ``evaluate``
(accuracy, balanced accuracy, macro-F1, macro one-vs-rest ROC AUC, ECE, per-class scores) and the
plot data ``dvc plots`` draws."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from pipeline.config import EvaluateParams
from pipeline.errors import PipelineError
from pipeline.metrics import point_metrics


@dataclass(frozen=True)
class Scored:
    """Predictions of one model on one labelled image set."""

    name: str
    labels: np.ndarray
    probabilities: np.ndarray


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], ece_bins: int
) -> dict[str, Any]:
    """Accuracy, balanced accuracy (the ISIC 2018 metric), macro-F1, macro OvR ROC AUC over the
    classes present, ECE and per-class scores (:mod:`pipeline.metrics`; a class absent from
    ``labels`` has recall 0, as scikit-learn's ``zero_division=0`` gives)."""
    point = point_metrics(labels, probabilities, classes.index("mel"), ece_bins)
    recall = np.nan_to_num(point["recall"], nan=0.0)
    return {
        "images": int(len(labels)),
        "accuracy": point["accuracy"],
        "balanced_accuracy": point["balanced_accuracy"],
        "macro_f1": point["macro_f1"],
        "roc_auc_macro": point["roc_auc_macro"],
        "ece": point["ece"],
        "melanoma_recall": float(recall[classes.index("mel")]),
        "recall": {dx: float(r) for dx, r in zip(classes, recall)},
        "precision": {dx: float(p) for dx, p in zip(classes, point["precision"])},
        "f1": {dx: float(f) for dx, f in zip(classes, point["f1"])},
        "support": {dx: int(n) for dx, n in zip(classes, point["support"])},
    }


def write_plot_data(scored: Scored, classes: tuple[str, ...], out_dir: Path) -> None:
    """CSV files for ``dvc plots``: one row per test image, and one ROC curve per class."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = scored.probabilities.argmax(axis=1)
    pd.DataFrame({"actual": np.asarray(classes)[scored.labels], "predicted": np.asarray(classes)[predicted]}).to_csv(
        out_dir / "predictions.csv", index=False
    )
    curves = []
    for index, dx in enumerate(classes):
        positives = scored.labels == index
        if positives.any() and not positives.all():
            fpr, tpr, _ = roc_curve(positives, scored.probabilities[:, index])
            curves.append(pd.DataFrame({"dx": dx, "fpr": fpr, "tpr": tpr}))
    pd.concat(curves, ignore_index=True).to_csv(out_dir / "roc.csv", index=False)


def evaluate_models(
    models: dict[str, Any], images_by_size: Any, labels: np.ndarray, classes: tuple[str, ...], params: EvaluateParams
) -> tuple[dict[str, dict[str, Any]], list[Scored]]:
    """Score each model; ``images_by_size(size)`` gives the test images at a model's input size."""
    from pipeline.models.builders import model_class_names, model_input_size
    from pipeline.serving.inference import predict_probabilities

    results, scored_models = {}, []
    for name, model in models.items():
        if tuple(model_class_names(model)) != tuple(classes):
            raise PipelineError(f"model {name} predicts classes {model_class_names(model)}, params say {list(classes)}")
        probabilities = predict_probabilities(model, images_by_size(model_input_size(model)), tta=params.tta)
        scored = Scored(name, labels, probabilities)
        results[name] = classification_metrics(labels, probabilities, classes, params.ece_bins)
        scored_models.append(scored)
    return results, scored_models
