"""The training-seed spread: how much a second training run moves each approach's numbers.

A test split's interval says how sure one model's number is about that model; it says nothing
about how much the *recipe* moves when it is trained again. This module measures that with
DVC's own experiment queue: the split, the augmented images and the test images stay fixed
(``base.seed``), while each queued experiment sets a different training seed
(``<stage>.seed``) for the approaches under study::

    python -m pipeline.reproduction.seeds queue --data ../shared/ham10000 --seeds 42 43 44   # dvc exp run --queue -S ...
    dvc queue start                                                              # or: --start
    python -m pipeline.reproduction.seeds report --data ../shared/ham10000                  # reports/seeds.md + .json

``report`` reads ``dvc exp show --json`` (every experiment of the repository that ran on that
data set with the approaches' seeds set) and writes the mean and standard deviation of every
approach's test metrics over the seeds, the table ``make publish`` turns into reproduction
tolerances.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, run_cli
from pipeline.io import write_json
from pipeline.reproduction.seed_queue import SEEDED_STAGES, _dvc, queue_commands, wait_for_queue

#: The metrics the seed table reports (in ``metrics/evaluate.json`` per model).
SEED_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "melanoma_recall", "roc_auc_macro", "ece")
PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class SeedRun:
    """One finished experiment: its name, the training seed of each approach, its test metrics."""

    name: str
    data_dir: str
    seeds: dict[str, int]
    metrics: dict[str, dict[str, Any]]


def _records(show: Any):
    """The experiment records of ``dvc exp show --json`` (a list of baseline commits, each with
    ``experiments: [{"revs": [record, ...]}]``); the baselines themselves are not experiments:
    their metrics are whatever was committed."""
    for baseline in show if isinstance(show, list) else []:
        for group in (baseline or {}).get("experiments") or []:
            # A queued or running experiment shows its baseline's committed metrics: not a result
            # yet. Finished ones are "success" (queue) or have no executor (run in the workspace).
            state = ((group or {}).get("executor") or {}).get("state", "success")
            if state != "success":
                continue
            for record in (group or {}).get("revs") or []:
                if isinstance(record, dict) and not record.get("error"):
                    yield record


def _data_of(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("data") if isinstance(record.get("data"), dict) else {}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def same_recipe(params: dict[str, Any], profile: dict[str, Any] | None) -> bool:
    """Whether an experiment's params are the profile's (composed: ``pipeline.profiles.compose``),
    the data folder and the training seeds aside (what a seed run varies): a quick-profile run
    never joins the CPU profile's table. A key the experiment lacks is a parameter added after it
    ran (with the behaviour of its default then) and is not compared."""
    if profile is None:
        return True
    ran = _flat(params)
    varied = {"ingest.data_dir"} | {f"{stage}.seed" for stage in SEEDED_STAGES.values()}
    return all(ran[key] == value for key, value in _flat(profile).items() if key not in varied and key in ran)


def seed_runs(
    show: Any, data_name: str, metrics_file: str, approaches: Sequence[str], profile: dict[str, Any] | None = None
) -> list[SeedRun]:
    """The finished experiments of ``dvc exp show --json`` that ran on ``data_name`` (the data
    folder's name) with the params of ``profile`` (when given), one per distinct set of seeds
    (the newest wins when a seed ran twice)."""
    from pipeline.config import data_name as name_of

    runs: dict[tuple[int, ...], tuple[str, SeedRun]] = {}
    for record in _records(show):
        data = _data_of(record)
        params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
        metrics = ((data.get("metrics") or {}).get(metrics_file) or {}).get("data")
        data_dir = str((params.get("ingest") or {}).get("data_dir", ""))
        if not metrics or not data_dir or name_of(Path(data_dir)) != data_name or not same_recipe(params, profile):
            continue
        try:
            seeds = {name: int(params[SEEDED_STAGES[name]]["seed"]) for name in approaches}
        except (KeyError, TypeError, ValueError):
            continue  # an experiment from before training seeds existed
        if not all(name in metrics for name in approaches):
            continue
        key = tuple(seeds[name] for name in approaches)
        name = str(record.get("name") or record.get("rev"))
        stamp = str(data.get("timestamp") or "")
        if key not in runs or stamp > runs[key][0]:  # the newest run of these seeds wins
            runs[key] = (stamp, SeedRun(name, data_dir, seeds, metrics))
    return [run for _, run in sorted(runs.values(), key=lambda item: tuple(item[1].seeds.values()))]


def spread(
    runs: Sequence[SeedRun], approaches: Sequence[str], keys: Sequence[str] = SEED_METRICS
) -> dict[str, dict[str, dict[str, float]]]:
    """``{approach: {metric: {"mean", "std", "min", "max", "n"}}}``; ``std`` is the sample
    standard deviation (n - 1), the spread one more training run is expected to show."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in approaches:
        table[name] = {}
        metric_names = (
            list(keys) + [f"recall.{dx}" for dx in sorted(runs[0].metrics[name].get("recall", {}))]
            if runs
            else list(keys)
        )
        for metric in metric_names:
            values = [_value(run.metrics[name], metric) for run in runs]
            values = [v for v in values if v is not None and math.isfinite(v)]
            if not values:
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else float("nan")
            table[name][metric] = {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}
    return table


def _value(metrics: dict[str, Any], metric: str) -> float | None:
    node: Any = metrics
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def seeds_markdown(tables: dict[str, dict[str, Any]]) -> str:
    """``reports/seeds.md``: per data set, mean ± standard deviation per approach and metric."""
    lines = [
        "# Training-seed spread",
        "",
        "Each approach trained several times with another training seed (`<stage>.seed`); the split, the augmented",
        "images and the test images are the same in every run (`base.seed`). Test-split metrics: mean ± sample standard",
        "deviation over the seeds [min, max]. Written by `python -m pipeline.reproduction.seeds report` from `dvc exp show --json`;",
        "`make publish` derives the reproduction tolerances from these standard deviations (pipeline/reproduction/tolerances.py).",
    ]
    for data, entry in tables.items():
        table, runs = entry["spread"], entry["runs"]
        approaches = list(table)
        lines += [
            "",
            f"## {data}: {len(runs)} seeds",
            "",
            "| metric | " + " | ".join(approaches) + " |",
            "|---|" + "---|" * len(approaches),
        ]
        for metric in dict.fromkeys(metric for name in approaches for metric in table[name]):
            cells = []
            for name in approaches:
                row = table[name].get(metric)
                cells.append(
                    f"{row['mean']:.3f} ± {row['std']:.3f} [{row['min']:.3f}, {row['max']:.3f}]" if row else ""
                )
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| experiment | "
            + " | ".join(f"{name} seed" for name in approaches)
            + " | "
            + " | ".join(f"{name} balanced accuracy" for name in approaches)
            + " |",
            "|---|" + "---|" * (2 * len(approaches)),
        ]
        for run in runs:
            lines.append(
                f"| {run['name']} | "
                + " | ".join(str(run["seeds"][name]) for name in approaches)
                + " | "
                + " | ".join(f"{run['balanced_accuracy'][name]:.4f}" for name in approaches)
                + " |"
            )
    lines.append("")
    return "\n".join(lines)


