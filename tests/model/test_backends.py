"""Backend-neutral training and offline run bundles.

The JAX run goes through the real stage script in a subprocess (Keras picks its backend at
import), with ``tensorflow`` and ``mlflow`` made unimportable there: that proves the training
path needs neither when the backend is JAX and the run is recorded offline, as on a GPU node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.io import read_json
from pipeline.tracking.bundle import MANIFEST, MODEL, BundleError, import_bundle, read_bundle
from pipeline.tracking.recorder import RUN_FILE
from tests.conftest import free_port
from tests.model.conftest import train_stage_command

pytestmark = pytest.mark.slow

EPOCHS = 3

# Runs a script with the named top-level packages unimportable, as on a machine without them.
BLOCKED_RUNNER = textwrap.dedent(
    """
    import importlib.abc, runpy, sys
    blocked = set(sys.argv[1].split(","))
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    script = sys.argv[2]
    sys.argv = sys.argv[2:]
    runpy.run_path(script, run_name="__main__")
    """
)

PARAMS = (
    "base: {seed: 3, image_size: 32, experiment_name: tests-offline}\n"
    "ingest: {data_dir: %s}\n"
    "train_cnn_focal: {input_size: 32, filters: [16, 32], blocks_per_stage: 1, epochs: %d, batch_size: 32, "
    "learning_rate: 0.003, warmup_epochs: 1, random_flip: true, random_rotate90: true, registered_model_name: tests-offline-cnn}\n"
)


@pytest.fixture(scope="module")
def jax_offline_run(tiny_artifacts, tmp_path_factory, repo_root):
    """The CNN stage trained on the JAX backend, recorded offline, TensorFlow and mlflow blocked."""
    base, root = tiny_artifacts
    out = tmp_path_factory.mktemp("jax_run")
    params = out / "params.yaml"
    params.write_text(PARAMS % (root / "ham", EPOCHS))
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PIPELINE_OFFLINE_RUNS": str(out / "runs"),
        # Nothing listens there: an attempt to reach MLflow would fail the stage.
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "JAX_PLATFORMS": "cpu",
    }
    runner = out / "blocked_runner.py"
    runner.write_text(BLOCKED_RUNNER)
    result = subprocess.run(
        [sys.executable, str(runner), "tensorflow,mlflow", *train_stage_command(repo_root, root, out, params)],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo_root,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bundles = [path for path in (out / "runs").iterdir() if path.is_dir()]
    assert len(bundles) == 1, bundles
    return out, bundles[0], result.stdout


def test_jax_trains_the_stage_offline_without_tensorflow_or_mlflow(jax_offline_run):
    out, bundle_dir, stdout = jax_offline_run
    assert "on jax, cpu, float32; tracking: offline bundle" in stdout
    assert "recorded offline in" in stdout
    bundle = read_bundle(bundle_dir)
    manifest = bundle.manifest
    assert manifest["tags"]["keras_backend"] == "jax" and manifest["tags"]["device"] == "cpu"
    assert manifest["tags"]["trained_offline"] == "true"
    assert manifest["params"]["train_cnn_focal.epochs"] == str(EPOCHS)
    steps = sorted(point.step for point in bundle.history if point.key == "val_balanced_accuracy")
    assert steps == list(range(EPOCHS))
    # The stage's own outputs are written as usual, and the run record points at the bundle.
    assert read_json(out / "model" / RUN_FILE)["offline_bundle"] == str(bundle_dir)
    assert read_json(out / "train.json")["best_epoch"] >= 1
    assert (out / "model" / "model.keras").read_bytes() == (bundle_dir / MODEL).read_bytes()


def test_a_jax_trained_model_predicts_the_same_under_tensorflow(jax_offline_run, tiny_artifacts, repo_root):
    import keras

    from pipeline.data.datasets import load_split_images

    base, root = tiny_artifacts
    out, bundle_dir, _ = jax_offline_run
    images = (
        load_split_images(root / "ingested", root / "split", "val", base.classes, 32).images[:16].astype(np.float32)
    )
    np.save(out / "images.npy", images)
    script = (
        "import sys, numpy as np, keras; m = keras.saving.load_model(sys.argv[1]); "
        "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(out / "model" / "model.keras"),
            str(out / "images.npy"),
            str(out / "jax.npy"),
        ],
        check=True,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert keras.backend.backend() == "tensorflow"
    model = keras.saving.load_model(out / "model" / "model.keras")
    under_tf = model.predict(images, verbose=0)
    np.testing.assert_allclose(under_tf, np.load(out / "jax.npy"), atol=1e-5)
    assert np.allclose(under_tf.sum(axis=1), 1.0, atol=1e-5)


def test_a_bundle_imports_into_a_real_server_with_its_whole_history(jax_offline_run, tmp_path, monkeypatch):
    import mlflow

    _, original, _ = jax_offline_run
    bundle_dir = tmp_path / original.name
    shutil.copytree(original, bundle_dir)
    port = free_port()
    command = [sys.executable, "-m", "pipeline.local_servers.mlflow_server"]
    started = subprocess.run(
        command + ["start", "--port", str(port), "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr
    try:
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.chdir(tmp_path)  # --restore writes the stage outputs at their recorded paths
        manifest = read_json(bundle_dir / MANIFEST)
        manifest["outputs"] = {"model_dir": "restored/model", "metrics": "restored/train.json"}
        (bundle_dir / MANIFEST).write_text(json.dumps(manifest))
        record = import_bundle(bundle_dir, restore=True)
        client = mlflow.MlflowClient(uri)
        run = client.get_run(record["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == "cnn_focal-ham"
        assert [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs] == [
            ("ham", manifest["tags"]["data_hash"])
        ]
        assert run.data.tags["offline_bundle_id"] == manifest["bundle_id"]
        assert run.data.tags["keras_backend"] == "jax" and run.data.tags["trained_offline"] == "true"
        assert run.data.params["train_cnn_focal.epochs"] == str(EPOCHS)
        assert run.info.start_time == manifest["start_time_ms"] and run.info.end_time == manifest["end_time_ms"]
        history = client.get_metric_history(record["run_id"], "val_balanced_accuracy")
        assert sorted(point.step for point in history) == list(range(EPOCHS))
        assert run.data.metrics["best_val_balanced_accuracy"] == manifest["metrics"]["best_val_balanced_accuracy"]
        version = client.get_model_version_by_alias("tests-offline-cnn", "champion")
        assert version.run_id == record["run_id"]
        assert client.get_model_version_by_alias("tests-offline-cnn", "candidate").version == version.version
        restored = read_json(tmp_path / "restored" / "model" / RUN_FILE)
        assert restored["run_id"] == record["run_id"]
        assert (tmp_path / "restored" / "train.json").is_file()
        # A second import logs nothing again.
        again = import_bundle(bundle_dir)
        assert again["already_imported"] and again["run_id"] == record["run_id"]
        assert len(mlflow.search_runs(experiment_names=["tests-offline"], output_format="list")) == 1
        # The registered model loads in another process, from the server alone.
        loaded = subprocess.run(
            [
                sys.executable,
                "-c",
                "import mlflow; m = mlflow.keras.load_model('models:/tests-offline-cnn@champion'); print(m.output_shape)",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": uri},
            timeout=300,
        )
        assert loaded.returncode == 0 and "(None, 7)" in loaded.stdout, loaded.stderr[-2000:]
    finally:
        subprocess.run(
            command + ["stop", "--store", str(tmp_path / "store")], capture_output=True, text=True, timeout=60
        )


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate_model", "model.keras does not match its sha256"),
        ("drop_manifest", "is incomplete: no bundle.json"),
        ("partial", "is incomplete: its training run did not finish"),
        ("bad_metric_row", "metrics.csv does not match its sha256"),
        ("missing_key", "bundle.json lacks registered_model_name"),
        ("not_json", "bundle.json is not valid JSON"),
    ],
)
def test_a_damaged_bundle_is_refused_in_one_line(jax_offline_run, tmp_path, damage, message, repo_root):
    _, original, _ = jax_offline_run
    bundle_dir = tmp_path / original.name
    shutil.copytree(original, bundle_dir)
    if damage == "truncate_model":
        data = (bundle_dir / MODEL).read_bytes()
        (bundle_dir / MODEL).write_bytes(data[: len(data) // 2])
    elif damage == "drop_manifest":
        (bundle_dir / MANIFEST).unlink()
    elif damage == "partial":
        bundle_dir = bundle_dir.rename(tmp_path / (original.name + ".partial"))
    elif damage == "bad_metric_row":
        with open(bundle_dir / "metrics.csv", "a") as handle:
            handle.write("loss,not-a-number,1,2\n")
    elif damage == "missing_key":
        manifest = read_json(bundle_dir / MANIFEST)
        del manifest["registered_model_name"]
        (bundle_dir / MANIFEST).write_text(json.dumps(manifest))
    elif damage == "not_json":
        (bundle_dir / MANIFEST).write_text("{ cut here")
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_dir)
    # The import command says it in one line, exit 1, before contacting any server.
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tracking.bundle", "import", str(bundle_dir)],
        capture_output=True,
        text=True,
        cwd=repo_root,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: bundle ") and message in result.stderr
