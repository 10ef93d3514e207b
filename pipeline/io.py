"""Small file helpers shared by the stages."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


@contextmanager
def replacing(path: str | Path, suffix: str = ".partial") -> Iterator[Path]:
    """A temporary path beside ``path`` (ending ``suffix``, which some writers require) for the
    block to write; on success it replaces ``path`` in one step (``os.replace``), so a reader sees
    the old file or the whole new one, never a part. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (:func:`replacing`)."""
    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically, creating the parent folder."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_private(path: str | Path, data: str | bytes) -> None:
    """Write a file only its owner may read (mode 0600 from the first byte, so a secret is never
    readable by others), atomically (a reader never sees half), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.chmod(partial, 0o600)  # an earlier partial file may have had another mode
    os.replace(partial, path)


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_yaml(path: str | Path, what: str, error: type[PipelineError] = PipelineError) -> Any:
    """Read a YAML file; a missing or malformed one raises ``error`` with one line naming ``what``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as problem:
        raise error(f"{path}: cannot read {what} ({problem.strerror})") from problem
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({problem})".replace("\n", " ")) from problem


def pipeline_path(name: str, dvc_file: str | Path = "dvc.yaml") -> Path:
    """An artifact path from the ``paths`` vars of ``dvc.yaml``, where every path is written once."""
    import yaml

    from pipeline.errors import PipelineError

    try:
        variables = yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8"))["vars"]
        paths = next(entry["paths"] for entry in variables if isinstance(entry, dict) and "paths" in entry)
        return Path(paths[name])
    except (OSError, KeyError, StopIteration, TypeError) as error:
        raise PipelineError(f"{dvc_file}: no vars.paths.{name} ({error})") from error
