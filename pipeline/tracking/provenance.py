"""Where a run came from: the git commit of the code, and fingerprints of its data and params.

Both recorders and evaluation tag runs with these; training also uses the fingerprints to
decide whether an interrupted run may resume (same data, same params).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any


def git_commit() -> str:
    """The current git commit (with ``-dirty`` when the tree has changes), or ``unknown``.

    ``$PIPELINE_GIT_COMMIT`` gives it where the code runs from a copy without ``.git`` (a GPU node).
    """
    if os.environ.get("PIPELINE_GIT_COMMIT"):
        return os.environ["PIPELINE_GIT_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


def fingerprint(*parts: Any, files: tuple[str | Path, ...] = ()) -> str:
    """A short sha256 of JSON-serialisable ``parts`` and the bytes of ``files``."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
