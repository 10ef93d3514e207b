"""Reproduce the published metrics: rerun the pipeline from scratch and compare.

    python -m pipeline.reproduce --data ../shared/ham10000            # rerun + compare
    python -m pipeline.reproduce --data ../shared/ham10000 --no-run   # compare only
    python -m pipeline.reproduce --data ../shared/ham10000 --publish  # rerun + store as reference

The reference for a data folder is ``<published>/<folder name>.json`` (``demo.json`` for
``data/demo``, ``ham10000.json`` for a HAM10000 copy; ``<published>`` is ``vars.paths.published``
of dvc.yaml, ``metrics/published``); the allowed drift per metric is in
``<published>/tolerance.yaml``. A drift beyond tolerance prints a table of every
compared number and exits 1.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from pipeline.errors import PipelineError, run_cli
from pipeline.io import pipeline_path, read_json, read_yaml

TOLERANCE_FILE_NAME = "tolerance.yaml"


@dataclass(frozen=True)
class Comparison:
    """One compared number."""

    model: str
    metric: str
    published: float
    fresh: float
    tolerance: float

    @property
    def drift(self) -> float:
        return self.fresh - self.published

    @property
    def ok(self) -> bool:
        return abs(self.drift) <= self.tolerance + 1e-12


def reference_name(data_dir: str | Path) -> str:
    """``data/demo`` -> ``demo``; ``../shared/ham10000`` -> ``ham10000`` (the data set's name)."""
    from pipeline.config import data_name

    return data_name(Path(data_dir))


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"recall": {"mel": 0.5}}`` -> ``{"recall.mel": 0.5}`` (numbers only)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


#: Metrics that are the recall of one class: they get that class's standard-error allowance.
CLASS_RECALLS = {"melanoma_recall": "mel"}


@dataclass(frozen=True)
class Tolerances:
    """How far a fresh number may drift from the published one (``tolerance.yaml``).

    ``metrics``: the absolute drift allowed per metric (exact name, else its group such as
    ``recall``); a metric not named is not compared. ``standard_errors``: a recall may also
    move by this many standard errors of its own test-set estimate, sqrt(p(1-p)/n) with n the
    class's test images (20 ``vasc`` images at p=0.65: 0.107), because on a small class the
    difference between two training runs is mostly which few images flip. ``models``: per-model
    overrides of ``metrics``.
    """

    metrics: dict[str, float]
    standard_errors: float = 0.0
    models: dict[str, dict[str, float]] = field(default_factory=dict)

    def allowed(self, model: str, metric: str, published: float, support: dict[str, int]) -> float | None:
        """The drift allowed for ``metric`` of ``model`` whose published value is ``published``
        (``support``: the model's test images per class); None = not compared."""
        group, _, dx = metric.partition(".")
        own = self.models.get(model, {})
        base = next((table[name] for table in (own, self.metrics) for name in (metric, group) if name in table), None)
        images = support.get(CLASS_RECALLS.get(metric, dx if group == "recall" else ""))
        if base is None or not self.standard_errors or not images:
            return base
        return max(base, self.standard_errors * math.sqrt(published * (1 - published) / images))


def compare(published: dict[str, Any], fresh: dict[str, Any], tolerances: Tolerances) -> list[Comparison]:
    """Every toleranced metric of every published model, against the fresh run."""
    rows = []
    for model, reference in published.items():
        if model not in fresh:
            raise PipelineError(f"fresh metrics have no model '{model}' (have: {', '.join(fresh)})")
        fresh_flat = flatten(fresh[model])
        for metric, value in flatten(reference).items():
            tolerance = tolerances.allowed(model, metric, value, reference.get("support") or {})
            if tolerance is None:
                continue
            if metric not in fresh_flat:
                raise PipelineError(f"fresh metrics of '{model}' have no '{metric}'")
            rows.append(Comparison(model, metric, value, fresh_flat[metric], tolerance))
    return rows


