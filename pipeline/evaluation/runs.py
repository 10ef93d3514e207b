"""What ``evaluate`` logs to MLflow: each model's test numbers (with their intervals) and figures,
into the model's training run, or an evaluation run of its own where there is none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import read_json


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

