"""Which real-data reproduction fits the time a CI run has left: the full CPU profile or the quick one.

    python -m pipeline.reproduction.plan --elapsed 1900 --budget-minutes 80    # prints cpu or quick

CI machines of one kind differ a lot in speed: the full CPU-profile pipeline on HAM10000 takes
about 65 minutes on a 2-core Intel Xeon (TensorFlow matmul ceiling 406.6 GFLOP/s; 39 before the
Lite2 stage) and would take hours on a 2-core AVX2-only AMD EPYC (80 GFLOP/s; CI measured 128 s
per CNN epoch there, against 37 s). So CI measures this machine's matmul ceiling (a second), scales the full run's
measured minutes by it, and reproduces the full published metrics (``metrics/published/
ham10000.json``) when they fit in what is left of its budget; otherwise the quick profile's
(``profiles/quick.yaml``, ``ham10000_quick.json``): the same data stages and recipes with short
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

#: The full CPU-profile reproduction on HAM10000 on the fast machine: 39 minutes in CI (2,325 s)
#: before Lite2; 69.5 minutes with train_effnet_lite2 (2026-12-05, `make publish`, another
#: training beside it for its first 20 minutes), about 65 alone.
FULL_MINUTES = 65.0
#: That machine's TensorFlow float32 matmul ceiling (``make bench``'s ``compute`` row).
FULL_MINUTES_GFLOPS = 406.6
SIDE = 2048


def matmul_gflops(repeats: int = 5) -> float:
    """This machine's TensorFlow float32 GFLOP/s on a 2048 x 2048 matmul (the median of ``repeats``)."""
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


def estimated_full_minutes(gflops: float) -> float:
    """The full reproduction's minutes on a machine with this matmul ceiling (training is compute bound)."""
    return FULL_MINUTES * FULL_MINUTES_GFLOPS / max(gflops, 1e-3)


def choose(elapsed_minutes: float, gflops: float, budget_minutes: float) -> tuple[str, str]:
    """``("cpu" | "quick", why)``: the full profile when its estimate fits in the budget's rest."""
    estimate = estimated_full_minutes(gflops)
    left = budget_minutes - elapsed_minutes
    summary = (
        f"matmul {gflops:.0f} GFLOP/s -> full real-data reproduction about {estimate:.0f} min; "
        f"{left:.0f} of {budget_minutes:.0f} min left"
    )
    if estimate <= left:
        return "cpu", f"{summary}: the full CPU profile (metrics/published/ham10000.json)"
    return "quick", f"{summary}: the quick profile instead (profiles/quick.yaml, metrics/published/ham10000_quick.json)"


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
