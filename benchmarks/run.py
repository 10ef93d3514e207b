"""Benchmarks of the pipeline against its limits: figures printed, ratios measured in one run.

    make bench                      # everything (about 10 minutes on 2 cores)
    python -m benchmarks.run --only ingest predict --repeats 3

Every figure is a median over ``--repeats`` runs, and every goal is a ratio of two things
measured in the same run, because these machines are shared and noisy. The figures are also
written to ``benchmarks/results/bench.json``.
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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "bench.json"
REAL_DATA = Path(os.environ.get("HAM10000_DIR") or REPO_ROOT.parent / "shared" / "ham10000")


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``function`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def naive_decode(paths: list[Path], size: int) -> np.ndarray:
    """The baseline: one process, full-resolution decode, crop, resize."""
    from pipeline.images import centre_crop_resize

    return np.stack([centre_crop_resize(Image.open(path).convert("RGB"), size) for path in paths])


def bench_ingest(repeats: int, work: Path) -> dict:
    """The ingest code path (parallel, JPEG draft) against a naive one-process PIL loop."""
    from pipeline.ingest import decode_all

    sets = {}
    if (REAL_DATA / "HAM10000_metadata.csv").is_file():
        sets["ham10000_200x150"] = sorted(REAL_DATA.glob("HAM10000_images_part_*/*.jpg"))
    else:
        print(f"  ingest: {REAL_DATA} absent, real-data figure skipped")
    large = work / "large"
    large.mkdir()
    rng = np.random.default_rng(0)
    for number in range(1500):  # 600x450 like the original HAM10000 JPEGs
        base = rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)
        Image.fromarray(np.kron(base, np.ones((10, 10, 1), np.uint8))).save(large / f"{number}.jpg", quality=90)
    sets["synthetic_600x450"] = sorted(large.glob("*.jpg"))
    results = {}
    workers = os.cpu_count() or 1
    for name, paths in sets.items():
        stage = median_seconds(lambda: decode_all(paths, 128, True, workers), repeats)
        naive = median_seconds(lambda: naive_decode(paths, 128), repeats)
        results[name] = {
            "images": len(paths),
            "stage_images_per_second": round(len(paths) / stage, 1),
            "naive_images_per_second": round(len(paths) / naive, 1),
            "speedup": round(naive / stage, 2),
            "goal_speedup": 2.0,
        }
    return results


def _training_data(count: int, size: int):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, count).astype(np.int32)
    images = rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8)
    return images, labels


def _compiled(model, params):
    from pipeline.train import build_loss, build_optimizer

    model.compile(optimizer=build_optimizer(params, params.learning_rate, 10, 1), loss=build_loss(params, None))
    return model


def bench_input_pipeline(repeats: int, params_path: Path) -> dict:
    """One epoch through the real tf.data path against tensors already in memory, per model."""
    import tensorflow as tf

    from pipeline.config import CnnParams, EffNetParams, load_params
    from pipeline.datasets import make_dataset
    from pipeline.models import build_cnn, build_effnetb7

    results = {}
    base, cnn = load_params(params_path, "train_cnn_focal", CnnParams)
    _, effnet = load_params(params_path, "train_effnetb7", EffNetParams)
    setups = {
        "cnn_focal": (lambda: build_cnn(cnn, base.classes), cnn, 2048),
        "effnetb7": (lambda: build_effnetb7(effnet, base.classes)[0], effnet, 128),
    }
    for name, (build, params, count) in setups.items():
        images, labels = _training_data(count, params.input_size)
        model = _compiled(build(), params)
        dataset = make_dataset(
            images, labels, 7, params.batch_size, training=True, seed=0,
            random_flip=params.random_flip, random_rotate90=params.random_rotate90,
        )
        tensors = (tf.constant(images, tf.float32), tf.one_hot(labels, 7))
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # build the graph once (B7: minutes)
        model.fit(*tensors, batch_size=params.batch_size, epochs=1, verbose=0)
        pipeline_s = median_seconds(lambda: model.fit(dataset, epochs=1, verbose=0, shuffle=False), repeats)
        memory_s = median_seconds(lambda: model.fit(*tensors, batch_size=params.batch_size, epochs=1, verbose=0), repeats)
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


def bench_compute(repeats: int, params_path: Path) -> dict:
    """CNN train-step throughput and GFLOP/s against the machine's matmul and conv ceilings."""
    import tensorflow as tf

    from pipeline.config import CnnParams, load_params
    from pipeline.models import build_cnn

    base, params = load_params(params_path, "train_cnn_focal", CnnParams)
    model = _compiled(build_cnn(params, base.classes), params)
    images, labels = _training_data(1024, params.input_size)
    x, y = tf.constant(images, tf.float32), tf.one_hot(labels, 7)
    model.fit(x, y, batch_size=params.batch_size, epochs=1, verbose=0)
    step_s = median_seconds(lambda: model.fit(x, y, batch_size=params.batch_size, epochs=1, verbose=0), repeats)
    images_per_second = len(images) / step_s
    # A training step costs about 3 forward passes (forward, and two products per layer backward).
    train_flops = 3 * _forward_flops(model, params.input_size)

    a = tf.random.uniform((2048, 2048))
    matmul = tf.function(lambda: tf.matmul(a, a))
    matmul()
    matmul_s = median_seconds(lambda: matmul().numpy(), max(repeats, 5))
    feature = tf.random.uniform((64, 56, 56, 128))
    kernel = tf.random.uniform((3, 3, 128, 128))
    conv = tf.function(lambda: tf.nn.conv2d(feature, kernel, 1, "SAME"))
    conv()
    conv_s = median_seconds(lambda: conv().numpy(), max(repeats, 5))
    achieved = images_per_second * train_flops / 1e9
    matmul_gflops = 2 * 2048**3 / matmul_s / 1e9
    conv_gflops = 2 * 64 * 56 * 56 * 128 * 128 * 9 / conv_s / 1e9
    return {
        "input_size": params.input_size,
        "train_images_per_second": round(images_per_second, 1),
        "train_gflop_per_image": round(train_flops / 1e9, 3),
        "achieved_gflops": round(achieved, 1),
        "matmul_ceiling_gflops": round(matmul_gflops, 1),
        "conv3x3_ceiling_gflops": round(conv_gflops, 1),
        "fraction_of_matmul_ceiling": round(achieved / matmul_gflops, 3),
    }


