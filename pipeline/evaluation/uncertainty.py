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

from pipeline.metrics import weighted_metrics

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
