"""The comparison report (``reports/comparison.md``) and the terminal summary of ``evaluate``.

Every number is printed with its 95% interval, and a verdict between two approaches comes
from the interval of their paired difference, never from which number is larger: where that
interval holds 0 the report says the test set does not tell them apart. Smoke runs (a
training section with ``smoke_run: true``) are listed under their own heading: they prove that
the stage runs and are not results.
"""

from __future__ import annotations

import math
from typing import Any

#: The headline metrics, in the order the report shows them.
HEADLINE = ("balanced_accuracy", "macro_f1", "melanoma_recall", "roc_auc_macro", "accuracy", "ece")


def with_interval(value: float, ci: list[float] | None, digits: int = 3) -> str:
    """``0.661 [0.620, 0.701]`` (just the value when there is no interval)."""
    if ci is None or any(not math.isfinite(bound) for bound in ci):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def verdict(pair: str, paired: dict[str, Any]) -> str:
    """Who is better on this metric, if the paired interval says so."""
    first, _, second = pair.partition(" vs ")
    if not paired["distinguished"]:
        return "not told apart"
    return f"**{first if paired['difference'] > 0 else second}**"


def _results_table(metrics: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in HEADLINE:
        cells = [with_interval(metrics[name][key], metrics[name].get(f"{key}_ci")) for name in names]
        if key == "ece":  # no interval (see pipeline.evaluation.uncertainty.SE_METRICS): its standard error
            cells = [
                f"{metrics[name][key]:.3f}"
                + (f" (se {metrics[name]['ece_se']:.3f})" if "ece_se" in metrics[name] else "")
                for name in names
            ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _pairs_table(paired: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| pair (first − second) | balanced accuracy difference | verdict | melanoma recall difference | verdict | accuracy: McNemar exact p |",
        "|---|---|---|---|---|---|",
    ]
    for pair, result in paired.items():
        cells = []
        for key in ("balanced_accuracy", "melanoma_recall"):
            item = result[key]
            cells += [f"{item['difference']:+.3f} [{item['ci'][0]:+.3f}, {item['ci'][1]:+.3f}]", verdict(pair, item)]
        mcnemar = result["accuracy_mcnemar"]
        cells.append(
            f"{mcnemar['p_value']:.2g} ({mcnemar['only_first_right']} vs {mcnemar['only_second_right']} images)"
        )
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return lines


def _pair_of(paired: dict[str, dict[str, Any]], first: str, second: str) -> tuple[dict[str, Any], int] | None:
    """The balanced-accuracy difference of ``first`` minus ``second`` as stored (either order),
    with the sign that turns it into ``first - second``."""
    if f"{first} vs {second}" in paired:
        return paired[f"{first} vs {second}"]["balanced_accuracy"], 1
    if f"{second} vs {first}" in paired:
        return paired[f"{second} vs {first}"]["balanced_accuracy"], -1
    return None


def comparison_report(
    metrics: dict[str, dict[str, Any]],
    classes: tuple[str, ...],
    title: str,
    paired: dict[str, dict[str, Any]] | None = None,
    bootstrap: dict[str, Any] | None = None,
) -> str:
    """The Markdown report: results with intervals, paired verdicts, per-class recall, smoke runs."""
    names = [name for name in metrics if not metrics[name].get("smoke_run")]
    smoke = [name for name in metrics if metrics[name].get("smoke_run")]
    lines = [f"# {title}", "", "Test split (lesion-grouped, never used for model selection)."]
    if bootstrap:
        lines.append(
            f"In brackets: {bootstrap['confidence']:.0%} intervals, a bootstrap of {bootstrap['resamples']} resamples of "
            f"whole {bootstrap['grouped_by']}s (seed {bootstrap['seed']})."
        )
    lines += [""] + _results_table(metrics, names)
    if paired:
        lines += [
            "",
            "## Which differences the test set can tell",
            "",
            "The paired difference (the same resamples for both) with its interval; a verdict only where the interval",
            "excludes 0. McNemar's exact test compares accuracy on the images exactly one of the two gets right.",
            "",
        ] + _pairs_table(paired)
    lines += ["", "## Recall per class (support: test images)", ""]
    lines += ["| dx | support | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for dx in classes:
        cells = [
            with_interval(metrics[name]["recall"][dx], (metrics[name].get("recall_ci") or {}).get(dx), 2)
            for name in names
        ]
        label = f"{dx} (melanoma)" if dx == "mel" else dx
        lines.append(f"| {label} | {metrics[names[0]]['support'][dx] if names else ''} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "One image changes a class's recall by 1 / its support (HAM10000's 17 `df` and 20 `vasc` test images: 0.05-0.06):",
        "read the intervals, not the digits.",
    ]
    for name in names:
        if "weights" in metrics[name]:
            shares = ", ".join(f"{model} {weight:.2f}" for model, weight in metrics[name]["weights"].items())
            lines += [
                "",
                f"`{name}`: the weighted mean of the models' probabilities, weights chosen on the validation "
                f"split (validation balanced accuracy {metrics[name]['val_balanced_accuracy']:.4f}): {shares}.",
            ]
            best = metrics[name].get("best_single_on_val")
            pair = _pair_of(paired or {}, name, best) if best else None
            if pair is not None:
                item, sign = pair
                # (+ 0.0: a zero difference read backwards is -0.0, printed "-0.000")
                low, high = sorted((sign * item["ci"][0] + 0.0, sign * item["ci"][1] + 0.0))
                told = "told apart" if item["distinguished"] else "not told apart"
                lines.append(
                    f"Against the best single model on validation, `{best}`: balanced accuracy "
                    f"{sign * item['difference'] + 0.0:+.3f} [{low:+.3f}, {high:+.3f}] ({told})."
                )
    if smoke:
        lines += [
            "",
            "## Smoke runs: prove the stage runs; not a result",
            "",
            "Trained with `smoke_run: true` (bounded size, epochs or images): never compared, no ensemble weight.",
            "",
        ]
        lines += ["| model | balanced accuracy | accuracy | melanoma recall |", "|---|---|---|---|"]
        for name in smoke:
            row = metrics[name]
            lines.append(
                f"| {name} | {row['balanced_accuracy']:.3f} | {row['accuracy']:.3f} | {row['melanoma_recall']:.3f} |"
            )
    lines += [
        "",
        "Balanced accuracy is the mean per-class recall, the ISIC 2018 challenge metric; accuracy alone",
        "is dominated by `nv` (about two thirds of HAM10000). ECE: expected calibration error, lower is better.",
        "",
    ]
    return "\n".join(lines)


def summary_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The headline test metrics of each model, one row per model, intervals where there are some."""
    keys = ("balanced_accuracy", "accuracy", "macro_f1", "melanoma_recall")
    width = 22
    lines = [f"{'model':<13} " + " ".join(f"{key:>{width}}" for key in keys)]
    for name, values in metrics.items():
        if not isinstance(values, dict) or "balanced_accuracy" not in values:
            continue
        cells = [with_interval(values[key], values.get(f"{key}_ci")) for key in keys]
        suffix = "  (smoke run: not a result)" if values.get("smoke_run") else ""
        lines.append(f"{name:<13} " + " ".join(f"{cell:>{width}}" for cell in cells) + suffix)
    return "\n".join(lines)
