"""What ``evaluate`` logs to MLflow: each model's test numbers (with their intervals) and figures,
into the model's training run, or an evaluation run of its own where there is none; its
subgroup results; and each real model's card, attached to its registered version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.model_card import DESCRIPTION_LIMIT, HEADLINE, card_text, with_interval
from pipeline.evaluation.subgroups import flagged, mlflow_subgroup_metrics
from pipeline.io import read_json


def mlflow_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of one model's metrics as MLflow metric names: ``test_balanced_accuracy``,
    ``test_balanced_accuracy_ci_low`` / ``_high``, ``test_recall_mel`` (and its ``_ci_low``),
    ``test_weight_<model>`` for the ensemble."""
    flat = {
        f"{prefix}_{key}": value
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
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


def log_to_mlflow(
    name: str,
    model_dir: Path | None,
    metrics: dict[str, Any],
    artifacts: list[Path],
    prefix: str = "test",
    data: str = "unknown",
) -> str:
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


def _registry(model_dir: Path | None) -> dict[str, Any]:
    from pipeline.tracking.recorder import RUN_FILE

    record = model_dir / RUN_FILE if model_dir is not None else None
    return read_json(record) if record is not None and record.is_file() else {}


def describe_version(registry: dict[str, Any], run_id: str, card: Path, summary: str) -> bool:
    """Tag the registered model version with its card's artifact URI and put a summary in its
    description; False when the version is not on this server (a reset store)."""
    import mlflow

    from pipeline.errors import TrackingError

    name, version = registry.get("registered_model"), registry.get("version")
    if not name or not version:
        return False
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except Exception:
        return False
    uri = f"runs:/{run_id}/model_card/{card.name}"  # where publish logged it: the version's run, if it still exists
    try:
        client.set_model_version_tag(name, str(version), "model_card", uri)
        client.update_model_version(name, str(version), description=summary[:DESCRIPTION_LIMIT])
    except Exception as error:
        raise TrackingError(f"MLflow: cannot attach the model card to {name} version {version} ({error})") from error
    return True


def publish(
    cards_dir: Path | None,
    subgroups_file: Path,
    groups: dict[str, Any],
    results: dict[str, Any],
    external: dict[str, Any],
    model_dirs: dict[str, Path],
    run_ids: dict[str, str],
    index: pd.DataFrame,
    test: pd.DataFrame,
    data: str,
    ece_bins: int,
    plots_dir: Path,
) -> list[Path]:
    """Log the subgroups to every model's run; write, log and register each real model's card."""
    import os

    from pipeline.tracking import mlflow_runs as tracking

    cards = []
    for name, subgroups in groups["test"].items():
        tracking.log_metrics(
            {
                **mlflow_subgroup_metrics(subgroups, "test"),
                **mlflow_subgroup_metrics(groups.get("external", {}).get(name, {}), "external"),
            },
            run_id=run_ids[name],
        )
        tracking.log_artifacts([subgroups_file], artifact_path="evaluation", run_id=run_ids[name])
        if cards_dir is None or name not in model_dirs:  # the ensemble has no registered model
            continue
        registry = _registry(model_dirs[name])
        outside = (
            {
                "metrics": external[name],
                "subgroups": groups.get("external", {}).get(name),
                "skipped": groups.get("external_skipped"),
                "source": groups.get("external_source"),
            }
            if name in external
            else {"skipped": groups.get("external_skipped", "evaluate.external_dir is not set")}
        )
        cards_dir.mkdir(parents=True, exist_ok=True)
        card = cards_dir / f"{name}.md"
        plots = Path(os.path.relpath(plots_dir / name, cards_dir)).as_posix()
        card.write_text(
            card_text(
                name,
                results[name],
                subgroups,
                groups.get("test_skipped", {}),
                index,
                test,
                data,
                groups["bootstrap"],
                registry,
                outside,
                ece_bins,
                plots,
            ),
            encoding="utf-8",
        )
        tracking.log_artifacts([card], artifact_path="model_card", run_id=run_ids[name])
        summary = (
            f"Model card: model_card/{card.name} of this version's run (reports/model_cards/{card.name}). "
            f"Test split ({data}): "
            + ", ".join(
                f"{label} {with_interval(results[name].get(key), results[name].get(key + '_ci'))}"
                for label, key in HEADLINE[:4]
                if results[name].get(key) is not None
            )
            + ". Flagged subgroups: "
            + ("; ".join(f"{g}={s} ({', '.join(m)})" for g, s, m in flagged(subgroups)) or "none")
            + ". A research model, not a diagnostic device."
        )
        describe_version(registry, run_ids[name], card, summary)
        cards.append(card)
    return cards
