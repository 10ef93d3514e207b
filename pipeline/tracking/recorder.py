"""The recorder interface: what a training stage records about its run, wherever it goes.

A training stage talks to one :class:`Recorder`. :class:`pipeline.tracking.mlflow_runs.MlflowRecorder`
sends the run to the MLflow tracking server; :class:`pipeline.tracking.offline.OfflineRecorder`
writes it into a bundle folder for a machine with no route to the server
(``PIPELINE_OFFLINE_RUNS``), which :mod:`pipeline.tracking.bundle` imports later. Training depends
on this module only for the interface and on :mod:`pipeline.tracking.destination` for the choice;
neither recorder knows about training, so the dependencies run one way.

The names of the files a trained model's folder holds live here too: the training loop writes
them, the bundle import restores them, evaluation and serving read them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

#: A trained model's folder: the model, its per-epoch history, and the record of its run.
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
RUN_FILE = "mlflow_run.json"
#: Set to a folder to record training runs there instead of to MLflow.
OFFLINE_ENV = "PIPELINE_OFFLINE_RUNS"


class Recorder(Protocol):
    """The calls a training stage makes, in this order: ``connect`` (fail fast, before any
    work), ``run`` (a context that yields the run id; resumed after an interruption when
    ``resume_run_id`` still exists), ``log_input`` / ``log_params`` / ``log_metrics`` during
    training, ``log_model`` once at the end (returns the record written to :data:`RUN_FILE`)."""

    def describe(self) -> str: ...

    def connect(self, experiment_name: str) -> None: ...

    def run_exists(self, run_id: str) -> bool: ...

    def run(
        self, run_name: str, tags: Mapping[str, str], resume_run_id: str | None = None
    ) -> AbstractContextManager[str]: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_input(self, name: str, digest: str, source: Path | None) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_model(
        self, model: Any, sample_images: Any, registered_name: str, score: float, out_dir: Path, metrics_file: Path
    ) -> dict[str, Any]: ...


def offline_dir() -> Path | None:
    """The folder offline runs go to (``$PIPELINE_OFFLINE_RUNS``), or None to log to MLflow."""
    value = os.environ.get(OFFLINE_ENV, "").strip()
    return Path(value) if value else None


class NullRecorder:
    """Records nothing: the recorder of a training group's other processes (only process 0
    logs the run), which must not need the tracking server's address or credentials."""

    def __init__(self, why: str):
        self.why = why

    def describe(self) -> str:
        return f"none ({self.why})"

    def connect(self, experiment_name: str) -> None:
        pass

    def run_exists(self, run_id: str) -> bool:
        return False

    @contextlib.contextmanager
    def run(self, run_name: str, tags: Mapping[str, str], resume_run_id: str | None = None) -> Iterator[str]:
        yield ""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_input(self, name: str, digest: str, source: Path | None) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_model(
        self, model: Any, sample_images: Any, registered_name: str, score: float, out_dir: Path, metrics_file: Path
    ) -> dict[str, Any]:
        return {}
