"""Team mode's cost, measured in one run against both set-ups on this machine.

- tracking: one training run's MLflow traffic, exactly as a training stage sends it (connect,
  params, per-epoch metrics, the model logged and registered with its aliases), to the embedded
  server (sqlite + folder) and to the team server (PostgreSQL + S3 through SeaweedFS), alternating;
- dvc: ``dvc push`` then ``dvc pull`` (into an empty cache) of one stage output, to a local
  folder remote and to the team's S3 bucket.

Training itself is left out: it costs the same on both. The servers are started in a temporary
folder on free ports and stopped at the end.

    python -m benchmarks.team --repeats 3 --megabytes 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, free_port

EPOCHS = 30


def _logged_run(uri: str, model, images, round_: int) -> float:
    """Seconds of one training run's tracking traffic to ``uri``."""
    from pipeline.tracking import mlflow_runs as tracking

    os.environ["MLFLOW_TRACKING_URI"] = uri
    recorder = tracking.MlflowRecorder()
    started = time.perf_counter()
    recorder.connect("bench-team")
    with recorder.run(f"bench-{round_}", {"stage": "bench"}):
        recorder.log_params({f"param_{index}": index for index in range(60)})
        for epoch in range(EPOCHS):
            recorder.log_metrics({name: 0.5 + epoch / 100 for name in (
                "loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1",
                "val_melanoma_recall", "epoch_seconds")}, step=epoch)
        tracking.log_and_register_model(model, images, "bench-team-cnn", score=0.5)
    return time.perf_counter() - started


def bench_tracking(repeats: int, embedded: str, team: str) -> dict:
    import numpy as np

    from pipeline.training.backend import configure
    from pipeline.config import CnnParams, load_params
    from pipeline.models.builders import build_cnn

    base, params = load_params(REPO_ROOT / "profiles" / "demo.yaml", "train_cnn_focal", CnnParams)
    configure(base.seed)
    model = build_cnn(params, base.classes)
    images = np.zeros((2, params.input_size, params.input_size, 3), np.float32)
    model_bytes = sum(int(np.prod(weight.shape)) for weight in model.weights) * 4
    _logged_run(embedded, model, images, -1)  # warm-up: experiment creation, first imports
    _logged_run(team, model, images, -1)
    seconds: dict[str, list[float]] = {"embedded": [], "team": []}
    for round_ in range(repeats):
        seconds["embedded"].append(_logged_run(embedded, model, images, round_))
        seconds["team"].append(_logged_run(team, model, images, round_))
    result = {name: round(statistics.median(values), 2) for name, values in seconds.items()}
    return {"epochs": EPOCHS, "model_megabytes": round(model_bytes / 1e6, 1), "embedded_seconds": result["embedded"],
            "team_seconds": result["team"], "team_vs_embedded": round(result["team"] / result["embedded"], 2)}


def _dvc(workspace: Path, *args: str, env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def bench_dvc(work: Path, megabytes: int, client_env: Path) -> dict:
    from pipeline.team.settings import client_values

    workspace = work / "dvc-workspace"
    workspace.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    _dvc(workspace, "init", "-q")
    output = workspace / "output"
    output.mkdir()
    for index in range(8):  # a directory output, like data/ingested
        (output / f"part-{index}.bin").write_bytes(os.urandom(megabytes * (1 << 20) // 8))
    _dvc(workspace, "add", "-q", "output")
    values = client_values(client_env)
    env = {**os.environ, **values}
    _dvc(workspace, "remote", "add", "local", str(work / "local-remote"))
    _dvc(workspace, "remote", "add", "team", values["TEAM_DVC_REMOTE_URL"])
    _dvc(workspace, "remote", "modify", "team", "endpointurl", values["TEAM_S3_ENDPOINT_URL"])
    figures = {"megabytes": megabytes}
    for remote in ("local", "team"):
        figures[f"{remote}_push_seconds"] = round(_dvc(workspace, "push", "-q", "-r", remote, env=env), 2)
        shutil.rmtree(workspace / ".dvc" / "cache")
        shutil.rmtree(output)
        figures[f"{remote}_pull_seconds"] = round(_dvc(workspace, "pull", "-q", "-r", remote, env=env), 2)
    figures["team_vs_local_push"] = round(figures["team_push_seconds"] / figures["local_push_seconds"], 2)
    figures["team_vs_local_pull"] = round(figures["team_pull_seconds"] / figures["local_pull_seconds"], 2)
    return figures


def bench_team(repeats: int, megabytes: int) -> dict:
    from pipeline.services import mlflow_server as server
    from pipeline.team import accounts, stack
    from pipeline.team.settings import TeamConfig, read_env

    work = Path(tempfile.mkdtemp(prefix="bench-team-"))
    work.chmod(0o711)  # PostgreSQL runs as `nobody` under root
    config = TeamConfig(folder=work / ".team", mlflow_port=free_port(), s3_port=free_port(), postgres_port=free_port())
    store = work / "embedded"
    try:
        stack.up(config)
        # The team server has accounts: the runs are logged as a member who may edit
        # (the embedded server ignores the credentials).
        member = read_env(accounts.add(config, "bench", "edit", REPO_ROOT / "params.yaml"))
        os.environ.update({key: member[key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
        embedded = server.start("127.0.0.1", free_port(), store)
        return {"tracking": bench_tracking(repeats, embedded, config.tracking_uri),
                "dvc": bench_dvc(work, megabytes, config.client_env)}
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        server.stop(store)
        stack.down(config)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=256)
    args = parser.parse_args(argv)
    print(json.dumps(bench_team(args.repeats, args.megabytes), indent=2))


if __name__ == "__main__":
    main()
