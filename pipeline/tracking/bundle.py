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
import hashlib
import json
import os
import re
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, run_cli
from pipeline.io import read_yaml
from pipeline.tracking.offline import (
    FORMAT,
    HISTORY,
    MANIFEST,
    METRICS,
    MODEL,
    PARTIAL,
    REQUIRED_KEYS,
    STAGE_METRICS,
    VERSION,
)
from pipeline.tracking.recorder import HISTORY_FILE, MODEL_FILE, OFFLINE_ENV, RUN_FILE


class BundleError(PipelineError):
    """An offline bundle is missing, incomplete, corrupt or unsafe."""


#: The only files a bundle holds (plain names in its folder; anything else is never read or copied).
BUNDLE_FILES = (MODEL, METRICS, HISTORY, STAGE_METRICS)
#: Where ``--restore`` writes each of them in the stage's model folder (the metrics JSON: its own path).
RESTORED_NAMES = {MODEL: MODEL_FILE, HISTORY: HISTORY_FILE}
#: ``${paths.NAME}`` in ``dvc.yaml``.
_PATH_VAR = re.compile(r"\$\{paths\.([A-Za-z0-9_]+)\}")


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
    #: Where ``--restore`` writes: ``model_dir`` and ``metrics``, inside the project.
    outputs: dict[str, Path]

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]


def read_bundle(folder: str | Path, root: str | Path | None = None) -> Bundle:
    """Validate a bundle completely (manifest, file names, every file's checksum, the metric
    history, where ``--restore`` would write) before anything is logged; raise
    :class:`BundleError` with one line saying what is wrong.

    ``root`` is the project (default: the working directory, where ``make`` runs). Its
    ``dvc.yaml``, when there is one, says where the stage's outputs go; without one the
    manifest's ``outputs`` must stay inside ``root``. No name may leave the bundle, and a bundle
    holding a symbolic link is refused whether the manifest lists it or not."""
    folder = Path(folder)
    root = Path.cwd() if root is None else Path(root)
    if folder.name.endswith(PARTIAL) or (folder / "state.json").is_file():
        raise BundleError(
            f"bundle {folder} is incomplete: its training run did not finish (no {MANIFEST}); rerun the stage"
        )
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} not found (expected a folder written under ${OFFLINE_ENV})")
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise BundleError(f"bundle {folder} is incomplete: no {MANIFEST}")
    _refuse_links(folder)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"bundle {folder}: {MANIFEST} is not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {folder}: {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(
            f"bundle {folder}: format version {manifest.get('version')!r}, this pipeline reads version {VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"bundle {folder}: {MANIFEST} lacks {', '.join(missing)}")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"bundle {folder}: {MANIFEST}'s files is not a mapping of names to sha256 digests")
    for name in manifest["files"]:
        _check_name(folder, name)
    for name in (MODEL, METRICS):
        if name not in manifest["files"]:
            raise BundleError(f"bundle {folder}: {MANIFEST} lists no {name}")
    for name, expected in manifest["files"].items():
        if not (folder / name).is_file():
            raise BundleError(f"bundle {folder}: {name} is missing")
        _copy_verified(folder, name, expected, None)
    outputs = _restore_targets(folder, manifest, root)
    return Bundle(folder, manifest, _read_history(folder / METRICS), outputs)


def _refuse_links(folder: Path) -> None:
    """No symbolic link anywhere in the bundle (listed or not, file or folder)."""
    for where, folders, files in os.walk(folder):
        for name in (*folders, *files):
            path = Path(where) / name
            if path.is_symlink():
                raise BundleError(
                    f"bundle {folder}: {path.relative_to(folder)} is a symbolic link (a bundle holds regular files only)"
                )


