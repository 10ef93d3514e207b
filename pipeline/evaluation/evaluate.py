"""``evaluate``: score every trained model on the untouched test split and compare them.

Outputs: one metrics JSON (``{"cnn_focal": {...}, "effnetb7": {...}, "effnet_lite0": {...},
"ensemble": {...}}``, every headline number with its 95% interval, e.g.
``"balanced_accuracy_ci": [0.62, 0.70]``) and the paired comparisons of the approaches
(:mod:`pipeline.evaluation.uncertainty`) for ``dvc metrics``, plot data and PNGs for ``dvc plots`` and
MLflow, and a Markdown comparison report (:mod:`pipeline.evaluation.report`). The test split is used here
only; model selection and the ensemble's weights used the validation split. Smoke runs are
scored and listed, never compared and never in the ensemble. Results by subgroup, reliability
diagrams, confident errors and a model card per real model: :mod:`pipeline.evaluation.model_card`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score, roc_curve

from pipeline.config import EvaluateParams
from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json
from pipeline.evaluation import model_card
from pipeline.evaluation.figures import calibration_figures, draw_figures
from pipeline.evaluation.report import comparison_report, summary_table
from pipeline.evaluation.subgroups import external_metadata, split_metadata, subgroup_results
from pipeline.evaluation.uncertainty import Bootstrap, comparisons


@dataclass(frozen=True)
class Scored:
    """Predictions of one model on one labelled image set."""

    name: str
    labels: np.ndarray
    probabilities: np.ndarray


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Top-label ECE: the bin-size-weighted gap between confidence and accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right-closed bins so a confidence of exactly 1.0 lands in the last bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(error)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], ece_bins: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy (the ISIC 2018 metric), macro-F1, macro OvR ROC AUC, ECE and per-class scores."""
    predicted = probabilities.argmax(axis=1)
    indices = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    present = np.unique(labels)
    if len(present) == len(classes):
        auc = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=indices))
    else:  # AUC is undefined for a class with no positives; average over the classes present
        auc = float(np.mean([roc_auc_score(labels == c, probabilities[:, c]) for c in present])) if len(present) > 1 else float("nan")
    return {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
        "roc_auc_macro": auc,
        "ece": expected_calibration_error(labels, probabilities, ece_bins),
        "melanoma_recall": float(recall[classes.index("mel")]),
        "recall": {dx: float(r) for dx, r in zip(classes, recall)},
        "precision": {dx: float(p) for dx, p in zip(classes, precision)},
        "f1": {dx: float(f) for dx, f in zip(classes, f1)},
        "support": {dx: int(s) for dx, s in zip(classes, support)},
    }


def write_plot_data(scored: Scored, classes: tuple[str, ...], out_dir: Path) -> None:
    """CSV files for ``dvc plots``: one row per test image, and one ROC curve per class."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = scored.probabilities.argmax(axis=1)
    pd.DataFrame({"actual": np.asarray(classes)[scored.labels], "predicted": np.asarray(classes)[predicted]}).to_csv(
        out_dir / "predictions.csv", index=False
    )
    curves = []
    for index, dx in enumerate(classes):
        positives = scored.labels == index
        if positives.any() and not positives.all():
            fpr, tpr, _ = roc_curve(positives, scored.probabilities[:, index])
            curves.append(pd.DataFrame({"dx": dx, "fpr": fpr, "tpr": tpr}))
    pd.concat(curves, ignore_index=True).to_csv(out_dir / "roc.csv", index=False)


def evaluate_models(models: dict[str, Any], images_by_size: Any, labels: np.ndarray, classes: tuple[str, ...], params: EvaluateParams) -> tuple[dict[str, dict[str, Any]], list[Scored]]:
    """Score each model; ``images_by_size(size)`` gives the test images at a model's input size."""
    from pipeline.serving.inference import predict_probabilities
    from pipeline.models.builders import model_class_names, model_input_size

    results, scored_models = {}, []
    for name, model in models.items():
        if tuple(model_class_names(model)) != tuple(classes):
            raise PipelineError(f"model {name} predicts classes {model_class_names(model)}, params say {list(classes)}")
        probabilities = predict_probabilities(model, images_by_size(model_input_size(model)), tta=params.tta)
        scored = Scored(name, labels, probabilities)
        results[name] = classification_metrics(labels, probabilities, classes, params.ece_bins)
        scored_models.append(scored)
    return results, scored_models


ISIC2018_INPUT = "ISIC2018_Task3_Test_Input"
ISIC2018_TRUTH = "ISIC2018_Task3_Test_GroundTruth.csv"


