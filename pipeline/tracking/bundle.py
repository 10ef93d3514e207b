"""Offline run bundles: a training run recorded to a folder, logged to MLflow later.

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

import argparse
import csv
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, run_cli
from pipeline.io import sha256_of

OFFLINE_ENV = "PIPELINE_OFFLINE_RUNS"
FORMAT = "ham10000-offline-run"
VERSION = 1
MANIFEST = "bundle.json"
METRICS = "metrics.csv"
MODEL = "model.keras"
HISTORY = "history.csv"
STAGE_METRICS = "stage_metrics.json"
PARTIAL = ".partial"
REQUIRED_KEYS = ("format", "version", "bundle_id", "experiment_name", "run_name", "tags", "params", "metrics",
                 "registered_model_name", "score", "outputs", "files", "start_time_ms", "end_time_ms")


class BundleError(PipelineError):
    """An offline bundle is missing, incomplete or corrupt."""


def offline_dir() -> Path | None:
    """The folder offline runs go to (``$PIPELINE_OFFLINE_RUNS``), or None to log to MLflow."""
    value = os.environ.get(OFFLINE_ENV, "").strip()
    return Path(value) if value else None


def _now_ms() -> int:
    return int(time.time() * 1000)


class OfflineRecorder:
    """Records a training run into a bundle folder (the same calls as :class:`tracking.MlflowRecorder`)."""

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
            raise PipelineError(f"{OFFLINE_ENV}={self.folder}: cannot write there ({error.strerror or error})") from error
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
                "bundle_id": run_id, "run_name": run_name, "experiment_name": self.experiment_name,
                "tags": {**dict(tags), "trained_offline": "true", "host": socket.gethostname()},
                "params": {}, "start_time_ms": _now_ms(),
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
        self.state.setdefault("inputs", []).append({"name": name, "digest": digest, "source": str(source.resolve()) if source else ""})
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
            self.state.setdefault("metrics", {}).update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

    def log_model(self, model: Any, sample_images: Any, registered_name: str, score: float, out_dir: Path, metrics_file: Path) -> dict[str, Any]:
        """Copy the saved model, history and stage metrics in, write the manifest, seal the bundle."""
        assert self.partial is not None
        for source, name in ((out_dir / MODEL, MODEL), (out_dir / HISTORY, HISTORY), (metrics_file, STAGE_METRICS)):
            if source.is_file():
                shutil.copyfile(source, self.partial / name)
        files = {name: sha256_of(self.partial / name) for name in (MODEL, METRICS, HISTORY, STAGE_METRICS) if (self.partial / name).is_file()}
        manifest = {
            "format": FORMAT, "version": VERSION, **{k: self.state[k] for k in ("bundle_id", "run_name", "experiment_name", "tags", "params", "start_time_ms")},
            "metrics": self.state.get("metrics", {}), "inputs": self.state.get("inputs", []), "registered_model_name": registered_name, "score": float(score),
            "outputs": {"model_dir": str(out_dir), "metrics": str(metrics_file)}, "files": files, "end_time_ms": _now_ms(),
        }
        (self.partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (self.partial / "state.json").unlink()
        final = self.folder / self.state["bundle_id"]
        self.partial.rename(final)
        self.partial = None
        return {"offline_bundle": str(final), "registered_model": registered_name, "version": None, "champion": None}


# ---------------------------------------------------------------------------------------------
# Reading and importing


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    step: int
    timestamp_ms: int


@dataclass(frozen=True)
class Bundle:
    folder: Path
    manifest: dict[str, Any]
    history: list[MetricPoint]

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]


def read_bundle(folder: str | Path) -> Bundle:
    """Validate a bundle completely (manifest, every file's checksum, the metric history)
    before anything is logged; raise :class:`BundleError` with one line saying what is wrong."""
    folder = Path(folder)
    if folder.name.endswith(PARTIAL) or (folder / "state.json").is_file():
        raise BundleError(f"bundle {folder} is incomplete: its training run did not finish (no {MANIFEST}); rerun the stage")
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} not found (expected a folder written under ${OFFLINE_ENV})")
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise BundleError(f"bundle {folder} is incomplete: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"bundle {folder}: {MANIFEST} is not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {folder}: {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(f"bundle {folder}: format version {manifest.get('version')!r}, this pipeline reads version {VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"bundle {folder}: {MANIFEST} lacks {', '.join(missing)}")
    for name in (MODEL, METRICS):
        if name not in manifest["files"]:
            raise BundleError(f"bundle {folder}: {MANIFEST} lists no {name}")
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"bundle {folder}: {name} is missing")
        if sha256_of(path) != expected:
            raise BundleError(f"bundle {folder}: {name} does not match its sha256 in {MANIFEST} (corrupt or truncated copy)")
    return Bundle(folder, manifest, _read_history(folder / METRICS))


def _read_history(path: Path) -> list[MetricPoint]:
    points = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["key", "value", "step", "timestamp_ms"]:
            raise BundleError(f"{path}: header {reader.fieldnames}, expected key,value,step,timestamp_ms")
        for line, row in enumerate(reader, start=2):
            try:
                points.append(MetricPoint(row["key"], float(row["value"]), int(row["step"]), int(row["timestamp_ms"])))
            except (TypeError, ValueError) as error:
                raise BundleError(f"{path}, line {line}: bad metric row ({error})") from error
    return points


def import_bundle(folder: str | Path, restore: bool = False) -> dict[str, Any]:
    """Log a bundle to the tracking server as a normal run and register its model.

    Importing the same bundle twice does not make a second run: the bundle id is a run tag.
    With ``restore``, the stage's outputs (model folder with ``mlflow_run.json``, metrics JSON)
    are written where the stage writes them, so ``evaluate`` attaches its test metrics to the
    imported run.
    """
    bundle = read_bundle(folder)  # all checks before Keras, TensorFlow or MLflow are loaded

    import keras

    from pipeline.tracking import mlflow_runs as tracking
    from pipeline.io import write_json
    from pipeline.training.train import HISTORY_FILE, MODEL_FILE, RUN_FILE

    manifest = bundle.manifest
    tracking.connect(manifest["experiment_name"])
    existing = tracking.find_run_by_tag("offline_bundle_id", bundle.bundle_id)
    if existing:
        record = {"run_id": existing, "tracking_uri": tracking.tracking_uri(), "already_imported": True}
    else:
        try:
            model = keras.saving.load_model(bundle.folder / MODEL, compile=False)
        except Exception as error:
            raise BundleError(f"bundle {bundle.folder}: {MODEL} does not load ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from error
        tags = {**manifest["tags"], "offline_bundle_id": bundle.bundle_id, "imported_by": socket.gethostname()}
        record = tracking.import_run(manifest, bundle.history, tags, model)
        record["tracking_uri"] = tracking.tracking_uri()
    if restore:
        outputs = manifest["outputs"]
        model_dir = Path(outputs["model_dir"])
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.folder / MODEL, model_dir / MODEL_FILE)
        if (bundle.folder / HISTORY).is_file():
            shutil.copyfile(bundle.folder / HISTORY, model_dir / HISTORY_FILE)
        if (bundle.folder / STAGE_METRICS).is_file():
            Path(outputs["metrics"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.folder / STAGE_METRICS, outputs["metrics"])
        write_json(model_dir / RUN_FILE, {k: v for k, v in record.items() if k != "already_imported"} | {"offline_bundle_id": bundle.bundle_id, "smoke_run": manifest["tags"].get("smoke_run") == "true"})
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking.bundle", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate bundles without logging them")
    check.add_argument("bundles", nargs="+")
    importer = commands.add_parser("import", help="log bundles to the MLflow server ($MLFLOW_TRACKING_URI)")
    importer.add_argument("bundles", nargs="+")
    importer.add_argument("--restore", action="store_true", help="also write the stage's outputs (model folder, metrics JSON) from the bundle")
    args = parser.parse_args(argv)
    for folder in args.bundles:
        if args.command == "check":
            bundle = read_bundle(folder)
            steps = {point.step for point in bundle.history}
            print(f"{folder}: ok ({bundle.manifest['run_name']}, {len(bundle.history)} metric values over {len(steps)} steps, "
                  f"device {bundle.manifest['tags'].get('device', '?')})")
            continue
        record = import_bundle(folder, restore=args.restore)
        if record.get("already_imported"):
            print(f"{folder}: already imported as run {record['run_id']} (nothing logged again)")
        else:
            print(f"{folder}: imported as run {record['run_id']}, registered {record['registered_model']} v{record['version']}"
                  f"{' (champion)' if record['champion'] else ''}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
