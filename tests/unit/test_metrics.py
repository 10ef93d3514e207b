"""Every metric is defined once (pipeline.metrics); scikit-learn is the oracle on unweighted sets."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pipeline.metrics import point_metrics

MEL = 4


def _case(seed, images=60, classes=7, absent=()):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, images)
    for gone in absent:
        labels[labels == gone] = (gone + 1) % classes
    logits = rng.normal(0, 1, (images, classes)) + 2.0 * np.eye(classes)[labels] * rng.uniform(0, 1, (images, 1))
    logits[rng.integers(0, images, 5)] = 0.0  # exact ties in the scores
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("absent", [(), (3,), (3, 6)])
def test_the_decision_metrics_equal_scikit_learns_to_the_last_bit(seed, absent):
    # Model selection compares these between epochs: they must be exactly scikit-learn's numbers.
    labels, probabilities = _case(seed, absent=absent)
    predicted = probabilities.argmax(axis=1)
    point = point_metrics(labels, probabilities, MEL, ranking=False)
    assert point["accuracy"] == accuracy_score(labels, predicted)
    assert point["balanced_accuracy"] == balanced_accuracy_score(labels, predicted)
    assert point["macro_f1"] == f1_score(labels, predicted, labels=np.arange(7), average="macro", zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(7), zero_division=0
    )
    np.testing.assert_array_equal(np.nan_to_num(point["recall"], nan=0.0), recall)
    np.testing.assert_array_equal(point["precision"], precision)
    np.testing.assert_array_equal(point["f1"], f1)
    np.testing.assert_array_equal(point["support"], support)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("absent", [(), (3,)])
def test_the_ranking_metrics_equal_scikit_learns(seed, absent):
    labels, probabilities = _case(seed, absent=absent)
    point = point_metrics(labels, probabilities, MEL)
    present = np.unique(labels)
    expected = np.mean([roc_auc_score(labels == c, probabilities[:, c]) for c in present])
    assert point["roc_auc_macro"] == pytest.approx(expected, abs=1e-12)
    if not absent:
        assert point["roc_auc_macro"] == pytest.approx(
            roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"), abs=1e-12
        )
