"""Team mode's cost, measured in one run against every set-up on this machine.

- tracking: one training run's MLflow traffic, exactly as a training stage sends it (connect,
  params, per-epoch metrics, the model logged and registered with its aliases), to the embedded
  server (sqlite + folder), to the team server (PostgreSQL + S3 through SeaweedFS, accounts) and
  to the same team servers over TLS (``--tls``, as ``TEAM_HOST=<address>`` serves them),
  alternating;
- dvc: ``dvc push`` then ``dvc pull`` (into an empty cache) of one stage output, to a local
  folder remote and to each team set-up's S3 bucket.

Training itself is left out: it costs the same on all. The servers are started in a temporary
folder on free ports (all on 127.0.0.1: the TLS figures are the encryption's cost, not a
network's) and stopped at the end.

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
from contextlib import chdir
from pathlib import Path
from unittest.mock import patch

from benchmarks.common import REPO_ROOT, free_port
from pipeline import profiles

EPOCHS = 30


def _logged_run(uri: str, credentials: dict[str, str], model, images, round_: int) -> float:
    """Seconds of one training run's tracking traffic to ``uri``, sent with ``credentials``."""
    from pipeline.tracking import mlflow_runs as tracking

    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.update(credentials)
    recorder = tracking.MlflowRecorder()
    started = time.perf_counter()
    recorder.connect("bench-team")
    with recorder.run(f"bench-{round_}", {"stage": "bench"}):
        recorder.log_params({f"param_{index}": index for index in range(60)})
        for epoch in range(EPOCHS):
            recorder.log_metrics(
                {
                    name: 0.5 + epoch / 100
                    for name in (
                        "loss",
                        "accuracy",
                        "val_loss",
                        "val_accuracy",
                        "val_balanced_accuracy",
                        "val_macro_f1",
                        "val_melanoma_recall",
                        "epoch_seconds",
                    )
                },
                step=epoch,
            )
        tracking.log_and_register_model(model, images, "bench-team-cnn", score=0.5)
    return time.perf_counter() - started


def bench_tracking(repeats: int, servers: dict[str, tuple[str, dict[str, str]]]) -> dict:
    """``servers``: name -> (tracking URI, the MLflow settings to send), the first the baseline."""
    import numpy as np

    from pipeline.config import CnnParams, load_params
    from pipeline.models.builders import build_cnn
    from pipeline.training.backend import configure

    with tempfile.TemporaryDirectory() as scratch, chdir(REPO_ROOT):
        base, params = load_params(profiles.write("demo", Path(scratch) / "params.yaml"), "train_cnn_focal", CnnParams)
    configure(base.seed)
    model = build_cnn(params, base.classes)
    images = np.zeros((2, params.input_size, params.input_size, 3), np.float32)
    model_bytes = sum(int(np.prod(weight.shape)) for weight in model.weights) * 4
    for uri, credentials in servers.values():  # warm-up: experiment creation, first imports
        _logged_run(uri, credentials, model, images, -1)
    seconds: dict[str, list[float]] = {name: [] for name in servers}
    for round_ in range(repeats):
        for name, (uri, credentials) in servers.items():
            seconds[name].append(_logged_run(uri, credentials, model, images, round_))
    result = {name: round(statistics.median(values), 2) for name, values in seconds.items()}
    baseline = next(iter(servers))
    figures = {"epochs": EPOCHS, "model_megabytes": round(model_bytes / 1e6, 1)}
    figures.update({f"{name}_seconds": value for name, value in result.items()})
    figures.update(
        {
            f"{name}_vs_{baseline}": round(value / result[baseline], 2)
            for name, value in result.items()
            if name != baseline
        }
    )
    return figures


def _dvc(workspace: Path, *args: str, env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def bench_dvc(work: Path, megabytes: int, client_envs: dict[str, Path]) -> dict:
    """Push and pull to a local folder remote and to each team bucket (``client_envs``: name ->
    that set-up's client env file)."""
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
    _dvc(workspace, "remote", "add", "local", str(work / "local-remote"))
    environments = {"local": dict(os.environ)}
    for name, path in client_envs.items():
        values = client_values(path)
        environments[name] = {**os.environ, **values}
        _dvc(workspace, "remote", "add", name, values["TEAM_DVC_REMOTE_URL"])
        _dvc(workspace, "remote", "modify", name, "endpointurl", values["TEAM_S3_ENDPOINT_URL"])
    figures = {"megabytes": megabytes}
    for remote, env in environments.items():
        figures[f"{remote}_push_seconds"] = round(_dvc(workspace, "push", "-q", "-r", remote, env=env), 2)
        shutil.rmtree(workspace / ".dvc" / "cache")
        shutil.rmtree(output)
        figures[f"{remote}_pull_seconds"] = round(_dvc(workspace, "pull", "-q", "-r", remote, env=env), 2)
    for remote in client_envs:
        for way in ("push", "pull"):
            figures[f"{remote}_vs_local_{way}"] = round(
                figures[f"{remote}_{way}_seconds"] / figures[f"local_{way}_seconds"], 2
            )
    return figures


def bench_team(repeats: int, megabytes: int) -> dict:
    from pipeline.local_servers import mlflow_server as server
    from pipeline.team import accounts, stack
    from pipeline.team.settings import TeamConfig, read_env

    work = Path(tempfile.mkdtemp(prefix="bench-team-"))
    work.chmod(0o711)  # PostgreSQL runs as `nobody` under root
    configs = {
        name: TeamConfig(
            folder=work / name / ".team",
            mlflow_port=free_port(),
            s3_port=free_port(),
            postgres_port=free_port(),
            tls=name == "team_tls",
        )
        for name in ("team", "team_tls")
    }
    store = work / "embedded"
    # The MLflow settings the runs below set are this process's only until the end.
    keep = patch.dict(os.environ)
    keep.start()
    try:
        servers = {"embedded": (server.start("127.0.0.1", free_port(), store), {})}
        for name, config in configs.items():
            (work / name).mkdir(mode=0o711)
            stack.up(config)
            # The team servers have accounts: the runs are logged as a member who may edit
            # (the embedded server ignores the credentials).
            member = read_env(accounts.add(config, "bench", "edit", REPO_ROOT / "params.yaml"))
            servers[name] = (
                config.tracking_uri,
                {key: member[key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")},
            )
        # Only the TLS server's requests use it; the others are plain HTTP.
        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(configs["team_tls"].trusted_ca)
        return {
            "tracking": bench_tracking(repeats, servers),
            "dvc": bench_dvc(work, megabytes, {name: config.client_env for name, config in configs.items()}),
        }
    finally:
        keep.stop()
        server.stop(store)
        for config in configs.values():
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