def load_isic2018_test(folder: Path, classes: tuple[str, ...], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a folder in the ISIC 2018 Task 3 test layout.

    ``ISIC2018_Task3_Test_GroundTruth.csv`` has one row per image with one-hot columns
    ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``; the images are ``ISIC2018_Task3_Test_Input/<image>.jpg``.
    Images get the ingest preprocessing (centre square, ``size`` pixels), decoded in parallel.
    """
    import os

    from pipeline.errors import DataValidationError
    from pipeline.data.ingest import decode_all

    truth_path = folder / ISIC2018_TRUTH
    if not truth_path.is_file():
        raise PipelineError(f"{truth_path}: ground truth not found (expected the ISIC 2018 Task 3 test layout)")
    truth = pd.read_csv(truth_path)
    columns = {dx.upper(): dx for dx in classes}
    missing = [column for column in ["image", *columns] if column not in truth.columns]
    if missing:
        raise DataValidationError([f"missing column '{column}'" for column in missing], str(truth_path))
    one_hot = truth[list(columns)].to_numpy()
    bad_rows = np.flatnonzero(~np.isclose(one_hot.sum(axis=1), 1.0) | ~np.isin(one_hot, (0, 1)).all(axis=1))
    if len(bad_rows):
        raise DataValidationError([f"line {row + 2}: not a one-hot row" for row in bad_rows], str(truth_path))
    labels = np.array([classes.index(columns[name]) for name in np.asarray(list(columns))[one_hot.argmax(axis=1)]], dtype=np.int32)
    paths = [folder / ISIC2018_INPUT / f"{image}.jpg" for image in truth["image"]]
    absent = [str(path) for path in paths if not path.is_file()]
    if absent:
        raise DataValidationError([f"{path}: image not found" for path in absent], str(folder))
    images, problems = decode_all(paths, size, True, os.cpu_count() or 1)
    if problems:
        raise DataValidationError(problems, str(folder))
    return images, labels


def mlflow_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of one model's metrics as MLflow metric names: ``test_balanced_accuracy``,
    ``test_balanced_accuracy_ci_low`` / ``_high``, ``test_recall_mel`` (and its ``_ci_low``),
    ``test_weight_<model>`` for the ensemble."""
    flat = {f"{prefix}_{key}": value for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    for key, value in metrics.items():
        if key.endswith("_ci") and isinstance(value, list):
            flat[f"{prefix}_{key}_low"], flat[f"{prefix}_{key}_high"] = value
    flat.update({f"{prefix}_recall_{dx}": value for dx, value in metrics["recall"].items()})
    for dx, (low, high) in (metrics.get("recall_ci") or {}).items():
        flat[f"{prefix}_recall_{dx}_ci_low"], flat[f"{prefix}_recall_{dx}_ci_high"] = low, high
    flat.update({f"{prefix}_weight_{model}": value for model, value in metrics.get("weights", {}).items()})
    return {key: value for key, value in flat.items() if np.isfinite(value)}


def is_smoke_run(model_dir: Path) -> bool:
    """Whether the training stage that made ``model_dir`` was declared a smoke run (its
    ``mlflow_run.json`` says so; older folders without the key are not)."""
    from pipeline.tracking.recorder import RUN_FILE

    record = model_dir / RUN_FILE
    return bool(read_json(record).get("smoke_run", False)) if record.is_file() else False


def log_to_mlflow(name: str, model_dir: Path | None, metrics: dict[str, Any], artifacts: list[Path], prefix: str = "test", data: str = "unknown") -> str:
    """Log test metrics and plots to the model's training run (or a new run if it is gone or,
    like the ensemble's, there is none)."""
    from pipeline.tracking import mlflow_runs as tracking
    from pipeline.tracking.provenance import git_commit
    from pipeline.tracking.recorder import RUN_FILE

    flat = mlflow_metrics(metrics, prefix)
    record_file = model_dir / RUN_FILE if model_dir is not None else None
    run_id = read_json(record_file)["run_id"] if record_file is not None and record_file.is_file() else None
    if run_id and tracking.run_exists(run_id):
        tracking.log_metrics(flat, run_id=run_id)
        tracking.log_artifacts(artifacts, artifact_path="evaluation", run_id=run_id)
        return run_id
    # No training run on this server (the ensemble; or a store that was reset): one evaluation
    # run per model, data set and commit, found again by its tag, so reruns do not pile up runs.
    commit = git_commit()
    key = f"{name}|{data}|{commit}"
    tags = {"stage": "evaluate", "model": name, "approach": name, "git_commit": commit, "evaluation_key": key}
    with tracking.run(f"{name}-{data}", tags, tracking.find_run_by_tag("evaluation_key", key)) as active:
        tracking.log_metrics(flat)
        tracking.log_artifacts(artifacts, artifact_path="evaluation")
        return active.info.run_id


def run_evaluation(
    model_dirs: dict[str, Path],
    ingested: Path,
    split: Path,
    classes: tuple[str, ...],
    experiment: str,
    params: EvaluateParams,
    metrics_file: Path,
    plots_dir: Path,
    report_file: Path,
    external_metrics_file: Path | None = None,
    image_size: int | None = None,
    data: str = "unknown",
    smoke_runs: frozenset[str] = frozenset(),
    paired_file: Path | None = None,
    subgroups_file: Path | None = None,
    cards_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """The evaluate stage: metrics JSON with intervals, paired comparisons, plots, report, and
    MLflow logging for every model.

    ``smoke_runs`` names the models trained as smoke runs: scored and listed, but never
    compared and given no ensemble weight. With ``params.external_dir`` set, the models and the
    ensemble (its validation weights) are also scored on that ISIC 2018 Task 3 test folder, into
    ``external_metrics_file`` (``{"skipped": ...}`` is written when it is unset). The real models
    and the ensemble get subgroup results (:mod:`pipeline.evaluation.subgroups`) into
    ``subgroups_file`` and their runs; each real model a card in ``cards_dir``
    (:mod:`pipeline.evaluation.model_card`).
    """
    from pipeline.tracking import mlflow_runs as tracking
    from pipeline.data.datasets import label_indices, resize_images
    from pipeline.serving.inference import load_model
    from pipeline.data.ingest import load_ingested, select_images
    from pipeline.data.split import read_split

    tracking.connect(experiment)
    images, index = load_ingested(ingested)
    test = read_split(split, "test")
    test_images = select_images(images, index, test["image_id"])
    labels = label_indices(test["dx"], classes)
    models = {name: load_model(directory) for name, directory in model_dirs.items()}
    results, scored = evaluate_models(models, lambda size: resize_images(test_images, size), labels, classes, params)
    members = {name: model for name, model in models.items() if name not in smoke_runs}
    ensemble = None
    if params.ensemble and len(members) > 1:
        val = read_split(split, "val")
        val_images = select_images(images, index, val["image_id"])
        _, val_scored = evaluate_models(
            members, lambda size: resize_images(val_images, size), label_indices(val["dx"], classes), classes, params
        )
        ensemble = ensemble_of([item for item in scored if item.name in members], val_scored, params.ensemble_grid_step, list(models))
        results[ensemble.name] = {
            **classification_metrics(labels, ensemble.probabilities, classes, params.ece_bins),
            "weights": ensemble.weights,
            "val_balanced_accuracy": ensemble.val_balanced_accuracy,
        }
        scored.append(Scored(ensemble.name, labels, ensemble.probabilities))
    test_groups = test["lesion_id"].to_numpy() if "lesion_id" in test.columns else None
    bootstrap, bootstrap_info = _bootstrap(labels, test_groups, params, classes)
    paired = {"bootstrap": bootstrap_info, "test": _with_intervals(results, scored, bootstrap, classes, smoke_runs)}
    groups: dict[str, Any] = {"bootstrap": bootstrap_info}
    real = {item.name: item.probabilities for item in scored if item.name not in smoke_runs}
    groups["test"], groups["test_skipped"] = subgroup_results(real, labels, test_groups, split_metadata(index, test), classes, params)

    write_json(metrics_file, results)
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report_file.write_text(comparison_report(results, classes, REPORT_TITLE, paired["test"], bootstrap_info), encoding="utf-8")
    run_ids: dict[str, str] = {}
    for item in scored:
        model_plots = plots_dir / item.name
        write_plot_data(item, classes, model_plots)
        figures = draw_figures(item, classes, model_plots)
        figures += calibration_figures(item, test_images, classes, model_plots, params.ece_bins, test["image_id"].to_numpy())
        run_ids[item.name] = log_to_mlflow(item.name, model_dirs.get(item.name), results[item.name], figures + [report_file], data=data)

    external: dict[str, Any] = {}

    if external_metrics_file is not None:
        if params.external_dir:
            if image_size is None:
                raise ValueError("image_size is needed to preprocess the external test set")
            external_images, external_labels = load_isic2018_test(Path(params.external_dir), classes, image_size)
            external, external_scored = evaluate_models(
                models, lambda size: resize_images(external_images, size), external_labels, classes, params
            )
            if ensemble is not None:
                from pipeline.evaluation.ensemble import combine

                probabilities = combine([item.probabilities for item in external_scored], list(ensemble.weights.values()))
                external[ensemble.name] = {**classification_metrics(external_labels, probabilities, classes, params.ece_bins),
                                           "weights": ensemble.weights}
                external_scored.append(Scored(ensemble.name, external_labels, probabilities))
            # No lesion ids in the ISIC layout: the external bootstrap resamples images.
            external_bootstrap, external_info = _bootstrap(external_labels, None, params, classes)
            paired["external"] = _with_intervals(external, external_scored, external_bootstrap, classes, smoke_runs)
            paired["external_bootstrap"] = external_info
            for name, model_metrics in external.items():
                log_to_mlflow(name, model_dirs.get(name), model_metrics, [], prefix="external", data=data)
            metadata, lesions = external_metadata(Path(params.external_dir), ISIC2018_TRUTH)
            real = {item.name: item.probabilities for item in external_scored if item.name not in smoke_runs}
            groups["external"], groups["external_skipped"] = subgroup_results(real, external_labels, lesions, metadata, classes, params)
            groups["external_source"] = params.external_dir
            write_json(external_metrics_file, {"source": params.external_dir, **external})
        else:
            groups["external_skipped"] = "evaluate.external_dir is not set"
            write_json(external_metrics_file, {"skipped": groups["external_skipped"]})
    if paired_file is not None:
        write_json(paired_file, paired)
    if subgroups_file is not None:
        write_json(subgroups_file, groups)
        model_card.publish(cards_dir, subgroups_file, groups, results, external, model_dirs, run_ids, index, test, data,
                           params.ece_bins, plots_dir)
    return results


def _bootstrap(labels: np.ndarray, groups: np.ndarray | None, params: EvaluateParams, classes: tuple[str, ...]) -> tuple[Bootstrap, dict[str, Any]]:
    bootstrap = Bootstrap.of(labels, groups, params.bootstrap_resamples, params.bootstrap_seed, params.confidence, classes.index("mel"),
                              params.ece_bins)
    info = {"resamples": params.bootstrap_resamples, "seed": params.bootstrap_seed, "confidence": params.confidence,
            "grouped_by": bootstrap.grouped_by}
    return bootstrap, info


def _with_intervals(results: dict[str, dict[str, Any]], scored: list[Scored], bootstrap: Bootstrap,
                    classes: tuple[str, ...], smoke_runs: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Add every model's intervals (and its smoke-run mark) to ``results``; return the paired
    comparisons of the models that are not smoke runs."""
    for item in scored:
        results[item.name].update(bootstrap.intervals(item.probabilities, classes))
        if item.name in smoke_runs:
            results[item.name]["smoke_run"] = True
    return comparisons(bootstrap, {item.name: item.probabilities for item in scored if item.name not in smoke_runs})


REPORT_TITLE = "HAM10000: focal-loss CNN vs EfficientNetB7 vs EfficientNet-Lite0 (ImageNet), and their ensemble"


@dataclass(frozen=True)
class Ensemble:
    """The ensemble's test probabilities and how they were made."""

    name: str
    probabilities: np.ndarray
    weights: dict[str, float]
    val_balanced_accuracy: float


def ensemble_of(test: list[Scored], val: list[Scored], step: float, all_models: list[str] | None = None) -> Ensemble:
    """Weights chosen on the validation predictions, applied to the test predictions. The
    models of ``all_models`` that are not members (smoke runs) are listed with weight 0."""
    from pipeline.evaluation.ensemble import choose_weights, combine

    weights, val_score = choose_weights([item.probabilities for item in val], val[0].labels, step)
    chosen = {item.name: round(float(w), 6) for item, w in zip(test, weights)}
    return Ensemble(
        "ensemble",
        combine([item.probabilities for item in test], weights),
        {name: chosen.get(name, 0.0) for name in (all_models or list(chosen))},
        val_score,
    )


def main(argv: list[str] | None = None) -> None:
    """Print the summary table of the test metrics file named in dvc.yaml."""
    from pipeline.io import pipeline_path

    path = pipeline_path("test_metrics")
    if not path.is_file():
        raise PipelineError(f"{path}: no test metrics yet; run `make run`")
    print(f"test metrics ({path}):")
    print(summary_table(read_json(path)))


if __name__ == "__main__":
    import sys

    from pipeline.errors import run_cli

    sys.exit(run_cli(main))
