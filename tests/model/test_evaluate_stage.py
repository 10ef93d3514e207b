"""The evaluate stage on tiny trained models: metrics file, plots, report and MLflow logging."""

import pytest

from pipeline.config import EvaluateParams
from pipeline.evaluation.evaluate import run_evaluation
from pipeline.evaluation.runs import is_smoke_run
from pipeline.io import read_json
from pipeline.tracking.recorder import RUN_FILE
from pipeline.training.train import train_cnn_focal
from tests.model.conftest import make_paths, tiny_cnn

pytestmark = pytest.mark.slow


def test_evaluate_writes_metrics_plots_report_and_logs_to_the_training_runs(tiny_artifacts, mlflow_store, tmp_path):
    import mlflow

    base, root = tiny_artifacts
    first, second, smoke = make_paths(root, "eval_a"), make_paths(root, "eval_b"), make_paths(root, "eval_smoke")
    train_cnn_focal(base, tiny_cnn(epochs=2), first)
    train_cnn_focal(base, tiny_cnn(epochs=2, input_size=24), second)
    train_cnn_focal(base, tiny_cnn(epochs=1, smoke_run=True), smoke)

    metrics_file, plots, report = tmp_path / "metrics" / "evaluate.json", tmp_path / "plots", tmp_path / "comparison.md"
    paired_file = tmp_path / "metrics" / "paired.json"
    # effnetb7 was trained as a smoke run: scored and listed, never compared, no ensemble weight.
    models = {"cnn_focal": first.out_dir, "effnet_lite0": second.out_dir, "effnetb7": smoke.out_dir}
    smoke_runs = frozenset(name for name, folder in models.items() if is_smoke_run(folder))
    assert smoke_runs == {"effnetb7"}

    def evaluate():
        return run_evaluation(
            models,
            root / "ingested",
            root / "split",
            base.classes,
            base.experiment_name,
            EvaluateParams(ece_bins=10, tta=True, bootstrap_resamples=200),
            metrics_file,
            plots,
            report,
            smoke_runs=smoke_runs,
            paired_file=paired_file,
        )

    results = evaluate()
    written = read_json(metrics_file)
    assert set(written) == {"cnn_focal", "effnetb7", "effnet_lite0", "ensemble"} and written == results
    # The ensemble's weights were chosen on the validation split; they sum to 1; the smoke run has none.
    assert written["ensemble"]["weights"]["effnetb7"] == 0.0
    assert sum(written["ensemble"]["weights"].values()) == pytest.approx(1.0)
    assert written["effnetb7"]["smoke_run"] is True and "smoke_run" not in written["cnn_focal"]
    for name in written:
        low, high = written[name]["balanced_accuracy_ci"]
        assert low <= written[name]["balanced_accuracy"] <= high
        assert set(written[name]["recall_ci"]) == set(base.classes)
    paired = read_json(paired_file)
    assert paired["bootstrap"] == {"resamples": 200, "seed": 0, "confidence": 0.95, "grouped_by": "lesion"}
    assert set(paired["test"]) == {"cnn_focal vs effnet_lite0", "cnn_focal vs ensemble", "effnet_lite0 vs ensemble"}
    assert "Smoke runs: prove the stage runs; not a result" in report.read_text()
    assert 0.0 <= written["ensemble"]["val_balanced_accuracy"] <= 1.0
    for name in written:
        assert {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece"} <= set(written[name])
        assert set(written[name]["recall"]) == set(base.classes)
        for figure in ("confusion_counts.png", "confusion_normalized.png", "roc.png", "predictions.csv", "roc.csv"):
            assert (plots / name / figure).stat().st_size > 0
    assert "cnn_focal" in report.read_text() and "effnetb7" in report.read_text()
    assert "weights chosen on the validation split" in report.read_text()

    client = mlflow.MlflowClient()
    run_id = read_json(first.out_dir / RUN_FILE)["run_id"]
    logged = client.get_run(run_id).data.metrics
    assert logged["test_balanced_accuracy"] == pytest.approx(written["cnn_focal"]["balanced_accuracy"])
    assert logged["test_balanced_accuracy_ci_low"] == pytest.approx(written["cnn_focal"]["balanced_accuracy_ci"][0])
    assert "test_recall_mel" in logged and "test_recall_mel_ci_high" in logged
    artifacts = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/roc.png" in artifacts and "evaluation/comparison.md" in artifacts
    ensemble_runs = mlflow.search_runs(experiment_names=[base.experiment_name], filter_string="tags.model = 'ensemble'")
    assert len(ensemble_runs) == 1
    assert ensemble_runs["metrics.test_weight_cnn_focal"][0] == pytest.approx(
        written["ensemble"]["weights"]["cnn_focal"]
    )
    # A second evaluation of the same data and commit logs into the same ensemble run.
    evaluate()
    again = mlflow.search_runs(experiment_names=[base.experiment_name], filter_string="tags.model = 'ensemble'")
    assert list(again["run_id"]) == list(ensemble_runs["run_id"])


def _isic2018_folder(root, ham, rows):
    """A synthetic folder in the ISIC 2018 Task 3 test layout, from the tiny HAM images."""
    import pandas as pd
    from PIL import Image

    folder = root / "isic2018"
    (folder / "ISIC2018_Task3_Test_Input").mkdir(parents=True)
    metadata = pd.read_csv(ham / "HAM10000_metadata.csv").groupby("dx").head(2).iloc[:rows]
    truth = []
    for number, row in enumerate(metadata.itertuples()):
        source = next(ham.glob(f"HAM10000_images_part_*/{row.image_id}.jpg"))
        name = f"ISIC_{number:07d}"
        Image.open(source).resize((120, 90)).save(folder / "ISIC2018_Task3_Test_Input" / f"{name}.jpg")
        truth.append(
            {
                "image": name,
                **{code: float(code.lower() == row.dx) for code in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")},
            }
        )
    pd.DataFrame(truth).to_csv(folder / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    return folder


def test_external_isic2018_test_set_is_scored_separately(tiny_artifacts, mlflow_store, tmp_path):
    base, root = tiny_artifacts
    paths, other = make_paths(root, "eval_external"), make_paths(root, "eval_external_b")
    train_cnn_focal(base, tiny_cnn(epochs=1), paths)
    train_cnn_focal(base, tiny_cnn(epochs=1, input_size=24), other)
    external = _isic2018_folder(tmp_path, root / "ham", rows=14)
    external_file = tmp_path / "external.json"
    run_evaluation(
        {"cnn_focal": paths.out_dir, "effnet_lite0": other.out_dir},
        root / "ingested",
        root / "split",
        base.classes,
        base.experiment_name,
        EvaluateParams(external_dir=str(external), bootstrap_resamples=200),
        tmp_path / "evaluate.json",
        tmp_path / "plots",
        tmp_path / "report.md",
        external_metrics_file=external_file,
        image_size=base.image_size,
        paired_file=tmp_path / "paired.json",
    )
    scored = read_json(external_file)
    assert scored["source"] == str(external)
    assert scored["cnn_focal"]["images"] == 14
    assert sum(scored["cnn_focal"]["support"].values()) == 14 and scored["cnn_focal"]["support"]["mel"] == 2
    # The ensemble with the weights chosen on validation, and intervals (images resampled: no lesion ids).
    assert scored["ensemble"]["weights"] == read_json(tmp_path / "evaluate.json")["ensemble"]["weights"]
    for name in ("cnn_focal", "effnet_lite0", "ensemble"):
        low, high = scored[name]["balanced_accuracy_ci"]
        assert low <= scored[name]["balanced_accuracy"] <= high
    paired = read_json(tmp_path / "paired.json")
    assert paired["external_bootstrap"]["grouped_by"] == "image" and "cnn_focal vs ensemble" in paired["external"]


def test_external_folder_errors_are_clear(tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.evaluation.external import load_isic2018_test

    with pytest.raises(PipelineError, match="ground truth not found"):
        load_isic2018_test(tmp_path, ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"), 32)
    (tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nx,1,1,0,0,0,0,0\n"
    )
    with pytest.raises(PipelineError, match="line 2: not a one-hot row"):
        load_isic2018_test(tmp_path, ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"), 32)
