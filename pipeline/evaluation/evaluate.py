"""``evaluate``: score every trained model on the untouched test split and compare them.

Outputs: one metrics JSON (``{"cnn_focal": {...}, "effnetb7": {...}, "effnet_lite0": {...}, "effnet_lite2": {...},
"ensemble": {...}}``, every headline number with its 95% interval, e.g.
``"balanced_accuracy_ci": [0.62, 0.70]``) and the paired comparisons of the approaches
(:mod:`pipeline.evaluation.uncertainty`) for ``dvc metrics``, plot data and PNGs for ``dvc plots`` and
MLflow, and a Markdown comparison report (:mod:`pipeline.evaluation.report`). The test split is used here
only; model selection and the ensemble's weights used the validation split. Smoke runs are
scored and listed, never compared and never in the ensemble. Results by subgroup, reliability
diagrams, confident errors and a model card per real model: :mod:`pipeline.evaluation.model_card`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import EvaluateParams
from pipeline.errors import PipelineError
from pipeline.evaluation import runs
from pipeline.evaluation.ensemble import ensemble_of
from pipeline.evaluation.external import ISIC2018_TRUTH, load_isic2018_test
from pipeline.evaluation.figures import calibration_figures, draw_figures
from pipeline.evaluation.report import comparison_report, summary_table
from pipeline.evaluation.runs import log_to_mlflow
from pipeline.evaluation.scoring import Scored, classification_metrics, evaluate_models, write_plot_data
from pipeline.evaluation.subgroups import external_metadata, split_metadata, subgroup_results
from pipeline.evaluation.uncertainty import Bootstrap, comparisons
from pipeline.io import read_json, write_json


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
    from pipeline.data.datasets import label_indices, resize_images
    from pipeline.data.ingest import load_ingested, select_images
    from pipeline.data.split import read_split
    from pipeline.serving.inference import load_model
    from pipeline.tracking import mlflow_runs as tracking

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
        ensemble = ensemble_of(
            [item for item in scored if item.name in members], val_scored, params.ensemble_grid_step, list(models)
        )
        results[ensemble.name] = {
            **classification_metrics(labels, ensemble.probabilities, classes, params.ece_bins),
            "weights": ensemble.weights,
            "val_balanced_accuracy": ensemble.val_balanced_accuracy,
            "best_single_on_val": ensemble.best_single,
        }
        scored.append(Scored(ensemble.name, labels, ensemble.probabilities))
    test_groups = test["lesion_id"].to_numpy() if "lesion_id" in test.columns else None
    bootstrap, bootstrap_info = _bootstrap(labels, test_groups, params, classes)
    paired = {"bootstrap": bootstrap_info, "test": _with_intervals(results, scored, bootstrap, classes, smoke_runs)}
    groups: dict[str, Any] = {"bootstrap": bootstrap_info}
    real = {item.name: item.probabilities for item in scored if item.name not in smoke_runs}
    groups["test"], groups["test_skipped"] = subgroup_results(
        real, labels, test_groups, split_metadata(index, test), classes, params
    )

    write_json(metrics_file, results)
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report_file.write_text(
        comparison_report(results, classes, REPORT_TITLE, paired["test"], bootstrap_info), encoding="utf-8"
    )
    run_ids: dict[str, str] = {}
    for item in scored:
        model_plots = plots_dir / item.name
        write_plot_data(item, classes, model_plots)
        figures = draw_figures(item, classes, model_plots)
        figures += calibration_figures(
            item, test_images, classes, model_plots, params.ece_bins, test["image_id"].to_numpy()
        )
        run_ids[item.name] = log_to_mlflow(
            item.name, model_dirs.get(item.name), results[item.name], figures + [report_file], data=data
        )

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

                probabilities = combine(
                    [item.probabilities for item in external_scored], list(ensemble.weights.values())
                )
                external[ensemble.name] = {
                    **classification_metrics(external_labels, probabilities, classes, params.ece_bins),
                    "weights": ensemble.weights,
                }
                external_scored.append(Scored(ensemble.name, external_labels, probabilities))
            # No lesion ids in the ISIC layout: the external bootstrap resamples images.
            external_bootstrap, external_info = _bootstrap(external_labels, None, params, classes)
            paired["external"] = _with_intervals(external, external_scored, external_bootstrap, classes, smoke_runs)
            paired["external_bootstrap"] = external_info
            for name, model_metrics in external.items():
                log_to_mlflow(name, model_dirs.get(name), model_metrics, [], prefix="external", data=data)
            metadata, lesions = external_metadata(Path(params.external_dir), ISIC2018_TRUTH)
            real = {item.name: item.probabilities for item in external_scored if item.name not in smoke_runs}
            groups["external"], groups["external_skipped"] = subgroup_results(
                real, external_labels, lesions, metadata, classes, params
            )
            groups["external_source"] = params.external_dir
            write_json(external_metrics_file, {"source": params.external_dir, **external})
        else:
            groups["external_skipped"] = "evaluate.external_dir is not set"
            write_json(external_metrics_file, {"skipped": groups["external_skipped"]})
    if paired_file is not None:
        write_json(paired_file, paired)
    if subgroups_file is not None:
        write_json(subgroups_file, groups)
        runs.publish(
            cards_dir,
            subgroups_file,
            groups,
            results,
            external,
            model_dirs,
            run_ids,
            index,
            test,
            data,
            params.ece_bins,
            plots_dir,
        )
    return results


def _bootstrap(
    labels: np.ndarray, groups: np.ndarray | None, params: EvaluateParams, classes: tuple[str, ...]
) -> tuple[Bootstrap, dict[str, Any]]:
    bootstrap = Bootstrap.of(
        labels,
        groups,
        params.bootstrap_resamples,
        params.bootstrap_seed,
        params.confidence,
        classes.index("mel"),
        params.ece_bins,
    )
    info = {
        "resamples": params.bootstrap_resamples,
        "seed": params.bootstrap_seed,
        "confidence": params.confidence,
        "grouped_by": bootstrap.grouped_by,
    }
    return bootstrap, info


def _with_intervals(
    results: dict[str, dict[str, Any]],
    scored: list[Scored],
    bootstrap: Bootstrap,
    classes: tuple[str, ...],
    smoke_runs: frozenset[str],
) -> dict[str, dict[str, Any]]:
    """Add every model's intervals (and its smoke-run mark) to ``results``; return the paired
    comparisons of the models that are not smoke runs."""
    for item in scored:
        results[item.name].update(bootstrap.intervals(item.probabilities, classes))
        if item.name in smoke_runs:
            results[item.name]["smoke_run"] = True
    return comparisons(bootstrap, {item.name: item.probabilities for item in scored if item.name not in smoke_runs})


REPORT_TITLE = (
    "HAM10000: focal-loss CNN vs EfficientNetB7 vs EfficientNet-Lite0 and Lite2 (ImageNet), and their ensemble"
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
