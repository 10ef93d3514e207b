"""Training throughput of the CPU profile's CNN on each Keras backend, measured in one run.

Keras picks its backend at import, so each backend trains in its own subprocess, one after
the other, through the pipeline's real input path (``make_dataset``: ``tf.data`` on
TensorFlow, ``ArrayBatches`` elsewhere) with the params file's CNN, model, loss and
optimizer. One epoch compiles/warms up; the figure is the median of ``repeats`` more.

    python -m benchmarks.backends --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT

BACKENDS = ("tensorflow", "jax")
IMAGES = 2048


def worker(params_path: Path, repeats: int, count: int) -> dict:
    """Runs inside a subprocess whose ``KERAS_BACKEND`` is set: the backend's figures."""
    import numpy as np

    from pipeline.config import CnnParams, load_params
    from pipeline.data.datasets import make_dataset
    from pipeline.models.builders import build_cnn
    from pipeline.training.backend import configure
    from pipeline.training.recipe import build_loss, build_optimizer

    base, params = load_params(params_path, "train_cnn_focal", CnnParams)
    devices = configure(base.seed)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, count).astype(np.int32)
    images = rng.integers(0, 255, (count, params.input_size, params.input_size, 3), dtype=np.uint8)
    model = build_cnn(params, base.classes)
    steps = int(np.ceil(count / params.batch_size))
    model.compile(
        optimizer=build_optimizer(params, params.learning_rate, steps, 1 + repeats), loss=build_loss(params, None)
    )
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
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - started
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        seconds.append(time.perf_counter() - started)
    return {
        "device": devices.label,
        "input_size": params.input_size,
        "images": count,
        "first_epoch_seconds": round(first, 1),
        "images_per_second": round(count / statistics.median(seconds), 1),
    }


def bench_backends(repeats: int, params_path: Path, count: int = IMAGES) -> dict:
    """Each backend's training images/s, and JAX's relative to TensorFlow's."""
    results: dict = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.backends",
                "--worker",
                "--repeats",
                str(repeats),
                "--params",
                str(params_path),
                "--images",
                str(count),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        if done.returncode:
            results[backend] = {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1]}
            continue
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    if all("images_per_second" in results.get(backend, {}) for backend in BACKENDS):
        results["jax_vs_tensorflow"] = round(
            results["jax"]["images_per_second"] / results["tensorflow"]["images_per_second"], 2
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.params, args.repeats, args.images)))
    else:
        print(json.dumps(bench_backends(args.repeats, args.params, args.images), indent=2))


if __name__ == "__main__":
    main()
