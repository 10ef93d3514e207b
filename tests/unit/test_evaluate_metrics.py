"""Evaluation metrics on hand-made predictions, and the comparison report."""

import numpy as np
import pytest

from pipeline.config import HAM10000_CLASSES
from pipeline.evaluation.scoring import classification_metrics
from pipeline.metrics import expected_calibration_error


def test_ece_on_a_hand_computed_example():
    labels = np.array([0, 0, 1, 1])
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right) with 2 bins [0,.5),[.5,1]
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.4, 0.6]])
    # one bin holds all four: mean confidence 0.75, accuracy 0.75 -> 0
    assert expected_calibration_error(labels, probabilities, bins=2) == pytest.approx(0.0)
    # with 10 bins: bin 0.9 has acc 0.5 (gap 0.4, weight 0.5); bin 0.6 has acc 1 (gap 0.4, weight 0.5)
    assert expected_calibration_error(labels, probabilities, bins=10) == pytest.approx(0.4)


def test_metrics_of_a_known_confusion():
    classes = HAM10000_CLASSES
    labels = np.array([0, 1, 2, 3, 4, 4, 5, 5, 5, 6])
    predicted = np.array([0, 1, 2, 3, 4, 5, 5, 5, 5, 6])  # one melanoma called a nevus
    probabilities = np.eye(7)[predicted] * 0.9 + 0.1 / 7
    metrics = classification_metrics(labels, probabilities, classes, ece_bins=10)
    assert metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["recall"]["mel"] == metrics["melanoma_recall"] == pytest.approx(0.5)
    assert metrics["balanced_accuracy"] == pytest.approx((6 + 0.5) / 7)
    assert metrics["precision"]["nv"] == pytest.approx(0.75)
    assert metrics["support"]["nv"] == 3
    assert set(metrics) >= {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece", "recall"}


def test_report_gives_intervals_and_names_a_winner_only_when_the_paired_interval_excludes_zero():
    from pipeline.evaluation.report import comparison_report
    from pipeline.evaluation.uncertainty import Bootstrap, comparisons

    classes = HAM10000_CLASSES
    labels = np.repeat(np.arange(7), 12)
    perfect = np.eye(7)[labels]
    always_nv = np.eye(7)[np.full(len(labels), 5)]
    nearly = perfect.copy()
    nearly[0] = np.eye(7)[1]  # one image wrong
    boot = Bootstrap.of(labels, np.arange(len(labels)) // 2, 1000, 0, 0.95, classes.index("mel"))
    probabilities = {"good": perfect, "lazy": always_nv, "nearly": nearly, "smoke": always_nv}
    metrics = {
        name: {**classification_metrics(labels, p, classes, 10), **boot.intervals(p, classes)}
        for name, p in probabilities.items()
    }
    metrics["smoke"]["smoke_run"] = True
    paired = comparisons(boot, {name: p for name, p in probabilities.items() if name != "smoke"})
    report = comparison_report(
        metrics, classes, "Title", paired, {"confidence": 0.95, "resamples": 1000, "grouped_by": "lesion", "seed": 0}
    )
    assert "| balanced_accuracy | 1.000 [1.000, 1.000] | 0.143 [0.143, 0.143] | 0.988 [" in report
    assert "| good vs lazy | +0.857 [" in report and "| **good** |" in report
    assert "| good vs nearly | +0.012 [+0.000, +0.036] | not told apart |" in report
    assert "## Smoke runs: prove the stage runs; not a result" in report
    assert "smoke vs" not in report and "vs smoke" not in report  # never compared
    assert "mel (melanoma)" in report and "| best |" not in report
