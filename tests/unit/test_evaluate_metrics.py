"""Evaluation metrics on hand-made predictions, and the comparison report."""

import numpy as np
import pytest

from pipeline.config import HAM10000_CLASSES
from pipeline.evaluate import classification_metrics, comparison_report, expected_calibration_error


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


def test_report_names_the_winner_per_metric_and_class():
    classes = HAM10000_CLASSES
    labels = np.repeat(np.arange(7), 3)
    perfect = classification_metrics(labels, np.eye(7)[labels], classes, 10)
    always_nv = classification_metrics(labels, np.eye(7)[np.full(21, 5)], classes, 10)
    report = comparison_report({"good": perfect, "lazy": always_nv}, classes, "Title")
    assert "| balanced_accuracy | 1.0000 | 0.1429 | good |" in report
    assert "| nv | 3 |" in report and "| tie |" in report  # both have nv recall 1.0
    assert "mel (melanoma)" in report
