"""Bootstrap intervals, paired differences and McNemar's test (pipeline.evaluation.uncertainty)."""

import numpy as np
import pytest

from pipeline.evaluation.scoring import classification_metrics
from pipeline.evaluation.uncertainty import (
    Bootstrap,
    comparisons,
    interval,
    mcnemar_exact,
    resample_weights,
)
from pipeline.metrics import weighted_metrics

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
MEL = CLASSES.index("mel")


def random_predictions(rng, n=400, classes=7, skill=1.5):
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += skill
    logits = np.round(logits, 1)  # ties in the scores, as a model's rounded outputs have
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def test_weights_of_one_reproduce_the_point_metrics():
    labels, probabilities = random_predictions(np.random.default_rng(0))
    expected = classification_metrics(labels, probabilities, CLASSES, 15)
    got = weighted_metrics(labels, probabilities, np.ones((1, len(labels))), MEL)
    for key in ("balanced_accuracy", "accuracy", "macro_f1", "melanoma_recall", "roc_auc_macro", "ece"):
        assert got[key][0] == pytest.approx(expected[key], abs=1e-12), key
    assert got["recall"][0] == pytest.approx([expected["recall"][dx] for dx in CLASSES])


def test_integer_weights_equal_repeating_the_images():
    rng = np.random.default_rng(1)
    labels, probabilities = random_predictions(rng, n=120)
    counts = rng.integers(0, 4, len(labels))
    repeated = np.repeat(np.arange(len(labels)), counts)
    expected = classification_metrics(labels[repeated], probabilities[repeated], CLASSES, 15)
    got = weighted_metrics(labels, probabilities, counts[None, :].astype(float), MEL)
    for key in ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc_macro", "ece"):
        assert got[key][0] == pytest.approx(expected[key], abs=1e-9), key


def test_lesion_resampling_keeps_lesions_whole():
    groups = np.array(["a", "a", "a", "b", "c", "c", "d", "e", "e", "e"])
    weights = resample_weights(groups, len(groups), 500, seed=3)
    for lesion in set(groups):
        members = weights[:, groups == lesion]
        assert (members == members[:, :1]).all(), f"lesion {lesion} split within a resample"
    # each resample draws as many lesions as there are (5), counted once per lesion
    first_of_each = [list(groups).index(g) for g in sorted(set(groups))]
    assert (weights[:, first_of_each].sum(axis=1) == 5).all()
    assert (weights.sum(axis=1) != len(groups)).any(), "lesions of 3 images must change the image count"


def test_intervals_hold_the_estimate_and_ece_gets_a_standard_error():
    labels, probabilities = random_predictions(np.random.default_rng(6))
    point = classification_metrics(labels, probabilities, CLASSES, 15)
    out = Bootstrap.of(labels, None, 500, seed=0, confidence=0.95, melanoma=MEL).intervals(probabilities, CLASSES)
    for key in ("balanced_accuracy", "accuracy", "macro_f1", "melanoma_recall", "roc_auc_macro"):
        low, high = out[f"{key}_ci"]
        assert low < point[key] < high, key
    assert "ece_ci" not in out and 0 < out["ece_se"] < 0.05


def test_resampling_is_seeded():
    assert (resample_weights(None, 50, 20, 7) == resample_weights(None, 50, 20, 7)).all()
    assert (resample_weights(None, 50, 20, 7) != resample_weights(None, 50, 20, 8)).any()


def test_accuracy_interval_covers_the_true_accuracy_in_about_95_percent_of_test_sets():
    """A classifier of true accuracy 0.8 on 200 simulated test sets of 300 images."""
    rng = np.random.default_rng(2024)
    covered = 0
    for draw in range(200):
        labels = rng.integers(0, 7, 300)
        right = rng.random(300) < 0.8
        predicted = np.where(right, labels, (labels + rng.integers(1, 7, 300)) % 7)
        probabilities = np.eye(7)[predicted] * 0.9 + 0.1 / 7
        boot = Bootstrap.of(labels, None, 1000, seed=draw, confidence=0.95, melanoma=MEL)
        low, high = boot.intervals(probabilities, CLASSES)["accuracy_ci"]
        covered += low <= 0.8 <= high
    assert 180 <= covered <= 198, f"the 95% interval covered 0.8 in {covered} of 200 test sets"


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    labels, probabilities = random_predictions(np.random.default_rng(4))
    boot = Bootstrap.of(labels, np.arange(len(labels)) // 3, 1000, seed=0, confidence=0.95, melanoma=MEL)
    paired = boot.paired(probabilities, probabilities)
    for key in ("balanced_accuracy", "melanoma_recall"):
        assert paired[key]["difference"] == 0.0
        assert paired[key]["ci"] == [0.0, 0.0]
        assert paired[key]["distinguished"] is False


def test_paired_difference_tells_a_clearly_better_model_and_not_a_near_twin():
    rng = np.random.default_rng(5)
    labels, weak = random_predictions(rng, skill=0.5)
    strong = weak.copy()
    strong[np.arange(len(labels)), labels] += 1.0  # much more often right
    twin = weak.copy()
    twin[0] = np.roll(twin[0], 1)  # differs on one image
    boot = Bootstrap.of(labels, None, 1000, seed=0, confidence=0.95, melanoma=MEL)
    better = boot.paired(strong, weak)["balanced_accuracy"]
    assert better["distinguished"] and better["ci"][0] > 0
    assert not boot.paired(twin, weak)["balanced_accuracy"]["distinguished"]
    table = comparisons(boot, {"strong": strong, "weak": weak, "twin": twin})
    assert set(table) == {"strong vs weak", "strong vs twin", "weak vs twin"}
    assert table["strong vs weak"]["accuracy_mcnemar"]["p_value"] < 0.001


def test_mcnemar_exact_known_answer():
    labels = np.zeros(12, dtype=int)
    first = np.eye(2)[np.zeros(12, dtype=int)]  # always right
    second = np.eye(2)[np.r_[np.ones(10, int), 0, 0]]  # wrong on 10 of them
    result = mcnemar_exact(labels, first, second)
    assert (result["only_first_right"], result["only_second_right"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(labels, first, first)["p_value"] == 1.0


def test_interval_ignores_undefined_resamples():
    assert interval(np.array([np.nan, 0.5, 0.5, 0.5]), 0.95) == [0.5, 0.5]
    assert all(np.isnan(interval(np.array([np.nan]), 0.95)))
