"""The evaluate stage on tiny trained models: metrics file, plots, report and MLflow logging."""

import pytest

from pipeline.config import EvaluateParams
from pipeline.evaluate import run_evaluation
from pipeline.io import read_json
from pipeline.train import RUN_FILE, train_cnn_focal
from tests.model.conftest import make_paths, tiny_cnn

pytestmark = pytest.mark.slow


def test_evaluate_writes_metrics_plots_report_and_logs_to_the_training_runs(tiny_artifacts, mlflow_store, tmp_path):
    import mlflow

    base, root = tiny_artifacts
    first, second = make_paths(root, "eval_a"), make_paths(root, "eval_b")
    train_cnn_focal(base, tiny_cnn(epochs=2), first)
    train_cnn_focal(base, tiny_cnn(epochs=2, input_size=24), second)

    metrics_file, plots, report = tmp_path / "metrics" / "evaluate.json", tmp_path / "plots", tmp_path / "comparison.md"
    results = run_evaluation(
        {"cnn_focal": first.out_dir, "effnetb7": second.out_dir}, root / "ingested", root / "split", base.classes,
        base.experiment_name, EvaluateParams(ece_bins=10, tta=True), metrics_file, plots, report,
    )
    written = read_json(metrics_file)
    assert set(written) == {"cnn_focal", "effnetb7"} and written == results
    for name in written:
        assert {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece"} <= set(written[name])
        assert set(written[name]["recall"]) == set(base.classes)
        for figure in ("confusion_counts.png", "confusion_normalized.png", "roc.png", "predictions.csv", "roc.csv"):
            assert (plots / name / figure).stat().st_size > 0
    assert "cnn_focal" in report.read_text() and "effnetb7" in report.read_text()

    client = mlflow.MlflowClient()
    run_id = read_json(first.out_dir / RUN_FILE)["run_id"]
    logged = client.get_run(run_id).data.metrics
    assert logged["test_balanced_accuracy"] == pytest.approx(written["cnn_focal"]["balanced_accuracy"])
    assert "test_recall_mel" in logged
    artifacts = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/roc.png" in artifacts and "evaluation/comparison.md" in artifacts
