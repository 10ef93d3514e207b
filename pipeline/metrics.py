"""Every metric the pipeline reports, defined once: training's validation scores, ``evaluate``'s
test metrics, the lesion bootstrap's resamples and the subgroup results all call these.

A metric is computed from image weights (``weights``: resamples x images; a point estimate is
one resample of all ones, a bootstrap resample counts how often each image was drawn), so one
vectorised definition serves the number and its interval. The tests compare each against
scikit-learn on the unweighted set.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def point_metrics(
    labels: np.ndarray, probabilities: np.ndarray, melanoma: int, ece_bins: int = 15, ranking: bool = True
) -> dict[str, Any]:
    """The metrics of one labelled set (every image once): floats, and per-class arrays for
    ``recall``, ``precision``, ``f1`` and ``support``."""
    values = weighted_metrics(labels, probabilities, np.ones((1, len(labels))), melanoma, ece_bins, ranking)
    return {key: (value[0] if value.ndim == 2 else float(value[0])) for key, value in values.items()}


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Top-label ECE: the image-share-weighted gap between confidence and accuracy in ``bins``
    equal-width, right-closed confidence bins."""
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    return float(_weighted_ece(probabilities.max(axis=1), correct, np.ones((1, len(labels))), bins)[0])


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def weighted_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    weights: np.ndarray,
    melanoma: int,
    ece_bins: int = 15,
    ranking: bool = True,
) -> dict[str, np.ndarray]:
    """Each metric of ``INTERVAL_METRICS`` and each class's recall, one value per resample.

    Definitions (scikit-learn's on the unweighted set, weights all 1): balanced accuracy is the mean recall over the classes present, macro-F1
    averages all classes (0 where a class is neither present nor predicted), ROC AUC is the
    one-vs-rest mean over the classes present, ECE the top-label calibration error in
    ``ece_bins`` equal-width confidence bins. ``ranking=False`` leaves out ROC AUC and ECE,
    the costly ones, where only the decisions matter (the paired differences)."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    truth = np.eye(classes)[labels]
    guess = np.eye(classes)[predicted]
    correct = (predicted == labels).astype(np.float64)
    support = weights @ truth  # resamples x classes
    hits = weights @ (truth * correct[:, None])  # true positives per class
    called = weights @ guess  # predicted per class
    recall = _safe_divide(hits, support)
    f1_denominator = support + called
    f1 = np.where(f1_denominator > 0, _safe_divide(2 * hits, f1_denominator), 0.0)
    with np.errstate(invalid="ignore"):
        balanced = np.nanmean(np.where(support > 0, recall, np.nan), axis=1)
    out = {
        "balanced_accuracy": balanced,
        "accuracy": _safe_divide(weights @ correct, weights.sum(axis=1)),
        "macro_f1": f1.mean(axis=1),
        "melanoma_recall": recall[:, melanoma],
        "recall": recall,
        "precision": np.where(called > 0, _safe_divide(hits, called), 0.0),  # 0 for a class never predicted
        "f1": f1,
        "support": support,
    }
    if ranking:
        aucs = np.stack([_weighted_auc(labels == c, probabilities[:, c], weights) for c in range(classes)], axis=1)
        with np.errstate(invalid="ignore"):
            out["roc_auc_macro"] = np.nanmean(aucs, axis=1)
        out["ece"] = _weighted_ece(probabilities.max(axis=1), correct, weights, ece_bins)
    return out


def _weighted_ece(confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """Top-label ECE per resample: sum over bins of |sum of confidence - sum of hits| / total."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # right-closed, as evaluate's
    in_bin = np.eye(bins)[which]  # images x bins
    gap = np.abs(weights @ (in_bin * confidence[:, None]) - weights @ (in_bin * correct[:, None]))
    return _safe_divide(gap.sum(axis=1), weights.sum(axis=1))


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per resample (the weighted Mann-Whitney statistic, ties counted
    half); NaN where a resample has no positive or no negative image."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, pos = scores[order], positive[order].astype(np.float64)
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    neg_in_block = np.add.reduceat(w * (1.0 - pos), starts, axis=1)  # resamples x distinct scores
    pos_in_block = np.add.reduceat(w * pos, starts, axis=1)
    neg_below = np.cumsum(neg_in_block, axis=1) - neg_in_block
    wins = (pos_in_block * (neg_below + 0.5 * neg_in_block)).sum(axis=1)
    return _safe_divide(wins, pos_in_block.sum(axis=1) * neg_in_block.sum(axis=1))
