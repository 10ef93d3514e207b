"""Data parallelism over several devices of one host, tested on the CPU with simulated devices.

JAX gets two CPU devices from ``XLA_FLAGS=--xla_force_host_platform_device_count=2``,
TensorFlow two logical CPU devices; each run is a subprocess because both choices are made at
the backend's import. The pipeline's own device set-up (``backend.configure``), input pipeline,
CNN builder and model saving train the tiny CNN for two epochs on one and on two devices with
the same global batch: the per-step losses and the saved model's predictions must agree, i.e.
several devices change the wall clock, not the model.

"Agree" is measured against what training does: two devices sum the gradients in another
order, and float32 rounding then drifts by an amount that depends on the CPU's kernels (up to
3.5e-5 in a probability on an AVX-512 AMD EPYC, 1e-7 on an Intel Xeon). A real fault (the
gradients not averaged over the replicas, a replica's batch dropped) moves the model by about
as much as training itself does; the allowance is 1% of that movement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    devices, backend_name, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if backend_name == "tensorflow" and devices > 1:
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    import keras, numpy as np
    from pipeline.config import CnnParams
    from pipeline.data.datasets import make_dataset
    from pipeline.models.builders import build_cnn
    from pipeline.training import backend
    from pipeline.training.export import save_for_inference
    from pipeline.training.recipe import build_loss

    found = backend.configure(3)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (100, 32, 32, 3)).astype("float32")  # batches of 32, 32, 32, 4
    labels = rng.integers(0, 7, 100)
    params = CnnParams(input_size=32, filters=(16, 32), blocks_per_stage=1, epochs=2, batch_size=32, learning_rate=0.003)
    if backend_name == "jax":
        # The training input as the stage makes it: reshuffled each epoch, flipped and rotated.
        data = make_dataset(images, labels, 7, 32, training=True, seed=3, random_flip=True, random_rotate90=True,
                            multiple_of=found.replicas)
    else:
        # A fixed order: TensorFlow's strategy rebuilds a tf.data pipeline, which then draws
        # another shuffle and augmentation than on one device (see docs/gpu.md).
        data = make_dataset(images, labels, 7, 32)
    with found.scope():
        model = found.adapt(build_cnn(params, tuple("abcdefg"), 32))
        model.compile(optimizer=keras.optimizers.Adam(0.003), loss=build_loss(params, None))
    initial = model.predict(images[:12], verbose=0)  # (on two devices a batch splits evenly)
    losses = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(logs["loss"]))

    model.fit(data, epochs=2, verbose=0, shuffle=False, callbacks=[Steps()])
    save_for_inference(model, os.path.join(out, "model.keras"))
    if backend_name == "jax":
        keras.distribution.set_distribution(None)  # evaluate and predict load it on one device
    saved = keras.saving.load_model(os.path.join(out, "model.keras"))
    predictions = saved.predict(images[:13], verbose=0)
    json.dump({"label": found.label, "notes": found.notes, "losses": losses, "predictions": predictions.tolist(),
               "initial": initial.tolist()},
              open(os.path.join(out, "result.json"), "w"))
    """
)


def train(tmp_path, repo_root, backend_name: str, devices: int) -> dict:
    out = tmp_path / f"{backend_name}-{devices}"
    out.mkdir()
    script = tmp_path / "train_on_devices.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "KERAS_BACKEND": backend_name,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": str(repo_root),
    }
    result = subprocess.run(
        [sys.executable, str(script), str(devices), backend_name, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("backend_name", ["jax", "tensorflow"])
def test_two_devices_train_the_same_model_as_one(tmp_path, repo_root, backend_name):
    one = train(tmp_path, repo_root, backend_name, 1)
    two = train(tmp_path, repo_root, backend_name, 2)
    assert one["label"] == "cpu" and not one["notes"]
    assert two["label"] == "cpu x 2" and "data-parallel over 2 devices" in two["notes"][0]
    # 4 steps an epoch on one device; on two the last batch (4 images) still splits evenly.
    assert len(one["losses"]) == len(two["losses"]) == 8
    # Training did move the model: the comparison is not between two untrained networks.
    assert one["losses"][-1] < one["losses"][0]
    moved = np.abs(np.array(one["predictions"])[:12] - np.array(one["initial"])).max()
    np.testing.assert_allclose(two["initial"], one["initial"], atol=1e-6)  # the same start
    np.testing.assert_allclose(two["losses"], one["losses"], atol=0.01 * (one["losses"][0] - min(one["losses"])))
    np.testing.assert_allclose(two["predictions"], one["predictions"], atol=0.01 * moved)