def _check_name(folder: Path, name: Any) -> None:
    """A manifest's file name: one of :data:`BUNDLE_FILES`, never a path (``..``, ``/``, absolute)."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        kind = "not a file name"
    elif name.startswith(("/", "\\")):
        kind = "an absolute path"
    elif any(mark in name for mark in ("/", "\\", "\0")):
        kind = "a path"
    else:
        kind = None
    if kind:
        raise BundleError(
            f"bundle {folder}: {MANIFEST} lists {name!r}, {kind}: a bundle's files are plain names inside it"
        )
    if name not in BUNDLE_FILES:
        raise BundleError(f"bundle {folder}: {MANIFEST} lists {name!r}, not a bundle file ({', '.join(BUNDLE_FILES)})")


def _copy_verified(folder: Path, name: str, expected: Any, destination: Path | None) -> None:
    """Hash ``folder/name`` (never through a symbolic link) against ``expected``; with a
    ``destination``, copy the very bytes hashed there (a temporary file beside it, renamed over it
    only when the digest matches, so a link at the destination is replaced, never written through)."""
    try:
        handle = os.open(folder / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise BundleError(f"bundle {folder}: cannot read {name} ({error.strerror}; a symbolic link?)") from error
    partial = None
    try:
        with os.fdopen(handle, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise BundleError(f"bundle {folder}: {name} is not a regular file")
            digest = hashlib.sha256()
            out = None
            if destination is not None:
                partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
                out = open(partial, "wb")
            try:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    if out is not None:
                        out.write(block)
            finally:
                if out is not None:
                    out.close()
        if digest.hexdigest() != expected:
            raise BundleError(
                f"bundle {folder}: {name} does not match its sha256 in {MANIFEST} (corrupt or truncated copy)"
            )
        if partial is not None:
            os.replace(partial, destination)
            partial = None
    except OSError as error:
        raise BundleError(
            f"bundle {folder}: cannot copy {name} to {destination} ({error.strerror or error})"
        ) from error
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


def _restore_targets(folder: Path, manifest: dict[str, Any], root: Path) -> dict[str, Path]:
    """Where ``--restore`` writes: the stage's ``outs`` and ``metrics`` in ``root/dvc.yaml``
    (the manifest's ``outputs`` are ignored then), else the manifest's ``outputs``; either way
    relative paths that resolve inside ``root``."""
    dvc_file = root / "dvc.yaml"
    if dvc_file.is_file():
        stage = manifest["tags"].get("stage") if isinstance(manifest["tags"], dict) else None
        wanted = _stage_outputs(dvc_file, stage)
        if wanted is None:
            raise BundleError(
                f"bundle {folder}: stage {stage!r} (its tag) is not a training stage of {dvc_file} "
                "with outs and metrics: nothing to restore to"
            )
    else:
        outputs = manifest["outputs"]
        wanted = {key: outputs.get(key) if isinstance(outputs, dict) else None for key in ("model_dir", "metrics")}
    base = root.resolve()
    targets = {}
    for key, raw in wanted.items():
        if not isinstance(raw, str) or not raw or Path(raw).is_absolute() or ".." in Path(raw).parts:
            raise BundleError(
                f"bundle {folder}: output {key} {raw!r} is outside the project {base} "
                "(outputs are relative paths without '..')"
            )
        resolved = (base / raw).resolve()
        if not resolved.is_relative_to(base):
            raise BundleError(
                f"bundle {folder}: output {key} {raw!r} resolves to {resolved}, outside the project {base} "
                "(a symbolic link on the way)"
            )
        targets[key] = resolved
    return targets


def _stage_outputs(dvc_file: Path, stage: Any) -> dict[str, str] | None:
    """A training stage's first ``outs`` (the model folder) and ``metrics`` entry, ``${paths.X}`` resolved."""
    pipeline = read_yaml(dvc_file, "the pipeline", BundleError)
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    entry = (
        stages.get(stage)
        if isinstance(stages, dict) and isinstance(stage, str) and stage.startswith("train_")
        else None
    )
    if not isinstance(entry, dict) or not entry.get("outs") or not entry.get("metrics"):
        return None
    paths = next((item["paths"] for item in pipeline.get("vars", []) if isinstance(item, dict) and "paths" in item), {})

    def path_of(item: Any) -> str:
        raw = next(iter(item)) if isinstance(item, dict) else item
        return _PATH_VAR.sub(lambda match: str(paths.get(match.group(1), match.group(0))), str(raw))

    return {"model_dir": path_of(entry["outs"][0]), "metrics": path_of(entry["metrics"][0])}


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

    from pipeline.io import write_json
    from pipeline.tracking import mlflow_runs as tracking

    manifest = bundle.manifest
    tracking.connect(manifest["experiment_name"])
    existing = tracking.find_run_by_tag("offline_bundle_id", bundle.bundle_id)
    if existing:
        record = {"run_id": existing, "tracking_uri": tracking.tracking_uri(), "already_imported": True}
    else:
        import keras

        try:
            model = keras.saving.load_model(bundle.folder / MODEL, compile=False, safe_mode=True)
        except Exception as error:
            raise BundleError(
                f"bundle {bundle.folder}: {MODEL} does not load ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
            ) from error
        tags = {**manifest["tags"], "offline_bundle_id": bundle.bundle_id, "imported_by": socket.gethostname()}
        record = tracking.import_run(manifest, bundle.history, tags, model)
        record["tracking_uri"] = tracking.tracking_uri()
    if restore:
        model_dir = bundle.outputs["model_dir"]
        for name, expected in manifest["files"].items():  # listed files only, each hashed as it is copied
            destination = (
                bundle.outputs["metrics"]
                if name == STAGE_METRICS
                else model_dir / RESTORED_NAMES[name]
                if name in RESTORED_NAMES
                else None
            )
            if destination is not None:
                destination.parent.mkdir(parents=True, exist_ok=True)
                _copy_verified(bundle.folder, name, expected, destination)
        write_json(
            model_dir / RUN_FILE,
            {k: v for k, v in record.items() if k != "already_imported"}
            | {"offline_bundle_id": bundle.bundle_id, "smoke_run": manifest["tags"].get("smoke_run") == "true"},
        )
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking.bundle", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate bundles without logging them")
    check.add_argument("bundles", nargs="+")
    importer = commands.add_parser("import", help="log bundles to the MLflow server ($MLFLOW_TRACKING_URI)")
    importer.add_argument("bundles", nargs="+")
    importer.add_argument(
        "--restore",
        action="store_true",
        help="also write the stage's outputs (model folder, metrics JSON) from the bundle",
    )
    args = parser.parse_args(argv)
    for folder in args.bundles:
        if args.command == "check":
            bundle = read_bundle(folder)
            steps = {point.step for point in bundle.history}
            print(
                f"{folder}: ok ({bundle.manifest['run_name']}, {len(bundle.history)} metric values over {len(steps)} steps, "
                f"device {bundle.manifest['tags'].get('device', '?')})"
            )
            continue
        record = import_bundle(folder, restore=args.restore)
        if record.get("already_imported"):
            print(f"{folder}: already imported as run {record['run_id']} (nothing logged again)")
        else:
            print(
                f"{folder}: imported as run {record['run_id']}, registered {record['registered_model']} v{record['version']}"
                f"{' (champion)' if record['champion'] else ''}"
            )


if __name__ == "__main__":
    sys.exit(run_cli(main))
