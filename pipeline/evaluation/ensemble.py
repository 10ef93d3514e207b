"""A weighted mean of several models' class probabilities, the weights chosen on validation.

It costs no training: ``evaluate`` predicts the validation split with every model, searches
the weights on a grid over the simplex (step ``0.1``: 66 candidates for three models) for the
best validation balanced accuracy (ties: the better validation accuracy, then the lower
validation log-loss, so a model whose probabilities carry no information gets no weight),
and applies them to the test split. The test split never influences the weights.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score, log_loss

from pipeline.errors import PipelineError
from pipeline.evaluation.scoring import Scored


def simplex_grid(count: int, step: float) -> np.ndarray:
    """Every weight vector of ``count`` non-negative multiples of ``step`` that sum to 1."""
    parts = round(1.0 / step)
    if not np.isclose(parts * step, 1.0):
        raise PipelineError(f"evaluate.ensemble_grid_step: 1 must be a whole multiple of it, got {step}")
    rows = [combo for combo in itertools.product(range(parts + 1), repeat=count) if sum(combo) == parts]
    return np.asarray(rows, dtype=np.float64) / parts


def combine(probabilities: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted mean of per-model probability arrays (N x classes each)."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    return np.tensordot(np.asarray(weights, dtype=np.float64), stacked, axes=1).astype(np.float32)


def choose_weights(
    val_probabilities: list[np.ndarray], val_labels: np.ndarray, step: float
) -> tuple[np.ndarray, float]:
    """The grid weights with the best validation balanced accuracy; returns (weights, score)."""
    if not val_probabilities:
        raise PipelineError("an ensemble needs at least one model")
    classes = np.arange(val_probabilities[0].shape[1])
    best_key, best_weights = None, None
    for weights in simplex_grid(len(val_probabilities), step):
        probabilities = combine(val_probabilities, weights)
        predicted = probabilities.argmax(axis=1)
        key = (
            round(float(balanced_accuracy_score(val_labels, predicted)), 10),
            round(float(np.mean(predicted == val_labels)), 10),
            -float(log_loss(val_labels, np.clip(probabilities, 1e-7, 1.0), labels=classes)),
        )
        if best_key is None or key > best_key:
            best_key, best_weights = key, weights
    assert best_weights is not None and best_key is not None
    return best_weights, best_key[0]


@dataclass(frozen=True)
class Ensemble:
    """The ensemble's test probabilities and how they were made."""

    name: str
    probabilities: np.ndarray
    weights: dict[str, float]
    val_balanced_accuracy: float
    #: The member with the best validation balanced accuracy alone: the single model the
    #: ensemble has to beat (chosen on validation like the weights, never on test).
    best_single: str = ""


def ensemble_of(test: list[Scored], val: list[Scored], step: float, all_models: list[str] | None = None) -> Ensemble:
    """Weights chosen on the validation predictions, applied to the test predictions. The
    models of ``all_models`` that are not members (smoke runs) are listed with weight 0."""
    weights, val_score = choose_weights([item.probabilities for item in val], val[0].labels, step)
    chosen = {item.name: round(float(w), 6) for item, w in zip(test, weights)}
    alone = {item.name: balanced_accuracy_score(item.labels, item.probabilities.argmax(axis=1)) for item in val}
    return Ensemble(
        "ensemble",
        combine([item.probabilities for item in test], weights),
        {name: chosen.get(name, 0.0) for name in (all_models or list(chosen))},
        val_score,
        max(alone, key=alone.__getitem__),
    )
