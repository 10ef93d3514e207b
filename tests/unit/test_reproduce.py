"""The reproduction check: within tolerance passes, a drift fails with a readable table."""

import json

import pytest

from pipeline import reproduce
from pipeline.errors import PipelineError

PUBLISHED = {
    "cnn_focal": {"accuracy": 0.80, "balanced_accuracy": 0.70, "images": 1431, "recall": {"mel": 0.60, "nv": 0.90}},
    "effnetb7": {"accuracy": 0.67, "balanced_accuracy": 0.14, "images": 1431, "recall": {"mel": 0.0, "nv": 1.0}},
}
TOLERANCES = {"accuracy": 0.03, "balanced_accuracy": 0.03, "recall": 0.1}


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
    assert {"balanced_accuracy", "accuracy", "macro_f1", "recall"} <= set(tolerances)
