"""The offline recorder: a training run recorded to a bundle folder, logged to MLflow later.

A GPU node often has no route to the tracking server (and no mlflow installed). With
``PIPELINE_OFFLINE_RUNS=<folder>`` a training stage records its run there instead of to
MLflow, without importing mlflow: params, tags, every metric with its step and time, the
model file, the history and the stage's metrics JSON. ``python -m pipeline.tracking.bundle import
<bundle>`` (``make import-run BUNDLE=...``) later logs it to the server as a normal run of the
same experiment: same per-epoch history, model registered with the usual aliases, tags
saying where and on what device it trained. This is MLflow's counterpart of other trackers'
"offline + sync".

Layout of one bundle (a folder ``<stage>-<UTC time>-<id>``)::

    bundle.json        manifest, written last: format, run name, experiment, tags, params,
                       summary metrics, registered model name and score, where the stage's
                       outputs go, and the sha256 of every file below
    metrics.csv        key,value,step,timestamp_ms: every logged metric value
    model.keras        the model (backend-neutral Keras format)
    history.csv        the per-epoch history the stage wrote
    stage_metrics.json the stage's metrics file (what DVC tracks)

While the run is in progress the folder is ``<name>.partial``; it is renamed only after
``bundle.json`` is complete, so a killed run can never be mistaken for a finished one.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import sha256_of
from pipeline.tracking.recorder import OFFLINE_ENV

FORMAT = "ham10000-offline-run"
VERSION = 1
MANIFEST = "bundle.json"
METRICS = "metrics.csv"
MODEL = "model.keras"
HISTORY = "history.csv"
STAGE_METRICS = "stage_metrics.json"
PARTIAL = ".partial"
REQUIRED_KEYS = (
    "format",
    "version",
    "bundle_id",
    "experiment_name",
    "run_name",
    "tags",
    "params",
    "metrics",
    "registered_model_name",
    "score",
    "outputs",
    "files",
    "start_time_ms",
    "end_time_ms",
)


def _now_ms() -> int:
    return int(time.time() * 1000)


class OfflineRecorder:
    """Records a training run into a bundle folder (the same calls as :class:`pipeline.tracking.mlflow_runs.MlflowRecorder`, :class:`pipeline.tracking.recorder.Recorder`)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.experiment_name = ""
        self.partial: Path | None = None
        self.state: dict[str, Any] = {}

    def describe(self) -> str:
        return f"offline bundle in {self.folder}"

    def connect(self, experiment_name: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise PipelineError(
                f"{OFFLINE_ENV}={self.folder}: cannot write there ({error.strerror or error})"
            ) from error
        self.experiment_name = experiment_name

    def _partial_for(self, run_id: str) -> Path:
        return self.folder / f"{run_id}{PARTIAL}"

    def run_exists(self, run_id: str) -> bool:
        return (self._partial_for(run_id) / "state.json").is_file()

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, str], resume_run_id: str | None = None) -> Iterator[str]:
        if resume_run_id and self.run_exists(resume_run_id):
            run_id = resume_run_id
            self.partial = self._partial_for(run_id)
            self.state = json.loads((self.partial / "state.json").read_text())
        else:
            run_id = f"{run_name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
            self.partial = self._partial_for(run_id)
            self.partial.mkdir(parents=True)
            self.state = {
                "bundle_id": run_id,
                "run_name": run_name,
                "experiment_name": self.experiment_name,
                "tags": {**dict(tags), "trained_offline": "true", "host": socket.gethostname()},
                "params": {},
                "start_time_ms": _now_ms(),
            }
            self._save_state()
            with open(self.partial / METRICS, "w", newline="") as handle:
                csv.writer(handle).writerow(["key", "value", "step", "timestamp_ms"])
        yield run_id

    def _save_state(self) -> None:
        assert self.partial is not None
        (self.partial / "state.json").write_text(json.dumps(self.state, indent=2))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.state["params"].update({key: str(value) for key, value in params.items()})
        self._save_state()

    def log_input(self, name: str, digest: str, source: Path | None) -> None:
        self.state.setdefault("inputs", []).append(
            {"name": name, "digest": digest, "source": str(source.resolve()) if source else ""}
        )
        self._save_state()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        assert self.partial is not None
        stamp = _now_ms()
        with open(self.partial / METRICS, "a", newline="") as handle:
            writer = csv.writer(handle)
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    writer.writerow([key, repr(float(value)), step if step is not None else 0, stamp])
        if step is None:
            self.state.setdefault("metrics", {}).update(
                {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            )

    def log_model(
        self, model: Any, sample_images: Any, registered_name: str, score: float, out_dir: Path, metrics_file: Path
    ) -> dict[str, Any]:
        """Copy the saved model, history and stage metrics in, write the manifest, seal the bundle."""
        assert self.partial is not None
        for source, name in ((out_dir / MODEL, MODEL), (out_dir / HISTORY, HISTORY), (metrics_file, STAGE_METRICS)):
            if source.is_file():
                shutil.copyfile(source, self.partial / name)
        files = {
            name: sha256_of(self.partial / name)
            for name in (MODEL, METRICS, HISTORY, STAGE_METRICS)
            if (self.partial / name).is_file()
        }
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            **{
                k: self.state[k]
                for k in ("bundle_id", "run_name", "experiment_name", "tags", "params", "start_time_ms")
            },
            "metrics": self.state.get("metrics", {}),
            "inputs": self.state.get("inputs", []),
            "registered_model_name": registered_name,
            "score": float(score),
            "outputs": {"model_dir": str(out_dir), "metrics": str(metrics_file)},
            "files": files,
            "end_time_ms": _now_ms(),
        }
        (self.partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (self.partial / "state.json").unlink()
        final = self.folder / self.state["bundle_id"]
        self.partial.rename(final)
        self.partial = None
        return {"offline_bundle": str(final), "registered_model": registered_name, "version": None, "champion": None}
