"""How sure a test-set number is: bootstrap intervals, paired differences, McNemar's test.

A test split of 1,431 images holds 17 ``df`` and 20 ``vasc`` images: one image moves a class
recall by 0.05 and balanced accuracy by 0.008. So every number ``evaluate`` reports carries a
95% interval, and a comparison names a winner only when the interval of the *difference*
excludes 0.

The bootstrap resamples whole **lesions** (all images of one lesion together, as the split
keeps them): images of one lesion are not independent, and resampling them one by one would
give intervals that are too narrow. A resample is a vector of counts, how often each lesion
was drawn; every metric is then a weighted count, so all resamples are computed at once as
matrix products (``weights``: resamples x images). The same weights serve every model, which
makes the differences *paired*: the noise of which images happened to be drawn cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The metrics that get an interval (names as in ``classification_metrics``).
INTERVAL_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "melanoma_recall", "roc_auc_macro")
#: The metrics that get only a bootstrap standard error: ECE is biased upwards on a resample
#: (fewer distinct images per bin), so its percentile interval can miss the estimate itself.
SE_METRICS = ("ece",)
#: The metrics whose paired difference decides a winner.
PAIRED_METRICS = ("balanced_accuracy", "melanoma_recall")


def resample_weights(groups: np.ndarray | None, size: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` x ``size`` image weights of a bootstrap over ``groups`` (one label per image,
    e.g. its ``lesion_id``; None: every image its own group). Each resample draws as many groups
    as there are, with replacement; an image's weight is how often its group was drawn."""
    if groups is None:
        codes, count = np.arange(size), size
    else:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        count = int(codes.max()) + 1 if size else 0
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(count, np.full(count, 1.0 / count), size=resamples).astype(np.float64)
    return drawn[:, codes]


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

    Definitions match :func:`pipeline.evaluation.scoring.classification_metrics` on the unweighted set
    (weights all 1): balanced accuracy is the mean recall over the classes present, macro-F1
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


def interval(samples: np.ndarray, confidence: float) -> list[float]:
    """The percentile interval of bootstrap ``samples`` (NaNs, resamples where the metric is
    undefined, are left out)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


@dataclass(frozen=True)
class Bootstrap:
    """The resample weights of one labelled image set, shared by every model scored on it."""

    labels: np.ndarray
    weights: np.ndarray
    confidence: float
    melanoma: int
    grouped_by: str
    ece_bins: int = 15

    @classmethod
    def of(
        cls,
        labels: np.ndarray,
        groups: np.ndarray | None,
        resamples: int,
        seed: int,
        confidence: float,
        melanoma: int,
        ece_bins: int = 15,
    ) -> Bootstrap:
        weights = resample_weights(groups, len(labels), resamples, seed)
        return cls(
            np.asarray(labels), weights, confidence, melanoma, "lesion" if groups is not None else "image", ece_bins
        )

    def samples(self, probabilities: np.ndarray, ranking: bool = True) -> dict[str, np.ndarray]:
        return weighted_metrics(self.labels, probabilities, self.weights, self.melanoma, self.ece_bins, ranking)

    def intervals(self, probabilities: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
        """``{"balanced_accuracy_ci": [low, high], ..., "recall_ci": {dx: [low, high]}, "ece_se": s}``."""
        samples = self.samples(probabilities)
        out: dict[str, Any] = {f"{key}_ci": interval(samples[key], self.confidence) for key in INTERVAL_METRICS}
        out.update({f"{key}_se": float(np.nanstd(samples[key], ddof=1)) for key in SE_METRICS})
        out["recall_ci"] = {
            dx: interval(samples["recall"][:, index], self.confidence) for index, dx in enumerate(classes)
        }
        return out

    def paired(self, first: np.ndarray, second: np.ndarray) -> dict[str, dict[str, Any]]:
        """For each of ``PAIRED_METRICS``: the observed difference (first - second), its
        interval over the same resamples, and whether the interval excludes 0."""
        ones = np.ones((1, len(self.labels)))
        a, b = self.samples(first, ranking=False), self.samples(second, ranking=False)
        point_a = weighted_metrics(self.labels, first, ones, self.melanoma, ranking=False)
        point_b = weighted_metrics(self.labels, second, ones, self.melanoma, ranking=False)
        result = {}
        for key in PAIRED_METRICS:
            low, high = interval(a[key] - b[key], self.confidence)
            result[key] = {
                "difference": float(point_a[key][0] - point_b[key][0]),
                "ci": [low, high],
                "distinguished": bool(low > 0 or high < 0),
            }
        return result


def mcnemar_exact(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """McNemar's exact test of equal accuracy: of the images exactly one model gets right, is
    each model equally likely to be that one? (A two-sided binomial test on the discordant
    pairs; it treats images as independent, which lesions with several images are not.)"""
    from scipy.stats import binomtest

    right_a = first.argmax(axis=1) == labels
    right_b = second.argmax(axis=1) == labels
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p_value = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_first_right": only_a, "only_second_right": only_b, "p_value": p_value}


def comparisons(bootstrap: Bootstrap, probabilities: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Every pair of the named models (``"a vs b"``): paired intervals and McNemar's test."""
    names = list(probabilities)
    out = {}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            out[f"{first} vs {second}"] = {
                **bootstrap.paired(probabilities[first], probabilities[second]),
                "accuracy_mcnemar": mcnemar_exact(bootstrap.labels, probabilities[first], probabilities[second]),
            }
    return out