def merge_recorded(runs: list[SeedRun], recorded: list[dict[str, Any]], approaches: Sequence[str]) -> list[SeedRun]:
    """``runs`` plus the runs an earlier report recorded (with their metrics) for seeds that
    ``dvc exp show`` no longer lists: experiments are local git refs, so a fresh clone keeps
    the earlier seeds only through ``reports/seeds.json``."""
    seen = {tuple(run.seeds[a] for a in approaches) for run in runs}
    merged = list(runs)
    for entry in recorded:
        seeds = {a: int(entry["seeds"][a]) for a in approaches if a in entry.get("seeds", {})}
        metrics = entry.get("metrics") or {}
        key = tuple(seeds.get(a) for a in approaches)
        if len(seeds) == len(approaches) and all(a in metrics for a in approaches) and key not in seen:
            merged.append(SeedRun(str(entry.get("name")), str(entry.get("data_dir", "")), seeds, metrics))
            seen.add(key)
    return sorted(merged, key=lambda run: tuple(run.seeds.values()))


def report(
    data_dir: str, out_md: Path, out_json: Path, approaches: Sequence[str], minimum: int = 2, profile: str | None = None
) -> dict[str, Any]:
    """Read every experiment (``dvc exp show --json --all-commits``) and write the seed table of
    this data set and profile (the data's own when none is given) into ``out_json`` (one entry per
    published reference name: ``ham10000``, ``ham10000_quick``; the others are kept) and ``out_md``."""
    from pipeline.config import data_name
    from pipeline.io import pipeline_path, read_json
    from pipeline.profiles import compose
    from pipeline.reproduction.reproduce import default_profile, reference_name

    profile = profile or default_profile(data_dir)
    recipe = compose(profile)
    show = json.loads(_dvc(["dvc", "exp", "show", "--json", "--all-commits"], capture=True) or "[]")
    name = reference_name(data_dir, profile)
    runs = seed_runs(show, data_name(Path(data_dir)), str(pipeline_path("test_metrics")), approaches, recipe)
    tables = read_json(out_json) if out_json.is_file() else {}
    runs = merge_recorded(runs, (tables.get(name) or {}).get("runs") or [], approaches)
    if len(runs) < minimum:
        raise PipelineError(
            f"{len(runs)} finished seed run(s) on {name}; at least {minimum} are needed "
            f"(queue them: python -m pipeline.reproduction.seeds queue --data {data_dir} --seeds 42 43 44 --start)"
        )
    tables[name] = {
        "runs": [
            {
                "name": run.name,
                "seeds": run.seeds,
                "data_dir": run.data_dir,
                "balanced_accuracy": {a: run.metrics[a]["balanced_accuracy"] for a in approaches},
                "metrics": {a: run.metrics[a] for a in approaches},
            }
            for run in runs
        ],
        "spread": spread(runs, approaches),
    }
    write_json(out_json, tables)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(seeds_markdown(tables), encoding="utf-8")
    print(f"{len(runs)} seed runs on {name} -> {out_md}, {out_json}")
    return tables[name]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Queue training-seed experiments and summarise their spread.")
    commands = parser.add_subparsers(dest="command", required=True)
    queue = commands.add_parser("queue", help="queue one DVC experiment per training seed")
    queue.add_argument("--data", required=True, help="data folder (ingest.data_dir of the experiments)")
    queue.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds, e.g. 42 43 44")
    queue.add_argument("--approach", action="append", choices=sorted(SEEDED_STAGES), help="default: all of them")
    queue.add_argument("--profile", help="the params profile of the runs (conf/profile/; default: the data's own)")
    queue.add_argument(
        "--start", action="store_true", help="then `dvc queue start` (one worker) and wait for the queue"
    )
    summary = commands.add_parser("report", help="write the seed table from dvc exp show")
    summary.add_argument("--data", required=True, help="data folder the seed runs used")
    summary.add_argument("--approach", action="append", choices=sorted(SEEDED_STAGES), help="default: all of them")
    summary.add_argument(
        "--profile", help="only the runs of this params profile (conf/profile/; default: the data's own)"
    )
    summary.add_argument(
        "--out", default="reports/seeds.md", help="Markdown table (a .json with the numbers beside it)"
    )
    args = parser.parse_args(argv)
    approaches = args.approach or list(SEEDED_STAGES)
    if args.command == "queue":
        from pipeline.reproduction.reproduce import default_profile

        names = []
        for command in queue_commands(args.data, args.seeds, approaches, args.profile or default_profile(args.data)):
            output = _dvc(command, capture=True)
            names += re.findall(r"Queued experiment '([^']+)'", output)
            print(output.strip(), flush=True)
        if args.start:
            # One worker: two trainings at once on a small machine only slow each other down.
            _dvc(["dvc", "queue", "start", "--jobs", "1"])
            wait_for_queue(names)
        return
    out = Path(args.out)
    report(args.data, out, out.with_suffix(".json"), approaches, profile=args.profile)


if __name__ == "__main__":
    sys.exit(run_cli(main))