def bench_predict(repeats: int, work: Path, batch_size: int) -> dict:
    """images/s of pipeline.predict on a folder of 1,000 images, model loading excluded."""
    import keras

    from pipeline.config import CnnParams, load_params
    from pipeline.models import build_cnn
    from pipeline.predict import predict

    base, params = load_params(REPO_ROOT / "params.yaml", "train_cnn_focal", CnnParams)
    model_path = work / "model.keras"
    build_cnn(params, base.classes, base.image_size).save(model_path)
    folder = work / "predict"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for number in range(1000):
        Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(folder / f"{number}.jpg")
    keras.saving.load_model(model_path)  # warm caches
    seconds = median_seconds(lambda: list(predict(str(model_path), [str(folder)], batch_size)), repeats)
    return {"images": 1000, "batch_size": batch_size, "images_per_second": round(1000 / seconds, 1)}


def bench_dvc() -> dict:
    """`dvc repro` with nothing changed, and which stages a train_effnetb7 param change reruns."""
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run(dvc + ["status", "--json"], capture_output=True, text=True, cwd=REPO_ROOT)
    if status.returncode != 0 or json.loads(status.stdout or "{}"):
        return {"skipped": "the workspace is not up to date with dvc.lock: run `make run` first"}
    started = time.perf_counter()
    repro = subprocess.run(dvc + ["repro"], capture_output=True, text=True, cwd=REPO_ROOT)
    noop_seconds = time.perf_counter() - started
    params_file = REPO_ROOT / "params.yaml"
    original = params_file.read_text()
    changed = original.replace("  fine_tune_learning_rate: 0.00001\n", "  fine_tune_learning_rate: 0.00002\n", 1)
    if changed == original:
        return {"skipped": "params.yaml has no train_effnetb7 fine_tune_learning_rate: 0.00001 line to change"}
    try:
        params_file.write_text(changed)
        status = subprocess.run(dvc + ["status", "--json"], capture_output=True, text=True, cwd=REPO_ROOT)
    finally:
        params_file.write_text(original)
    # `dvc status` names the stages whose own params changed; everything downstream of them
    # reruns too, because their outputs (inputs of the downstream stages) change.
    directly = sorted(json.loads(status.stdout or "{}"))
    order = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    rerun = sorted(set(directly) | _downstream_stages(directly), key=order.index)
    return {
        "noop_repro_seconds": round(noop_seconds, 2),
        "noop_reran_nothing": "Running stage" not in repro.stdout,
        "goal_noop_seconds": 5.0,
        "stages_changed_by_train_effnetb7_param": directly,
        "stages_rerun_after_train_effnetb7_param_change": rerun,
        "goal_stages": ["train_effnetb7", "evaluate"],
    }


