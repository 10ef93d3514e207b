"""How far a reproduction may drift from the published metrics, derived from measurements.

Two things move a number when the pipeline is run again: the training itself (another seed,
or another CPU whose kernels round differently, grows into a different model over the epochs)
and, for any claim about the population, the test set's own sampling noise. Both are
measured here: the first as the standard deviation over training seeds (``reports/seeds.json``,
written by :mod:`pipeline.reproduction.seeds`), the second as the bootstrap standard error of the published
number (its 95% interval's width / (2 x 1.96)). A bootstrap cannot see the noise of a
proportion that sits at 0 or 1 (a class whose 2 test images are both right resamples to 1.0
every time: standard error 0, yet one image flipping on another CPU moves it by 0.5), so a
proportion over a known count (a class recall over its support, accuracy over the images) also
gets its Agresti-Coull binomial standard error, which adds two successes and two failures and
never collapses to zero. The allowed drift of each compared metric is

    allowed = factor x max(seed sd, bootstrap se, binomial se), at least floor

with ``factor``, ``floor`` and the compared metrics in ``metrics/published/tolerance.yaml``,
the one place that scales them all. ``make publish`` writes the result beside the reference
(``<data>_tolerance.json``), each allowance with the rule that bound it, and ``make
reproduce`` prints that rule next to every drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import read_json, read_yaml


@dataclass(frozen=True)
class Rules:
    """``tolerance.yaml``: the factor, the floor, and which metrics are compared (a name such as
    ``balanced_accuracy`` or a group such as ``recall``, meaning every ``recall.<class>``)."""

    factor: float
    floor: float
    compared: tuple[str, ...]

    def compares(self, metric: str) -> bool:
        return metric in self.compared or metric.partition(".")[0] in self.compared


def load_rules(path: Path) -> Rules:
    raw = read_yaml(path, "tolerances")
    if not isinstance(raw, dict) or set(raw) != {"factor", "floor", "compared"}:
        raise PipelineError(f"{path}: expected exactly the keys factor, floor, compared")
    for key in ("factor", "floor"):
        value = raw[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise PipelineError(f"{path}: {key} must be a number >= 0, got {value!r}")
    compared = raw["compared"]
    if not isinstance(compared, list) or not compared or not all(isinstance(item, str) for item in compared):
        raise PipelineError(f"{path}: compared must be a non-empty list of metric names")
    return Rules(float(raw["factor"]), float(raw["floor"]), tuple(compared))


def _lookup(metrics: dict[str, Any], metric: str, suffix: str = "") -> Any:
    """``recall.mel`` -> metrics["recall"]["mel"]; with suffix ``_ci`` -> metrics["recall_ci"]["mel"]."""
    group, _, dx = metric.partition(".")
    if dx:
        return (metrics.get(f"{group}{suffix}") or {}).get(dx)
    return metrics.get(f"{metric}{suffix}")


def bootstrap_se(metrics: dict[str, Any], metric: str, confidence: float) -> float | None:
    """The standard error implied by the metric's published interval (or stored as ``<metric>_se``), or None."""
    se = _lookup(metrics, metric, "_se")
    if isinstance(se, (int, float)) and math.isfinite(se):
        return float(se)
    ci = _lookup(metrics, metric, "_ci")
    if (
        not isinstance(ci, list)
        or len(ci) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci)
    ):
        return None
    return (ci[1] - ci[0]) / (2 * NormalDist().inv_cdf(0.5 + confidence / 2))


def binomial_se(metrics: dict[str, Any], metric: str) -> tuple[float, int] | None:
    """The Agresti-Coull standard error of a proportion metric and its count, or None for a
    metric that is no proportion over a known count (macro-F1, ROC AUC, ECE, balanced accuracy).

    ``recall.<class>`` counts that class's support, ``melanoma_recall`` the melanomas',
    ``accuracy`` the images; a proportion p of n is taken as (p n + 2) / (n + 4) over n + 4."""
    group, _, dx = metric.partition(".")
    support = metrics.get("support") or {}
    count = {"recall": support.get(dx), "melanoma_recall": support.get("mel"), "accuracy": metrics.get("images")}.get(
        group
    )
    value = _lookup(metrics, metric)
    if (
        not isinstance(count, (int, float))
        or count <= 0
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        return None
    shrunk = (value * count + 2) / (count + 4)
    return math.sqrt(shrunk * (1 - shrunk) / (count + 4)), int(count)


def seed_sd(
    spread: dict[str, dict[str, dict[str, float]]], model: str, metrics: dict[str, Any], metric: str
) -> tuple[float | None, str]:
    """The training-seed standard deviation of ``metric`` for ``model`` and where it came from.
    An ensemble has none of its own: it takes the largest of its weighted members'."""
    own = (spread.get(model) or {}).get(metric)
    if own and math.isfinite(own.get("std", math.nan)):
        return own["std"], f"seed sd ({int(own['n'])} seeds)"
    members = [name for name, weight in (metrics.get("weights") or {}).items() if weight > 0]
    values = [(spread.get(name) or {}).get(metric, {}).get("std", math.nan) for name in members]
    values = [value for value in values if math.isfinite(value)]
    if values and len(values) == len(members):
        return max(values), "members' seed sd (largest)"
    return None, ""


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


def derive(
    reference: dict[str, dict[str, Any]],
    spread: dict[str, dict[str, dict[str, float]]],
    rules: Rules,
    confidence: float = 0.95,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {metric: {"allowed", "rule", "seed_sd", "bootstrap_se", "binomial_se"}}}`` for
    every compared number of every published model."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, metrics in reference.items():
        out[model] = {}
        for metric in flatten({k: v for k, v in metrics.items() if not k.endswith(("_ci", "_se"))}):
            if not rules.compares(metric):
                continue
            sd, sd_source = seed_sd(spread, model, metrics, metric)
            se = bootstrap_se(metrics, metric, confidence)
            candidates = [(rules.factor * sd, f"{rules.factor:g} x {sd_source} {sd:.4f}")] if sd is not None else []
            if se is not None:
                candidates.append((rules.factor * se, f"{rules.factor:g} x bootstrap se {se:.4f}"))
            binomial = binomial_se(metrics, metric)
            if binomial is not None:
                candidates.append(
                    (rules.factor * binomial[0], f"{rules.factor:g} x binomial se {binomial[0]:.4f} (n={binomial[1]})")
                )
            allowed, rule = max(candidates) if candidates else (rules.floor, "floor (nothing measured)")
            if allowed < rules.floor:
                allowed, rule = rules.floor, f"floor {rules.floor:g}"
            out[model][metric] = {
                "allowed": round(allowed, 6),
                "rule": rule,
                "seed_sd": sd,
                "bootstrap_se": se,
                "binomial_se": binomial[0] if binomial else None,
            }
    return out


def seed_spread_for(seeds_file: Path, data: str) -> dict[str, dict[str, dict[str, float]]]:
    """The seed table of data set ``data`` in ``reports/seeds.json``, or {} if none was measured."""
    if not seeds_file.is_file():
        return {}
    return (read_json(seeds_file).get(data) or {}).get("spread") or {}
