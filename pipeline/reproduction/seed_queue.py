"""Seed runs through DVC's experiment queue: one ``dvc exp run --queue`` per training seed, one
worker, and waiting until every queued experiment has finished."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError

#: The approaches whose training seed a seed run varies, with their training stage.
SEEDED_STAGES = {"cnn_focal": "train_cnn_focal", "effnet_lite0": "train_effnet_lite0"}


def queue_commands(data_dir: str, seeds: Sequence[int], approaches: Sequence[str], profile: str) -> list[list[str]]:
    """One ``dvc exp run --queue`` per seed, setting the profile, the data folder and each approach's seed."""
    unknown = [name for name in approaches if name not in SEEDED_STAGES]
    if unknown:
        raise PipelineError(f"no training seed for approach '{unknown[0]}' (known: {', '.join(SEEDED_STAGES)})")
    if len(set(seeds)) != len(seeds):
        raise PipelineError(f"seeds must differ, got {list(seeds)}")
    # A queued experiment runs in a temporary copy of the repository (.dvc/tmp/exps): a folder
    # outside the repository is named by its absolute path, one inside it relative to the root.
    resolved = Path(data_dir).resolve()
    data_dir = str(
        resolved.relative_to(Path.cwd().resolve()) if resolved.is_relative_to(Path.cwd().resolve()) else resolved
    )
    commands = []
    for seed in seeds:
        command = [
            "dvc",
            "exp",
            "run",
            "--queue",
            "--set-param",
            f"profile={profile}",
            "--set-param",
            f"ingest.data_dir={data_dir}",
        ]
        for name in approaches:
            command += ["--set-param", f"{SEEDED_STAGES[name]}.seed={seed}"]
        commands.append(command)
    return commands


def _dvc(args: list[str], capture: bool = False) -> str:
    import os

    command = [sys.executable, "-m", *args]
    print("+ " + " ".join(args), flush=True)
    # `dvc queue start` starts its worker as `dvc` from PATH: this environment's, also when the
    # module runs without the venv activated (`make seeds` puts it first anyway).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    result = subprocess.run(command, capture_output=capture, text=True, env={**os.environ, "PATH": path})
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise PipelineError(f"`{' '.join(args)}` failed" + (f": {detail[0]}" if detail else " (see its output above)"))
    return result.stdout if capture else ""


def queue_states(status: str, names: Sequence[str]) -> dict[str, str]:
    """The state (Queued, Running, Success, Failed) of each named experiment in ``dvc queue status``."""
    states = {}
    for line in status.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in names:
            states[words[1]] = words[-1]
    return states


def wait_for_queue(names: Sequence[str], poll_seconds: float = 30.0) -> None:
    """Block until the named experiments have finished; fail if one failed."""

    while True:
        states = queue_states(_dvc_quiet(["dvc", "queue", "status"]), names)
        if all(states.get(name) in ("Success", "Failed") for name in names):
            break
        time.sleep(poll_seconds)
    failed = [name for name in names if states.get(name) == "Failed"]
    if failed:
        raise PipelineError(f"seed run {failed[0]} failed: `dvc queue logs {failed[0]}` shows why")
    print(f"{len(names)} seed runs finished: " + ", ".join(names), flush=True)


def _dvc_quiet(args: list[str]) -> str:
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    return result.stdout
