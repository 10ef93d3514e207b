"""Mixed precision (Keras' ``mixed_bfloat16``, the GPU policy on JAX; issue 35): the real models
train with finite losses and save float32 models, and the focal loss is computed in float32
whatever the dtype of the predictions or of Keras' ``floatx``.

Training runs in this process's backend, and once more on JAX in a subprocess (Keras picks its
backend at import) when this process is not JAX already. The global policy is always put back
to float32: other tests share the process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import HAM10000_CLASSES, LiteParams
from pipeline.models.builders import METADATA_PREFIX
from tests.model.conftest import tiny_cnn

TINY_LITE0 = LiteParams(
    input_size=32,
    weights="none",
    epochs=1,
    learning_rate=0.001,
    batch_size=16,
    lr_schedule="cosine",
    warmup_epochs=0,
    weight_decay=0.0001,
    focal_gamma=0.0,
    class_alpha="sqrt_inverse_frequency",
    dropout=0.2,
    registered_model_name="tests-lite0",
)
STEPS = 4
#: The layers that must compute in float32 under a mixed policy: the head and the output.
FLOAT32_LAYERS = ("logits", "probabilities")


@pytest.fixture
def mixed_bfloat16():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def train_mixed(kind: str, folder: str) -> dict:
    """Train the tiny ``kind`` model (``cnn`` or ``lite0``) for :data:`STEPS` steps under
    ``mixed_bfloat16`` with the stages' own builders, loss, optimizer and input pipeline, save it
    for inference into ``folder``, reload it, and say what happened (JSON-able)."""
    import keras

    from pipeline.data.datasets import make_dataset
    from pipeline.models.builders import build_cnn, build_effnet_lite
    from pipeline.training.export import save_for_inference
    from pipeline.training.recipe import build_loss, build_optimizer, class_alpha

    rng = np.random.default_rng(0)
    params = tiny_cnn(batch_size=16) if kind == "cnn" else TINY_LITE0
    if kind == "lite0" and keras.backend.backend() == "tensorflow":
        # The stage's own run_eagerly option: tracing Lite0's training step costs TensorFlow ~20 s.
        params = dataclasses.replace(params, run_eagerly=True)
    count = STEPS * params.batch_size
    labels = np.arange(count, dtype=np.int32) % 7
    images = np.clip(rng.normal(40 + labels[:, None, None, None] * 25, 30, (count, 32, 32, 3)), 0, 255).astype(np.uint8)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(params.seed)
        if kind == "cnn":
            model = build_cnn(params, HAM10000_CLASSES, 32)
        else:
            model, _backbone = build_effnet_lite("lite0", params, HAM10000_CLASSES, 32)
        alpha = class_alpha(np.bincount(labels, minlength=7), params.class_alpha)
        model.compile(
            optimizer=build_optimizer(params, params.learning_rate, STEPS, 1),
            loss=build_loss(params, alpha),
            run_eagerly=params.run_eagerly,
        )
        losses: list[float] = []

        class EveryStep(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                losses.append(float(logs["loss"]))

        model.fit(
            make_dataset(images, labels, 7, params.batch_size, training=True, seed=1, random_flip=True),
            epochs=1,
            verbose=0,
            callbacks=[EveryStep()],
        )
        mixed_predictions = np.asarray(model.predict(images[:8].astype(np.float32), verbose=0))
        policies = {layer.name: layer.dtype_policy.name for layer in model.layers}
        body = (
            model.get_layer("stem_conv")
            if kind == "cnn"
            else model.get_layer("efficientnet_lite0").get_layer("stem_conv")
        )
        save_for_inference(model, Path(folder) / "model.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = keras.saving.load_model(Path(folder) / "model.keras")
    predictions = loaded.predict(images[:8].astype(np.float32), verbose=0)
    return {
        "backend": keras.backend.backend(),
        "losses": losses,
        "policies": policies,
        "body_policy": body.dtype_policy.name,
        "output_dtype": str(model.outputs[0].dtype),
        "mixed_predictions_dtype": str(mixed_predictions.dtype),
        "saved_policies": sorted({layer.dtype_policy.name for layer in loaded.layers}),
        "predictions_dtype": str(predictions.dtype),
        "sums": np.asarray(predictions, np.float64).sum(axis=1).tolist(),
        "largest_difference": float(
            np.abs(np.asarray(predictions, np.float32) - mixed_predictions.astype(np.float32)).max()
        ),
    }


def check_trained(result: dict, kind: str) -> None:
    assert len(result["losses"]) == STEPS and np.all(np.isfinite(result["losses"])), result["losses"]
    assert result["body_policy"] == "mixed_bfloat16"  # the body does compute in bfloat16
    for name in FLOAT32_LAYERS:
        assert result["policies"][name] == "float32", name
    assert [policy for name, policy in result["policies"].items() if name.startswith(METADATA_PREFIX)] == ["float32"]
    assert result["output_dtype"] == "float32" and result["mixed_predictions_dtype"] == "float32"
    # Saved for inference in float32 (every layer), and the probabilities sum to 1.
    assert result["saved_policies"] == ["float32"] and result["predictions_dtype"] == "float32"
    np.testing.assert_allclose(result["sums"], 1.0, atol=1e-5)
    assert result["largest_difference"] < 0.05  # the same model, computed in bfloat16 vs float32


@pytest.mark.parametrize("kind", ["cnn", "lite0"])
def test_the_models_train_under_mixed_bfloat16_and_save_float32_probabilities(kind, tmp_path):
    import keras

    check_trained(train_mixed(kind, str(tmp_path)), kind)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_cnn_trains_under_mixed_bfloat16_on_jax(tmp_path, repo_root):
    """The GPU node's backend (JAX), in a subprocess: the CNN of issue 35, as above (Lite0 would
    add ~25 s of XLA compilation; it trained in bfloat16 on the H200)."""
    import keras

    if keras.backend.backend() == "jax":
        pytest.skip("this process is JAX already: the test above covered it")
    script = (
        "import json, sys\n"
        "from tests.model.test_mixed_precision import train_mixed\n"
        "print(json.dumps({'cnn': train_mixed('cnn', sys.argv[1])}))\n"
    )
    # (XLA's backend optimisation off: half the compile time, the same arithmetic.)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": str(repo_root),
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for kind, result in results.items():
        assert result["backend"] == "jax"
        check_trained(result, kind)


def _loss_case():
    """One-hot labels and bfloat16-representable probabilities, some exactly 0 and 1 (what a
    softmax rounded to bfloat16 gives for confident predictions)."""
    labels = np.eye(7, dtype=np.float32)[[0, 5, 5, 3]]
    probabilities = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # confidently wrong, with exact zeros
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # confidently right: exactly 1
            [0.0078125] * 6 + [0.953125],  # 1 - 6/128
            [0.125, 0.125, 0.125, 0.1875, 0.125, 0.1875, 0.125],
        ],
        np.float32,
    )
    return labels, probabilities


def test_the_focal_loss_is_finite_and_float32_on_bfloat16_predictions_that_round_to_0_and_1(mixed_bfloat16):
    import keras

    from pipeline.training.recipe import build_loss, class_alpha

    alpha = class_alpha(np.array([327, 514, 1099, 115, 1113, 6705, 142]), "sqrt_inverse_frequency")
    labels, probabilities = _loss_case()
    for gamma, smoothing in ((2.0, 0.0), (0.0, 0.1), (2.0, 0.1)):
        loss = build_loss(tiny_cnn(focal_gamma=gamma, label_smoothing=smoothing), alpha)
        assert loss.dtype == "float32"
        in_bfloat16 = loss(labels, keras.ops.convert_to_tensor(probabilities, dtype="bfloat16"))
        reference = loss(labels, probabilities)  # the same values, given as float32
        assert keras.backend.standardize_dtype(in_bfloat16.dtype) == "float32"
        assert np.isfinite(float(in_bfloat16)) and float(in_bfloat16) == float(reference)


def test_the_focal_loss_computes_in_float32_even_when_floatx_is_not():
    """The loss's dtype is its own, not Keras' ``floatx``: with ``floatx`` bfloat16 it still
    gives the float32 value (a loss in bfloat16 is rounded to about 3 significant digits)."""
    import keras

    from pipeline.training.recipe import build_loss

    labels, probabilities = _loss_case()
    reference = float(build_loss(tiny_cnn(focal_gamma=2.0), None)(labels, probabilities))
    keras.config.set_floatx("bfloat16")
    try:
        loss = build_loss(tiny_cnn(focal_gamma=2.0), None)
        value = loss(labels, probabilities)
    finally:
        keras.config.set_floatx("float32")
    assert loss.dtype == "float32" and keras.backend.standardize_dtype(value.dtype) == "float32"
    assert float(value) == reference
