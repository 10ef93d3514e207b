"""A training stage run as a group of cooperating processes (one per host), on 127.0.0.1.

The real stage script runs on the JAX backend twice: as one process, and as two processes
joined through ``PIPELINE_COORDINATOR`` / ``PIPELINE_NUM_PROCESSES`` / ``PIPELINE_PROCESS_ID``,
each feeding its half of every global batch. The group must train the same model (every
epoch's mean training loss, every validation number and the saved model's predictions agree),
only process 0 may record the run and write outputs, and when a process dies mid-training the
survivor must stop in bounded time with one ``error:`` line and nothing recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.io import read_json
from pipeline.tracking.bundle import read_bundle
from tests.conftest import free_port
from tests.model.conftest import train_stage_command

pytestmark = pytest.mark.slow

PARAMS = (
    "base: {seed: 3, image_size: 32, experiment_name: tests-group}\n"
    "ingest: {data_dir: %s}\n"
    # 192 training images: six whole batches of 32, so one process and two see the same batches.
    "train_cnn_focal: {input_size: 32, filters: [16, 32], blocks_per_stage: 1, epochs: %d, batch_size: 32, max_train_images: 192, "
    "learning_rate: 0.003, warmup_epochs: 1, random_flip: true, random_rotate90: true, registered_model_name: tests-group-cnn}\n"
)


def stage(repo_root: Path, root: Path, out: Path, params: Path) -> list[str]:
    return [sys.executable, *train_stage_command(repo_root, root, out, params)]


def environment(out: Path, **group) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIPELINE_")}
    env.update(
        {
            "KERAS_BACKEND": "jax",
            "JAX_PLATFORMS": "cpu",
            "PYTHONUNBUFFERED": "1",
            # Nothing listens there: only an offline bundle can record the run.
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        }
    )
    env.update({key: str(value) for key, value in group.items()})
    return env


def start_group(repo_root, root, tmp_path, epochs: int, heartbeat: int | None = None):
    """Processes 0 and 1 of a group; process 0 records offline, process 1 has no recorder set."""
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS % (root / "ham", epochs))
    coordinator = f"127.0.0.1:{free_port()}"
    processes = []
    for rank in (0, 1):
        out = tmp_path / f"process{rank}"
        out.mkdir()
        env = environment(out, PIPELINE_COORDINATOR=coordinator, PIPELINE_NUM_PROCESSES=2, PIPELINE_PROCESS_ID=rank)
        if rank == 0:
            env["PIPELINE_OFFLINE_RUNS"] = str(out / "runs")
        if heartbeat:
            env["PIPELINE_HEARTBEAT_SECONDS"] = str(heartbeat)
        processes.append(
            subprocess.Popen(
                stage(repo_root, root, out, params),
                env=env,
                cwd=repo_root,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        )
    return processes


@pytest.fixture(scope="module")
def one_and_two(tiny_artifacts, tmp_path_factory, repo_root):
    _, root = tiny_artifacts
    single = tmp_path_factory.mktemp("one_process")
    params = single / "params.yaml"
    params.write_text(PARAMS % (root / "ham", 3))
    env = environment(single, PIPELINE_OFFLINE_RUNS=single / "runs")
    result = subprocess.run(
        stage(repo_root, root, single, params), env=env, cwd=repo_root, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    group_dir = tmp_path_factory.mktemp("two_processes")
    outputs = [process.communicate(timeout=600) for process in start_group(repo_root, root, group_dir, 3)]
    return single, group_dir, outputs


def test_two_processes_train_the_model_one_process_trains(one_and_two):
    single, group_dir, outputs = one_and_two
    (out0, err0), (out1, err1) = outputs
    assert "error:" not in err0 + err1, err0[-3000:] + err1[-3000:]
    assert "data-parallel over 2 devices, 2 processes; this is process 0 of 2" in out0
    assert "this is process 1 of 2" in out1 and "process 0 writes the outputs and logs the run" in out1
    one = pd.read_csv(single / "model" / "history.csv")
    two = pd.read_csv(group_dir / "process0" / "model" / "history.csv")
    assert len(one) == len(two) == 3
    # The first epoch agrees to float32 rounding; later ones drift by the order in which the
    # processes' gradients are summed (measured: 2e-4 of the loss by the third epoch), far
    # below what another batch composition or seed would move (0.05 and more).
    for column in ("loss", "val_loss"):
        np.testing.assert_allclose(two[column].iloc[0], one[column].iloc[0], rtol=1e-5, err_msg=column)
        np.testing.assert_allclose(two[column], one[column], rtol=2e-3, err_msg=column)
    for column in ("val_balanced_accuracy", "val_accuracy", "val_melanoma_recall"):
        np.testing.assert_allclose(two[column], one[column], atol=1e-9, err_msg=column)
    assert one["loss"].iloc[-1] < one["loss"].iloc[0]  # it trained: not two untrained networks compared
    assert (
        read_json(group_dir / "process0" / "train.json")["best_epoch"] == read_json(single / "train.json")["best_epoch"]
    )


def test_the_group_saves_the_same_model_and_only_process_0_writes(one_and_two, tiny_artifacts):
    import keras

    from pipeline.data.datasets import load_split_images

    base, root = tiny_artifacts
    single, group_dir, _ = one_and_two
    images = (
        load_split_images(root / "ingested", root / "split", "val", base.classes, 32).images[:16].astype(np.float32)
    )
    one = keras.saving.load_model(single / "model" / "model.keras").predict(images, verbose=0)
    two = keras.saving.load_model(group_dir / "process0" / "model" / "model.keras").predict(images, verbose=0)
    np.testing.assert_allclose(two, one, atol=2e-3)
    bundles = list((group_dir / "process0" / "runs").iterdir())
    assert len(bundles) == 1 and read_bundle(bundles[0]).manifest["tags"]["device"] == "cpu x 2, 2 processes"
    # Process 1 wrote none of the stage's outputs, no checkpoint, no run.
    assert sorted(path.name for path in (group_dir / "process1").iterdir()) == []


def test_a_dead_process_stops_the_survivor_with_one_error_line(tiny_artifacts, tmp_path, repo_root):
    _, root = tiny_artifacts
    survivor, victim = start_group(repo_root, root, tmp_path, epochs=500, heartbeat=5)
    try:
        for line in survivor.stdout:  # wait until the group is training
            if line.startswith("epoch 1:"):
                break
        os.killpg(victim.pid, signal.SIGKILL)  # the host is gone: the process and its children
        killed = time.monotonic()
        out, err = survivor.communicate(timeout=120)
        stopped_after = time.monotonic() - killed
    finally:
        for process in (survivor, victim):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert survivor.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "process 0 of 2" in errors[0] and "nothing was registered" in errors[0], err[
        -3000:
    ]
    assert "Traceback" not in err and "stack trace" not in err
    assert stopped_after < 60  # a heartbeat of 5 s, not a hang
    runs = tmp_path / "process0" / "runs"
    assert not [path for path in runs.iterdir() if not path.name.endswith(".partial")] if runs.exists() else True
    assert not (tmp_path / "process0" / "model").exists()
