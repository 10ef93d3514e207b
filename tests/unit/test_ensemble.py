"""The ensemble: its weight grid, its combination, and that validation alone chooses it."""

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation.ensemble import choose_weights, combine, simplex_grid


def test_the_grid_covers_the_simplex():
    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66  # C(10 + 2, 2)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert (grid >= 0).all() and {tuple(row) for row in simplex_grid(2, 0.5)} == {(0, 1), (0.5, 0.5), (1, 0)}


def test_a_step_that_does_not_divide_one_is_refused():
    with pytest.raises(PipelineError, match="ensemble_grid_step"):
        simplex_grid(2, 0.3)


def test_combine_is_the_weighted_mean():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(combine([a, b], np.array([0.25, 0.75])), [[0.25, 0.75]])


def test_the_better_model_on_validation_gets_the_weight():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    good = np.eye(3)[labels] * 0.6 + 0.4 / 3  # always right
    noise = rng.dirichlet(np.ones(3), 300)  # chance level
    weights, score = choose_weights([noise, good], labels, 0.1)
    assert score == 1.0 and weights[1] > weights[0]


def test_complementary_models_are_mixed():
    """Each model is right on half the classes: only a mix gets every class right."""
    labels = np.array([0, 0, 1, 1])
    first = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])  # always says 0
    second = np.array([[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]])  # always says 1
    weights, score = choose_weights([first, second], labels, 0.1)
    assert score == 1.0 and 0 < weights[0] < 1


def test_an_uninformative_model_gets_no_weight_when_it_changes_no_decision():
    """Adding flat probabilities to a confident model changes no argmax, only the log-loss."""
    labels = np.array([0, 1, 2, 0, 1, 2])
    good = np.eye(3)[labels] * 0.7 + 0.1
    flat = np.full((6, 3), 1 / 3)
    weights, score = choose_weights([good, flat], labels, 0.1)
    assert score == 1.0 and weights.tolist() == [1.0, 0.0]
