"""Reproduce the published metrics: rerun the pipeline from scratch and compare.

    python -m pipeline.reproduction.reproduce --data ../shared/ham10000            # rerun + compare
    python -m pipeline.reproduction.reproduce --data ../shared/ham10000 --no-run   # compare only
    python -m pipeline.reproduction.reproduce --data ../shared/ham10000 --publish  # rerun + store as reference

The reference for a data folder is ``<published>/<folder name>.json`` (``demo.json`` for
``data/demo``, ``ham10000.json`` for a HAM10000 copy; ``<published>`` is ``vars.paths.published``
of dvc.yaml, ``metrics/published``) when the run uses the data's own profile (``demo`` for the
demo data, ``cpu`` otherwise), and ``<folder name>_<profile>.json`` for another profile
(``ham10000_quick.json``: the short real-data check of the ``quick`` profile, ``conf/profile/quick.yaml``). The allowed drift of every compared metric is in
``<published>/<folder name>_tolerance.json``, which ``--publish`` derives from the measured
training-seed spread, the bootstrap intervals and the binomial standard errors by the rules of ``<published>/tolerance.yaml``
(:mod:`pipeline.reproduction.tolerances`). The comparison prints a table of every compared number with the
rule that bound its allowance, and exits 1 on a drift beyond it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import profiles
from pipeline.errors import PipelineError, run_cli
from pipeline.io import pipeline_path, read_json, write_json
from pipeline.reproduction.tolerances import flatten

TOLERANCE_FILE_NAME = "tolerance.yaml"
#: The seed-spread table (``python -m pipeline.reproduction.seeds report``), one entry per reference.
SEEDS_FILE = "reports/seeds.json"


@dataclass(frozen=True)
class Comparison:
    """One compared number."""

    model: str
    metric: str
    published: float
    fresh: float
    tolerance: float
    rule: str = ""

    @property
    def drift(self) -> float:
        return self.fresh - self.published

    @property
    def ok(self) -> bool:
        return abs(self.drift) <= self.tolerance + 1e-12


def default_profile(data_dir: str | Path) -> str:
    """The profile a data folder runs with unless told otherwise (the Makefile's ``PROFILE``)."""
    from pipeline.config import data_name

    return "demo" if data_name(Path(data_dir)) == "demo" else "cpu"


def reference_name(data_dir: str | Path, profile: str | None = None) -> str:
    """``data/demo`` -> ``demo``; ``../shared/ham10000`` -> ``ham10000`` (the data set's name);
    with a profile other than the data's own, the profile too: ``ham10000_quick``."""
    from pipeline.config import data_name

    name = data_name(Path(data_dir))
    stem = str(profile) if profile else default_profile(data_dir)
    return name if stem == default_profile(data_dir) else f"{name}_{stem}"


def compare(
    published: dict[str, Any], fresh: dict[str, Any], allowances: dict[str, dict[str, dict[str, Any]]]
) -> list[Comparison]:
    """Every compared metric of every published model (those ``allowances`` names), against the fresh run."""
    rows = []
    for model, reference in published.items():
        if model not in fresh:
            raise PipelineError(f"fresh metrics have no model '{model}' (have: {', '.join(fresh)})")
        if model not in allowances:
            raise PipelineError(f"the published tolerances have no model '{model}': publish again (make publish)")
        fresh_flat, reference_flat = flatten(fresh[model]), flatten(reference)
        for metric, allowance in allowances[model].items():
            if metric not in reference_flat:
                raise PipelineError(f"the published metrics of '{model}' have no '{metric}'")
            if metric not in fresh_flat:
                raise PipelineError(f"fresh metrics of '{model}' have no '{metric}'")
            rows.append(
                Comparison(
                    model,
                    metric,
                    reference_flat[metric],
                    fresh_flat[metric],
                    float(allowance["allowed"]),
                    allowance["rule"],
                )
            )
    return rows


def format_table(rows: list[Comparison]) -> str:
    """A fixed-width table of the comparison, drifting rows marked, with the rule that bound each allowance."""
    header = f"{'model':<12} {'metric':<20} {'published':>9} {'fresh':>9} {'drift':>8} {'allowed':>8}  status  bound by"
    lines = [header, "-" * len(header)]
    for row in rows:
        status = "ok" if row.ok else "DRIFT"
        lines.append(
            f"{row.model:<12} {row.metric:<20} {row.published:>9.4f} {row.fresh:>9.4f} "
            f"{row.drift:>+8.4f} {row.tolerance:>8.4f}  {status:<6}  {row.rule}"
        )
    return "\n".join(lines)


def rerun_pipeline(data_dir: str, profile: str) -> None:
    """``dvc exp run --force`` with the profile and ``ingest.data_dir`` set: every stage reruns,
    recorded as an experiment (params.yaml composed from conf/, as ``make run`` does)."""
    command = [
        sys.executable,
        "-m",
        "dvc",
        "exp",
        "run",
        "--force",
        "--set-param",
        f"profile={profile}",
        "--set-param",
        f"ingest.data_dir={data_dir}",
    ]
    print("+ " + " ".join(command[2:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise PipelineError("the pipeline run failed (see the stage output above)")


def publish(metrics_file: Path, reference: Path, rules_file: Path, seeds_file: Path, paired_file: Path | None) -> Path:
    """Store the fresh metrics, report and paired comparisons as the reference, and the
    allowances derived for them."""
    reference.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metrics_file, reference)
    shutil.copyfile(pipeline_path("report"), reference.with_name(f"{reference.stem}_comparison.md"))
    if paired_file is not None and paired_file.is_file():
        shutil.copyfile(paired_file, paired_path(reference))
    print(f"published {metrics_file} as {reference}")
    return write_tolerances(reference, rules_file, seeds_file)


def write_tolerances(reference: Path, rules_file: Path, seeds_file: Path) -> Path:
    """Derive the allowances of the published ``reference`` from the seed spread and its
    intervals (``<name>_tolerance.json``); rerun after ``make seeds`` adds seed runs."""
    from pipeline.reproduction.tolerances import derive, load_rules, seed_spread_for

    if not reference.is_file():
        raise PipelineError(f"no published metrics at {reference}; publish them first (make publish)")
    paired = paired_path(reference)
    confidence = read_json(paired)["bootstrap"]["confidence"] if paired.is_file() else 0.95
    spread = seed_spread_for(seeds_file, reference.stem)
    allowances = derive(read_json(reference), spread, load_rules(rules_file), confidence)
    tolerance_file = tolerance_path(reference)
    write_json(
        tolerance_file, {"rules": str(rules_file), "seeds": str(seeds_file) if spread else None, "models": allowances}
    )
    source = (
        f"the seed spread in {seeds_file}"
        if spread
        else f"no seed spread ({seeds_file} has no '{reference.stem}' table)"
    )
    print(f"allowed drifts from {source}, the bootstrap intervals and the binomial standard errors: {tolerance_file}")
    return tolerance_file


def paired_path(reference: Path) -> Path:
    return reference.with_name(f"{reference.stem}_paired.json")


def tolerance_path(reference: Path) -> Path:
    return reference.with_name(f"{reference.stem}_tolerance.json")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rerun the pipeline and compare with the published metrics.")
    parser.add_argument("--data", required=True, help="data folder the pipeline runs on")
    parser.add_argument(
        "--no-run", action="store_true", help="compare (or publish) the current metrics without rerunning"
    )
    parser.add_argument(
        "--publish", action="store_true", help="store the fresh metrics as the new reference, with derived tolerances"
    )
    parser.add_argument(
        "--tolerances",
        action="store_true",
        help="only derive the published reference's tolerances again (after new seed runs)",
    )
    parser.add_argument(
        "--seeds", default=SEEDS_FILE, help=f"the seed-spread table for --publish (default {SEEDS_FILE})"
    )
    parser.add_argument(
        "--profile",
        help="the params profile of the run (conf/profile/: demo, cpu, quick, gpu; default: the data's own)",
    )
    args = parser.parse_args(argv)
    profile = args.profile or default_profile(args.data)
    if profile not in profiles.names():
        raise PipelineError(f"profile '{profile}' not found (conf/profile/: {', '.join(profiles.names())})")
    metrics_file, published_dir = pipeline_path("test_metrics"), pipeline_path("published")
    reference = published_dir / f"{reference_name(args.data, args.profile)}.json"
    if args.tolerances:
        write_tolerances(reference, published_dir / TOLERANCE_FILE_NAME, Path(args.seeds))
        return
    if not args.no_run:
        rerun_pipeline(args.data, profile)
    if args.publish:
        publish(
            metrics_file,
            reference,
            published_dir / TOLERANCE_FILE_NAME,
            Path(args.seeds),
            pipeline_path("paired_metrics"),
        )
        return
    if not reference.is_file():
        raise PipelineError(f"no published metrics for this data at {reference}; create them with --publish")
    if not tolerance_path(reference).is_file():
        raise PipelineError(
            f"no tolerances beside {reference} ({tolerance_path(reference).name}); publish again with --publish"
        )
    allowances = read_json(tolerance_path(reference))["models"]
    rows = compare(read_json(reference), read_json(metrics_file), allowances)
    print(format_table(rows))
    drifted = [row for row in rows if not row.ok]
    if drifted:
        raise PipelineError(
            f"{len(drifted)} of {len(rows)} metrics drifted beyond tolerance from {reference} "
            f"(e.g. {drifted[0].model} {drifted[0].metric}: {drifted[0].published:.4f} -> {drifted[0].fresh:.4f}, "
            f"allowed {drifted[0].tolerance:.4f} by {drifted[0].rule})"
        )
    print(f"reproduced: all {len(rows)} metrics within tolerance of {reference}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
