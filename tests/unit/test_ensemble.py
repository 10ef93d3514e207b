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


def test_the_ensemble_names_the_best_single_model_on_validation_not_on_test():
    from pipeline.evaluation.ensemble import ensemble_of
    from pipeline.evaluation.scoring import Scored

    labels = np.array([0, 0, 1, 1])
    right, wrong = np.eye(2)[labels] * 0.8 + 0.1, np.eye(2)[1 - labels] * 0.8 + 0.1
    val = [Scored("a", labels, wrong), Scored("b", labels, right)]
    test = [Scored("a", labels, right), Scored("b", labels, wrong)]  # the other way round on test
    ensemble = ensemble_of(test, val, 0.5, ["a", "b", "smoke"])
    assert ensemble.best_single == "b"
    assert ensemble.weights == {"a": 0.0, "b": 1.0, "smoke": 0.0}


def test_the_report_says_how_the_ensemble_compares_with_the_best_single_model():
    from pipeline.evaluation.report import comparison_report

    row = {"balanced_accuracy": 0.7, "accuracy": 0.8, "macro_f1": 0.6, "melanoma_recall": 0.5, "roc_auc_macro": 0.9}
    row |= {"ece": 0.05, "recall": {"x": 0.5}, "support": {"x": 4}}
    metrics = {"solo": dict(row), "ensemble": {**row, "weights": {"solo": 1.0}, "val_balanced_accuracy": 0.8}}
    metrics["ensemble"]["best_single_on_val"] = "solo"
    item = {"difference": -0.02, "ci": [-0.05, 0.01], "distinguished": False}
    paired = {"solo vs ensemble": {"balanced_accuracy": item, "melanoma_recall": item, "accuracy_mcnemar": {}}}
    paired["solo vs ensemble"]["accuracy_mcnemar"] = {"p_value": 1.0, "only_first_right": 0, "only_second_right": 0}
    report = comparison_report(metrics, ("x",), "T", paired)
    # stored as solo - ensemble: reported as ensemble - solo, the interval flipped with it
    assert (
        "Against the best single model on validation, `solo`: balanced accuracy +0.020 [-0.010, +0.050] (not told apart)."
        in report
    )
