"""Helpers of the team tests: the environment of a child command, git, a copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def child_env(**extra: str) -> dict[str, str]:
    """This interpreter's folder first on PATH (stage commands call `python`), the repo importable."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        **extra,
    }


def git(workspace: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def copy_project(workspace: Path) -> Path:
    """The project's tracked files in ``workspace``, committed in a repository of its own."""
    for name in git(REPO_ROOT, "ls-files", "-z").split("\0"):
        if name and (REPO_ROOT / name).is_file():
            (workspace / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, workspace / name)
    git(workspace, "init", "-q")
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "copy")
    return workspace