def format_table(rows: list[Comparison]) -> str:
    """A fixed-width table of the comparison, drifting rows marked."""
    header = f"{'model':<10} {'metric':<26} {'published':>10} {'fresh':>10} {'drift':>9} {'allowed':>8}  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        status = "ok" if row.ok else "DRIFT"
        lines.append(
            f"{row.model:<10} {row.metric:<26} {row.published:>10.4f} {row.fresh:>10.4f} "
            f"{row.drift:>+9.4f} {row.tolerance:>8.4f}  {status}"
        )
    return "\n".join(lines)


def load_tolerances(path: Path) -> Tolerances:
    """Read ``tolerance.yaml``: ``metrics`` (name -> allowed drift), ``standard_errors`` and
    ``models`` (model -> name -> allowed drift)."""
    raw = read_yaml(path, "tolerances")

    def numbers(table: Any, where: str) -> dict[str, float]:
        if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in table.values()):
            raise PipelineError(f"{path}: {where} must map metric names to numbers")
        return {str(k): float(v) for k, v in table.items()}

    if not isinstance(raw, dict) or set(raw) - {"metrics", "standard_errors", "models"}:
        raise PipelineError(f"{path}: expected the keys metrics, standard_errors, models")
    models = raw.get("models") or {}
    if not isinstance(models, dict):
        raise PipelineError(f"{path}: models must map model names to metric tolerances")
    errors = raw.get("standard_errors", 0)
    if not isinstance(errors, (int, float)) or isinstance(errors, bool) or errors < 0:
        raise PipelineError(f"{path}: standard_errors must be a number >= 0")
    return Tolerances(numbers(raw.get("metrics"), "metrics"), float(errors),
                      {str(name): numbers(table, f"models.{name}") for name, table in models.items()})


def use_profile(profile: Path, params_file: Path = Path("params.yaml")) -> None:
    """Make ``profile`` the active params (``params.yaml``), as ``make run`` does."""
    if not profile.is_file():
        raise PipelineError(f"profile {profile} not found (profiles/: {', '.join(sorted(p.stem for p in profile.parent.glob('*.yaml')))})")
    if not params_file.is_file() or params_file.read_bytes() != profile.read_bytes():
        shutil.copyfile(profile, params_file)
        print(f"params.yaml <- {profile}", flush=True)


def rerun_pipeline(data_dir: str) -> None:
    """``dvc exp run --force`` with ``ingest.data_dir`` set: every stage reruns, recorded as an experiment."""
    command = [sys.executable, "-m", "dvc", "exp", "run", "--force", "--set-param", f"ingest.data_dir={data_dir}"]
    print("+ " + " ".join(command[2:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise PipelineError("the pipeline run failed (see the stage output above)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rerun the pipeline and compare with the published metrics.")
    parser.add_argument("--data", required=True, help="data folder the pipeline runs on")
    parser.add_argument("--no-run", action="store_true", help="compare the current metrics without rerunning")
    parser.add_argument("--publish", action="store_true", help="store the fresh metrics as the new reference")
    parser.add_argument("--profile", help="a params profile copied to params.yaml before the run (profiles/demo.yaml, ...)")
    args = parser.parse_args(argv)
    if args.profile and not args.no_run:
        use_profile(Path(args.profile))
    metrics_file, published_dir = pipeline_path("test_metrics"), pipeline_path("published")
    reference = published_dir / f"{reference_name(args.data)}.json"
    if not args.no_run:
        rerun_pipeline(args.data)
    if args.publish:
        published_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics_file, reference)
        report = reference.with_name(f"{reference.stem}_comparison.md")
        shutil.copyfile(pipeline_path("report"), report)
        print(f"published {metrics_file} as {reference} (report: {report})")
        return
    if not reference.is_file():
        raise PipelineError(f"no published metrics for this data at {reference}; create them with --publish")
    rows = compare(read_json(reference), read_json(metrics_file), load_tolerances(published_dir / TOLERANCE_FILE_NAME))
    print(format_table(rows))
    drifted = [row for row in rows if not row.ok]
    if drifted:
        raise PipelineError(
            f"{len(drifted)} of {len(rows)} metrics drifted beyond tolerance from {reference} "
            f"(e.g. {drifted[0].model} {drifted[0].metric}: {drifted[0].published:.4f} -> {drifted[0].fresh:.4f})"
        )
    print(f"reproduced: all {len(rows)} metrics within tolerance of {reference}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
