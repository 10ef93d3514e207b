"""Benchmarks of the pipeline against its limits: figures printed, ratios measured in one run.

    make bench                      # everything (about 10 minutes on 2 cores)
    python -m benchmarks.run --only ingest predict --repeats 3

Every figure is a median over ``--repeats`` runs, and every goal is a ratio of two things
measured in the same run, because these machines are shared and noisy. The figures are also
written to ``benchmarks/results/bench.json``. Each benchmark lives in its own module:
``ingest``, ``training`` (input pipeline, compute, GPU), ``backends``, ``predict``, ``uncertainty``
(the evaluate stage's intervals), ``repro``
(DVC) and ``team``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS


# Each benchmark, run with the command line's settings and a scratch folder. Modules are
# imported only when their benchmark runs: TensorFlow, DVC and the team servers are heavy.
def _ingest(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.ingest import bench_ingest

    return bench_ingest(args.repeats, work)


def _input_pipeline(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.training import bench_input_pipeline

    return bench_input_pipeline(args.repeats, args.params, work)


def _compute(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.training import bench_compute

    return bench_compute(args.repeats, args.params, work)


def _backends(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.backends import bench_backends

    return bench_backends(args.repeats, args.params)


def _predict(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.predict import bench_predict

    return bench_predict(args.repeats, work, args.batch_size)


def _dvc(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.repro import bench_dvc

    return bench_dvc()


def _team(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.team import bench_team

    return bench_team(args.repeats, megabytes=256)


def _intervals(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.uncertainty import bench_intervals

    return bench_intervals(args.repeats)


def _gpu(args: argparse.Namespace, work: Path) -> dict:
    from benchmarks.training import bench_gpu

    return bench_gpu(args.repeats)


BENCHMARKS: dict[str, Callable[[argparse.Namespace, Path], dict]] = {
    "ingest": _ingest,
    "input_pipeline": _input_pipeline,
    "compute": _compute,
    "backends": _backends,
    "predict": _predict,
    "intervals": _intervals,
    "dvc": _dvc,
    "team": _team,
    "gpu": _gpu,
}


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
            figures[name] = BENCHMARKS[name](args, work)
            print(json.dumps(figures[name], indent=2), f"({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
