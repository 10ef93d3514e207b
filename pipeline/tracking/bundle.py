"""Offline run bundles: check them and log them to MLflow as normal runs.

A bundle is what :class:`pipeline.tracking.offline.OfflineRecorder` writes on a machine without
a route to the tracking server (its docstring has the layout). ``python -m
pipeline.tracking.bundle check|import <bundle>`` (``make import-run BUNDLE=...``) validates it
completely, then logs it to the server as a normal run of the same experiment: same per-epoch
history, model registered with the usual aliases, tags saying where and on what device it
trained. This is MLflow's counterpart of other trackers' "offline + sync".
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, run_cli
from pipeline.io import sha256_of
from pipeline.tracking.offline import (
    FORMAT, HISTORY, MANIFEST, METRICS, MODEL, PARTIAL, REQUIRED_KEYS, STAGE_METRICS, VERSION,
)
from pipeline.tracking.recorder import HISTORY_FILE, MODEL_FILE, OFFLINE_ENV, RUN_FILE


class BundleError(PipelineError):
    """An offline bundle is missing, incomplete or corrupt."""




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

    from pipeline.io import write_json
    from pipeline.tracking import mlflow_runs as tracking

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
