"""Focal loss configuration: alpha from class counts, and gamma 0 = weighted cross-entropy."""

import numpy as np
import pytest

from pipeline.config import HAM10000_CLASSES
from pipeline.errors import PipelineError
from pipeline.training.recipe import build_loss, class_alpha
from tests.model.conftest import tiny_cnn


def test_inverse_frequency_alpha_matches_a_hand_computed_example():
    # 100 images: n / (k * n_c) with k = 3 classes.
    assert class_alpha(np.array([10, 30, 60]), "inverse_frequency") == pytest.approx([100 / 30, 100 / 90, 100 / 180])
    assert class_alpha(np.array([10, 30, 60]), "sqrt_inverse_frequency") == pytest.approx(
        [np.sqrt(100 / 30), np.sqrt(100 / 90), np.sqrt(100 / 180)]
    )
    assert class_alpha(np.array([10, 30, 60]), "none") is None


def test_alpha_refuses_a_class_without_images():
    with pytest.raises(PipelineError, match="a class has no training images"):
        class_alpha(np.array([5, 0, 3]), "inverse_frequency")


def test_focal_loss_with_gamma_zero_equals_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 32)
    one_hot = np.eye(7, dtype=np.float32)[labels]
    logits = rng.normal(size=(32, 7))
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    alpha = class_alpha(np.array([327, 514, 1099, 115, 1113, 6705, 142]), "inverse_frequency")
    loss = build_loss(tiny_cnn(focal_gamma=0.0), alpha)
    expected = np.mean(-np.asarray(alpha)[labels] * np.log(probabilities[np.arange(32), labels]))
    assert float(loss(one_hot, probabilities)) == pytest.approx(expected, rel=1e-5)
    assert len(alpha) == len(HAM10000_CLASSES)


def test_focal_term_down_weights_easy_examples():
    one_hot = np.eye(2, dtype=np.float32)[[0, 0]]
    easy, hard = np.array([[0.95, 0.05]] * 2, np.float32), np.array([[0.4, 0.6]] * 2, np.float32)
    focal, plain = build_loss(tiny_cnn(focal_gamma=2.0), None), build_loss(tiny_cnn(focal_gamma=0.0), None)
    # gamma shrinks the loss of confident correct predictions far more than of wrong ones
    assert float(focal(one_hot, easy)) / float(plain(one_hot, easy)) < 0.01
    assert float(focal(one_hot, hard)) / float(plain(one_hot, hard)) > 0.3
