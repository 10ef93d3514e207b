"""Model cards, the reliability diagram and the gallery of confident errors, and the card's way
into MLflow (the model's run and its registered version)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from pipeline.config import HAM10000_CLASSES as CLASSES
from pipeline.evaluation.figures import calibration_bins, calibration_figures
from pipeline.evaluation.model_card import SECTIONS, card_text
from pipeline.evaluation.runs import publish
from pipeline.evaluation.scoring import Scored, classification_metrics
from pipeline.evaluation.subgroups import subgroup_results
from pipeline.evaluation.uncertainty import Bootstrap

PARAMS = SimpleNamespace(bootstrap_resamples=200, bootstrap_seed=0, confidence=0.95, ece_bins=10)
BOOTSTRAP = {"resamples": 200, "seed": 0, "confidence": 0.95, "grouped_by": "lesion"}


def _test_set(n=300, seed=0):
    """Images of two per lesion; the model fails most images of the face."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, len(CLASSES), n // 2), 2)
    site = np.repeat(rng.choice(["back", "face", "trunk", "ear"], n // 2, p=[0.4, 0.3, 0.25, 0.05]), 2)
    right = np.where(site == "face", rng.random(n) < 0.1, rng.random(n) < 0.9)
    predicted = np.where(right, labels, (labels + 1) % len(CLASSES))
    probabilities = np.full((n, len(CLASSES)), 0.03)
    probabilities[np.arange(n), predicted] = 0.82
    test = pd.DataFrame(
        {
            "image_id": [f"IMG_{i}" for i in range(n)],
            "lesion_id": [f"L{i // 2}" for i in range(n)],
            "dx": np.asarray(CLASSES)[labels],
        }
    )
    metadata = pd.DataFrame(
        {
            "localization": site,
            "sex": np.repeat(rng.choice(["male", "female"], n // 2), 2),
            "age": np.repeat(rng.choice(["25", "45", "65", "85", ""], n // 2), 2),
            "dx_type": np.repeat(rng.choice(["histo", "follow_up"], n // 2), 2),
        }
    )
    return labels, probabilities, test, metadata


def _card_inputs():
    labels, probabilities, test, metadata = _test_set()
    metrics = classification_metrics(labels, probabilities, CLASSES, 10)
    metrics.update(
        Bootstrap.of(labels, test["lesion_id"].to_numpy(), 200, 0, 0.95, CLASSES.index("mel"), 10).intervals(
            probabilities, CLASSES
        )
    )
    results, skipped = subgroup_results(
        {"cnn_focal": probabilities}, labels, test["lesion_id"].to_numpy(), metadata, CLASSES, PARAMS
    )
    index = pd.concat([test, metadata], axis=1)
    return metrics, results["cnn_focal"], skipped, index, test, labels, probabilities


def test_a_card_has_every_section_the_subgroup_table_and_the_flagged_subgroup():
    metrics, subgroups, skipped, index, test, *_ = _card_inputs()
    assert subgroups["localization"]["face"]["below_overall"]
    card = card_text(
        "cnn_focal",
        metrics,
        subgroups,
        skipped,
        index,
        test,
        "ham10000",
        BOOTSTRAP,
        {"registered_model": "ham10000-cnn_focal", "version": "3", "run_id": "abc"},
        {"skipped": "evaluate.external_dir is not set"},
        10,
        "../../plots/cnn_focal",
    )
    headings = [line[3:] for line in card.splitlines() if line.startswith("## ")]
    assert headings == list(SECTIONS)
    flagged_section = card.split("## Flagged subgroups")[1].split("## ")[0]
    assert "localization = face" in flagged_section and "accuracy" in flagged_section
    assert "| face |" in card and "| other |" in card and "| unknown |" in card  # site table, pooled ear, age unknown
    assert "not a diagnostic device" in card and "Rosendahl" in card and "ViDIR" in card
    assert "![reliability diagram](../../plots/cnn_focal/reliability.png)" in card
    assert "ham10000-cnn_focal` version 3" in card and "Not evaluated: evaluate.external_dir is not set" in card
    assert "one image moves its recall by" in card and "means nothing medically" not in card


def test_a_card_says_which_subgroups_the_external_set_lacks():
    metrics, subgroups, skipped, index, test, labels, probabilities = _card_inputs()
    external, external_skipped = subgroup_results(
        {"m": probabilities}, labels, None, pd.DataFrame({"age": ["50"] * len(labels)}), CLASSES, PARAMS
    )
    card = card_text(
        "cnn_focal",
        metrics,
        subgroups,
        skipped,
        index,
        test,
        "demo",
        BOOTSTRAP,
        {},
        {"metrics": metrics, "subgroups": external["m"], "skipped": external_skipped, "source": "/isic"},
        10,
        "p",
    )
    section = card.split("## External test set")[1].split("## Caveats")[0]
    assert "`/isic`" in section and "**Age band (years)**" in section
    for grouping in ("sex", "localization", "dx_type"):
        assert f"subgroups not reported by {grouping}: no '{grouping}' column in the metadata" in section
    assert "means nothing medically" in card


def test_the_reliability_diagram_and_the_confident_errors_are_written_as_pngs(tmp_path):
    labels, probabilities, test, _ = _test_set(n=60)
    images = np.random.default_rng(0).integers(0, 255, (60, 16, 16, 3), dtype=np.uint8)
    paths = calibration_figures(
        Scored("cnn_focal", labels, probabilities),
        images,
        CLASSES,
        tmp_path / "cnn_focal",
        10,
        test["image_id"].to_numpy(),
    )
    assert [path.name for path in paths] == ["reliability.png", "confident_errors.png"]
    for path in paths:
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a model without errors still gets its (empty) gallery
    perfect = np.eye(len(CLASSES))[labels]
    paths = calibration_figures(Scored("perfect", labels, perfect), images, CLASSES, tmp_path / "perfect", 10)
    assert all(path.stat().st_size > 0 for path in paths)


def test_the_reliability_bins_are_those_of_the_ece():
    from pipeline.metrics import expected_calibration_error

    labels, probabilities, *_ = _test_set(n=200, seed=3)
    probabilities = probabilities + np.random.default_rng(1).random(probabilities.shape) * 0.5
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    binned = calibration_bins(labels, probabilities, 10)
    filled = binned["counts"] > 0
    ece = np.sum(
        binned["counts"][filled] / len(labels) * np.abs(binned["confidence"][filled] - binned["accuracy"][filled])
    )
    assert binned["counts"].sum() == len(labels)
    assert np.isclose(ece, expected_calibration_error(labels, probabilities, 10))


def test_publish_logs_subgroups_and_attaches_the_card_to_the_registered_version(tmp_path, mlflow_store):
    import mlflow

    from pipeline.io import read_json, write_json

    metrics, subgroups, skipped, index, test, *_ = _card_inputs()
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    )
    with mlflow.start_run() as run:
        (tmp_path / "weights.txt").write_text("x")
        mlflow.log_artifact(str(tmp_path / "weights.txt"), "model")
    client = mlflow.MlflowClient()
    client.create_registered_model("ham10000-cnn_focal")
    version = client.create_model_version("ham10000-cnn_focal", f"runs:/{run.info.run_id}/model", run.info.run_id)
    model_dir = tmp_path / "models" / "cnn_focal"
    write_json(
        model_dir / "mlflow_run.json",
        {"run_id": run.info.run_id, "registered_model": "ham10000-cnn_focal", "version": version.version},
    )
    groups = {
        "bootstrap": BOOTSTRAP,
        "test": {"cnn_focal": subgroups},
        "test_skipped": skipped,
        "external_skipped": "evaluate.external_dir is not set",
    }
    subgroups_file = tmp_path / "metrics" / "subgroups.json"
    write_json(subgroups_file, groups)
    cards = publish(
        tmp_path / "reports" / "model_cards",
        subgroups_file,
        groups,
        {"cnn_focal": metrics},
        {},
        {"cnn_focal": model_dir},
        {"cnn_focal": run.info.run_id},
        index,
        test,
        "ham10000",
        10,
        tmp_path / "plots",
    )
    assert [card.name for card in cards] == ["cnn_focal.md"] and read_json(subgroups_file) == groups
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["test_sub_localization_face_accuracy"] == subgroups["localization"]["face"]["accuracy"]
    assert logged["test_sub_localization_face_below_overall"] == 1.0
    artifacts = {
        item.path for folder in ("model_card", "evaluation") for item in client.list_artifacts(run.info.run_id, folder)
    }
    assert {"model_card/cnn_focal.md", "evaluation/subgroups.json"} <= artifacts
    registered = client.get_model_version("ham10000-cnn_focal", version.version)
    assert registered.tags["model_card"] == f"runs:/{run.info.run_id}/model_card/cnn_focal.md"
    assert "localization=face" in registered.description and "not a diagnostic device" in registered.description
