"""Which real-data reproduction fits the time a CI run has left: the full CPU profile or the quick one.

    python -m pipeline.reproduction.plan --elapsed 1900 --budget-minutes 80    # prints cpu or quick

CI machines of one kind differ a lot in speed: the full CPU-profile pipeline on HAM10000 takes
about 65 minutes on a 2-core Intel Xeon (TensorFlow matmul ceiling 406.6 GFLOP/s; 39 before the
Lite2 stage) and would take hours on a 2-core AVX2-only AMD EPYC (80 GFLOP/s; CI measured 128 s
per CNN epoch there, against 37 s). So CI measures this machine's matmul ceiling (a second), scales the full run's
measured minutes by it, and reproduces the full published metrics (``metrics/published/
ham10000.json``) when they fit in what is left of its budget; otherwise the quick profile's
(``conf/profile/quick.yaml``, ``ham10000_quick.json``): the same data stages and recipes with short
training, checked against a reference of its own. It prints the profile's name on stdout and
its reasoning on stderr, so the CI log says which check ran and why.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from pipeline.errors import run_cli

#: Minutes of each real-data reproduction (``make reproduce DATA=../shared/ham10000 PROFILE=…``,
#: evaluate included) on the fast machine, alone on its 2 cores. cpu: 39 minutes in CI (2,325 s)
#: before Lite2, 69.5 with train_effnet_lite2 (2026-12-05, another training beside it for its
#: first 20 minutes), about 65 alone. quick: 391 s in a clean clone's .ci/run (2026-12-06).
PROFILE_MINUTES = {"cpu": 65.0, "quick": 6.5}
FULL_MINUTES = PROFILE_MINUTES["cpu"]
#: That machine's TensorFlow float32 matmul ceiling (``make bench``'s ``compute`` row).
FULL_MINUTES_GFLOPS = 406.6
SIDE = 2048
REFERENCES = {
    "cpu": "metrics/published/ham10000.json",
    "quick": "conf/profile/quick.yaml, metrics/published/ham10000_quick.json",
}


def matmul_gflops(repeats: int = 5) -> float:
    """This machine's TensorFlow float32 GFLOP/s on a 2048 x 2048 matmul (the median of ``repeats``)."""
    from pipeline.quiet import import_keras_quietly

    import_keras_quietly()  # TensorFlow's start-up notices stay out of CI's log
    import tensorflow as tf

    a = tf.random.uniform((SIDE, SIDE))
    product = tf.function(lambda: tf.matmul(a, a))
    product().numpy()  # trace and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        product().numpy()
        times.append(time.perf_counter() - started)
    return 2 * SIDE**3 / statistics.median(times) / 1e9


def estimated_minutes(profile: str, gflops: float) -> float:
    """A reproduction's minutes on a machine with this matmul ceiling, scaled as if all compute bound
    (an upper bound: start-up, I/O and tracking scale less; a CNN epoch measured 3.5x, not 5.1x)."""
    return PROFILE_MINUTES[profile] * FULL_MINUTES_GFLOPS / max(gflops, 1e-3)


def estimated_full_minutes(gflops: float) -> float:
    """The full CPU-profile reproduction's minutes on a machine with this matmul ceiling."""
    return estimated_minutes("cpu", gflops)


def choose(elapsed_minutes: float, gflops: float, budget_minutes: float) -> tuple[str, str]:
    """``("cpu" | "quick", why)``: the full profile when its estimate fits in the budget's rest, else the quick one."""
    left = budget_minutes - elapsed_minutes
    full, quick = estimated_minutes("cpu", gflops), estimated_minutes("quick", gflops)
    summary = (
        f"matmul {gflops:.0f} GFLOP/s -> full real-data reproduction about {full:.0f} min, quick about "
        f"{quick:.0f} min; {left:.0f} of {budget_minutes:.0f} min left"
    )
    if full <= left:
        return "cpu", f"{summary}: the full CPU profile ({REFERENCES['cpu']})"
    late = "" if quick <= left else " (over the budget: CI's own limit is 90 min)"
    return "quick", f"{summary}: the quick profile instead ({REFERENCES['quick']}){late}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Choose the real-data reproduction that fits the time left.")
    parser.add_argument("--elapsed", type=float, required=True, help="seconds the CI run has taken so far")
    parser.add_argument("--budget-minutes", type=float, default=80.0, help="minutes the whole CI run may take")
    args = parser.parse_args(argv)
    profile, why = choose(args.elapsed / 60, matmul_gflops(), args.budget_minutes)
    print(why, file=sys.stderr)
    print(profile)


if __name__ == "__main__":
    sys.exit(run_cli(main))
