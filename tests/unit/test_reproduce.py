"""The reproduction check: within tolerance passes, a drift fails with a readable table."""

import json

import pytest

from pipeline import reproduce
from pipeline.errors import PipelineError

PUBLISHED = {
    "cnn_focal": {"accuracy": 0.80, "balanced_accuracy": 0.70, "images": 1431, "recall": {"mel": 0.60, "nv": 0.90}},
    "effnetb7": {"accuracy": 0.67, "balanced_accuracy": 0.14, "images": 1431, "recall": {"mel": 0.0, "nv": 1.0}},
}
TOLERANCES = reproduce.Tolerances({"accuracy": 0.03, "balanced_accuracy": 0.03, "recall": 0.1})


def test_identical_and_small_drifts_pass():
    fresh = json.loads(json.dumps(PUBLISHED))
    fresh["cnn_focal"]["balanced_accuracy"] = 0.72
    rows = reproduce.compare(PUBLISHED, fresh, TOLERANCES)
    assert len(rows) == 2 * 4  # images is not toleranced, so not compared
    assert all(row.ok for row in rows)


def test_a_drift_is_flagged_in_the_table():
    fresh = json.loads(json.dumps(PUBLISHED))
    fresh["cnn_focal"]["recall"]["mel"] = 0.35
    rows = reproduce.compare(PUBLISHED, fresh, TOLERANCES)
    [drifted] = [row for row in rows if not row.ok]
    assert (drifted.model, drifted.metric) == ("cnn_focal", "recall.mel")
    table = reproduce.format_table(rows)
    assert "cnn_focal  recall.mel" in table and "-0.2500" in table and "DRIFT" in table


def test_missing_model_or_metric_is_an_error():
    with pytest.raises(PipelineError, match="no model 'effnetb7'"):
        reproduce.compare(PUBLISHED, {"cnn_focal": PUBLISHED["cnn_focal"]}, TOLERANCES)
    broken = {"cnn_focal": {"accuracy": 0.8}, "effnetb7": PUBLISHED["effnetb7"]}
    with pytest.raises(PipelineError, match="have no 'balanced_accuracy'"):
        reproduce.compare(PUBLISHED, broken, TOLERANCES)


def test_reference_name_and_repository_tolerances(repo_root):
    assert reproduce.reference_name("data/demo") == "demo"
    assert reproduce.reference_name("../shared/ham10000/") == "ham10000"
    from pipeline.io import pipeline_path

    published = repo_root / pipeline_path("published", repo_root / "dvc.yaml")
    tolerances = reproduce.load_tolerances(published / reproduce.TOLERANCE_FILE_NAME)
    assert {"balanced_accuracy", "accuracy", "macro_f1", "recall"} <= set(tolerances.metrics)
    assert tolerances.standard_errors > 0


def test_a_recall_may_move_by_its_standard_error_on_a_small_class():
    published = {"cnn_focal": {"melanoma_recall": 0.5, "recall": {"mel": 0.5, "vasc": 0.65, "nv": 0.9},
                               "support": {"mel": 160, "vasc": 20, "nv": 1000}}}
    tolerances = reproduce.Tolerances({"melanoma_recall": 0.06, "recall": 0.12}, standard_errors=3)
    allowed = {row.metric: row.tolerance for row in reproduce.compare(published, published, tolerances)}
    assert allowed["melanoma_recall"] == pytest.approx(3 * (0.25 / 160) ** 0.5)  # 0.119: the mel class's SE
    assert allowed["recall.vasc"] == pytest.approx(3 * (0.65 * 0.35 / 20) ** 0.5)  # 0.32: 20 images
    assert allowed["recall.nv"] == 0.12  # 1,000 images: the floor
    fresh = json.loads(json.dumps(published))
    fresh["cnn_focal"]["recall"]["vasc"] = 0.90  # 5 of 20 images flipped: within 3 SE
    fresh["cnn_focal"]["recall"]["nv"] = 0.75  # 150 of 1,000: not
    drifted = [row.metric for row in reproduce.compare(published, fresh, tolerances) if not row.ok]
    assert drifted == ["recall.nv"]
    without = reproduce.Tolerances({"melanoma_recall": 0.06, "recall": 0.12})
    assert {row.metric: row.tolerance for row in reproduce.compare(published, published, without)}["recall.vasc"] == 0.12


def test_a_model_can_override_a_metric_tolerance():
    tolerances = reproduce.Tolerances({"accuracy": 0.03, "balanced_accuracy": 0.03, "recall": 0.1},
                                      models={"effnetb7": {"accuracy": 0.2}})
    allowed = {(row.model, row.metric): row.tolerance for row in reproduce.compare(PUBLISHED, PUBLISHED, tolerances)}
    assert allowed[("effnetb7", "accuracy")] == 0.2 and allowed[("cnn_focal", "accuracy")] == 0.03
    assert allowed[("effnetb7", "balanced_accuracy")] == 0.03


@pytest.mark.parametrize("text, message", [
    ("accuracy: 0.03\n", "expected the keys metrics, standard_errors, models"),
    ("metrics: [1\n", "not valid YAML"),
    ("metrics: {accuracy: high}\n", "metrics must map metric names to numbers"),
    ("metrics: {accuracy: 0.03}\nstandard_errors: -1\n", "standard_errors must be a number >= 0"),
    ("metrics: {accuracy: 0.03}\nmodels: {ensemble: {ece: [1]}}\n", "models.ensemble must map metric names to numbers"),
])
def test_a_malformed_tolerance_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "tolerance.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message):
        reproduce.load_tolerances(path)
