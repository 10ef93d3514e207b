"""Scoring one model's predictions on a labelled image set: the test metrics of ``evaluate``
(accuracy, balanced accuracy, macro-F1, macro one-vs-rest ROC AUC, ECE, per-class scores) and the
plot data ``dvc plots`` draws."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from pipeline.config import EvaluateParams
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Scored:
    """Predictions of one model on one labelled image set."""

    name: str
    labels: np.ndarray
    probabilities: np.ndarray


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Top-label ECE: the bin-size-weighted gap between confidence and accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right-closed bins so a confidence of exactly 1.0 lands in the last bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(error)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], ece_bins: int
) -> dict[str, Any]:
    """Accuracy, balanced accuracy (the ISIC 2018 metric), macro-F1, macro OvR ROC AUC, ECE and per-class scores."""
    predicted = probabilities.argmax(axis=1)
    indices = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    present = np.unique(labels)
    if len(present) == len(classes):
        auc = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=indices))
    else:  # AUC is undefined for a class with no positives; average over the classes present
        auc = (
            float(np.mean([roc_auc_score(labels == c, probabilities[:, c]) for c in present]))
            if len(present) > 1
            else float("nan")
        )
    return {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
        "roc_auc_macro": auc,
        "ece": expected_calibration_error(labels, probabilities, ece_bins),
        "melanoma_recall": float(recall[classes.index("mel")]),
        "recall": {dx: float(r) for dx, r in zip(classes, recall)},
        "precision": {dx: float(p) for dx, p in zip(classes, precision)},
        "f1": {dx: float(f) for dx, f in zip(classes, f1)},
        "support": {dx: int(s) for dx, s in zip(classes, support)},
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