def _downstream_stages(stages: list[str]) -> set[str]:
    """Stages that depend, directly or not, on any of ``stages`` (DVC's own graph)."""
    import networkx
    from dvc.repo import Repo

    with Repo(str(REPO_ROOT)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {getattr(node, "name", None): node for node in graph.nodes}
        found = set()
        for name in stages:
            found |= {getattr(node, "name", None) for node in networkx.ancestors(graph, by_name[name])}
    return {name for name in found if name}


def bench_gpu(repeats: int) -> dict:
    """EfficientNetB7 training images/s at the GPU profile's resolution: mixed vs float32, XLA on/off."""
    import keras
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return {"skipped": "no GPU visible to TensorFlow"}
    from pipeline.config import EffNetParams, load_params

    _, params = load_params(REPO_ROOT / "profiles" / "gpu.yaml", "train_effnetb7", EffNetParams)
    size, batch = params.input_size, params.batch_size
    images, labels = _training_data(batch * 8, size)
    x, y = tf.constant(images, tf.float32), tf.one_hot(labels, 7)
    results = {}
    for policy in ("float32", "mixed_float16"):
        for xla in (False, True):
            keras.mixed_precision.set_global_policy(policy)
            backbone = keras.applications.EfficientNetB7(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
            outputs = keras.layers.Dense(7, activation="softmax", dtype="float32")(backbone.output)
            model = keras.Model(backbone.input, outputs)
            model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=xla)
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            seconds = median_seconds(lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0), repeats)
            results[f"{policy}_xla_{'on' if xla else 'off'}_images_per_second"] = round(len(images) / seconds, 1)
    keras.mixed_precision.set_global_policy("float32")
    results["mixed_vs_float32"] = round(results["mixed_float16_xla_off_images_per_second"] / results["float32_xla_off_images_per_second"], 2)
    results["goal_mixed_vs_float32"] = 2.0
    results["device"] = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get("device_name", "gpu")
    return results


BENCHMARKS = ("ingest", "input_pipeline", "compute", "backends", "predict", "dvc", "team", "gpu")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="predict batch size")
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    args = parser.parse_args(argv)
    figures: dict = {"repeats": args.repeats, "cpu_count": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        for name in args.only:
            started = time.perf_counter()
            print(f"== {name}", flush=True)
            if name == "ingest":
                figures[name] = bench_ingest(args.repeats, work)
            elif name == "input_pipeline":
                figures[name] = bench_input_pipeline(args.repeats, args.params)
            elif name == "compute":
                figures[name] = bench_compute(args.repeats, args.params)
            elif name == "backends":
                from benchmarks.backends import bench_backends

                figures[name] = bench_backends(args.repeats, args.params)
            elif name == "predict":
                figures[name] = bench_predict(args.repeats, work, args.batch_size)
            elif name == "dvc":
                figures[name] = bench_dvc()
            elif name == "team":
                from benchmarks.team import bench_team

                figures[name] = bench_team(args.repeats, megabytes=256)
            else:
                figures[name] = bench_gpu(args.repeats)
            print(json.dumps(figures[name], indent=2), f"({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
