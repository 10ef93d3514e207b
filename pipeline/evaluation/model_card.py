"""A model card per real model (``reports/model_cards/<model>.md``), written by ``evaluate`` from
what it measured, after Mitchell et al. 2019 (*Model Cards for Model Reporting*): intended and
out-of-scope use, training and evaluation data, metrics with intervals, results by subgroup,
calibration, flagged subgroups, the external test set, caveats.

:func:`publish` also logs every model's subgroup numbers to its MLflow run (``test_sub_*``,
``external_sub_*``) with ``subgroups.json``, the card to the model's run (artifact
``model_card/<model>.md``), and points the registered model version at it (tag ``model_card``,
and a short description), so ``models:/NAME@champion`` carries its card.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.subgroups import (
    GROUPINGS,
    METRICS,
    MIN_INTERVAL_LESIONS,
    MIN_SITE_IMAGES,
    flagged,
)

SECTIONS = (
    "Model details",
    "Intended use",
    "Out-of-scope use",
    "Training data",
    "Evaluation data",
    "Metrics",
    "Subgroups",
    "Calibration",
    "Flagged subgroups",
    "External test set",
    "Caveats",
)
HEADLINE = (
    ("balanced accuracy (macro recall)", "balanced_accuracy"),
    ("accuracy", "accuracy"),
    ("macro-F1", "macro_f1"),
    ("melanoma recall", "melanoma_recall"),
    ("ROC AUC (macro, one-vs-rest)", "roc_auc_macro"),
)
TITLES = {
    "sex": "Sex",
    "age": "Age band (years)",
    "localization": f"Anatomical site (fewer than {MIN_SITE_IMAGES} images: other)",
    "dx_type": "How the diagnosis was confirmed (dx_type)",
}
#: Registered model version descriptions are short in some MLflow stores (5,000 characters).
DESCRIPTION_LIMIT = 4000

INTENDED = (
    "Research on automated classification of dermoscopic images of pigmented skin lesions into the seven HAM10000 "
    "classes (akiec, bcc, bkl, df, mel, nv, vasc): comparing methods, studying errors and calibration, teaching."
)
OUT_OF_SCOPE = (
    "This is a research model, **not a diagnostic device**: it is not cleared or validated for clinical use, and no "
    "diagnosis, triage or treatment decision may rest on it. Out of scope as well: clinical (non-dermoscopic) or "
    "smartphone photographs, lesions outside the seven classes (e.g. squamous cell carcinoma), darker skin types, "
    "mucosal and nail lesions, and any population unlike the training data's (below)."
)
TRAINING = (
    "HAM10000 (Tschandl, Rosendahl and Kittler 2018): 10,015 dermoscopic images of 7,470 pigmented lesions from two "
    "sources, the ViDIR group of the Department of Dermatology at the Medical University of Vienna (Austria) and "
    "Cliff Rosendahl's skin cancer practice in Queensland (Australia), collected over 20 years. Known biases: mostly "
    "fair-skinned patients of European and Australian clinics (skin type is not recorded); dermoscopy only; images "
    "chosen for a challenge data set, not consecutive patients; nevi are two thirds of the images and df/vasc about "
    "1% each; the diagnosis was confirmed by a mix of histopathology (over half, and nearly all malignant lesions), "
    "follow-up, expert consensus and confocal microscopy, so the labels of benign lesions are less certain. "
    "The model was trained on the train split (lesion-grouped, stratified); the validation split chose its best "
    "epoch and the ensemble's weights; the test split below was used only here."
)
DEMO_NOTE = "**These are the embedded synthetic demo data: every number on this card means nothing medically.**"


def _f(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.3f}"


def with_interval(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    if not ci or ci[0] is None:
        return _f(value)
    return f"{_f(value)} [{_f(ci[0])}, {_f(ci[1])}]"


def _mix(values: pd.Series) -> str:
    counts = values.replace("", "unknown").value_counts()
    return ", ".join(f"{key} {count} ({count / counts.sum():.0%})" for key, count in counts.items())


def subgroup_table(results: dict[str, Any]) -> list[str]:
    """Markdown tables of one model's subgroups, one per grouping."""
    lines = []
    for grouping in GROUPINGS:
        if grouping not in results:
            continue
        lines += [
            "",
            f"**{TITLES[grouping]}**",
            "",
            "| subgroup | images | lesions | accuracy | macro recall | melanoma recall | ROC AUC | below overall |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for subgroup, entry in results[grouping].items():
            cells = [with_interval(entry[name], entry[f"{name}_ci"]) for name in METRICS]
            flag = "**yes**: " + ", ".join(entry["below_overall_in"]) if entry["below_overall"] else ""
            lines.append(
                f"| {subgroup} | {entry['images']} | {entry['lesions']} | " + " | ".join(cells) + f" | {flag} |"
            )
    return lines


def _flag_lines(results: dict[str, Any]) -> list[str]:
    found = flagged(results)
    if not found:
        return ["None: no subgroup's interval lies wholly below the whole set's value."]
    return [
        f"- {grouping} = {subgroup}: "
        + ", ".join(
            f"{metric} {with_interval(results[grouping][subgroup][metric], results[grouping][subgroup][metric + '_ci'])}"
            f" vs {_f(results['overall'][metric])} overall"
            for metric in metrics
        )
        for grouping, subgroup, metrics in found
    ]


def card_text(
    name: str,
    metrics: dict[str, Any],
    subgroups: dict[str, Any],
    skipped: dict[str, str],
    index: pd.DataFrame,
    test: pd.DataFrame,
    data: str,
    bootstrap: dict[str, Any],
    registry: dict[str, Any],
    external: dict[str, Any],
    ece_bins: int,
    plots: str,
) -> str:
    """The card's Markdown. ``external``: ``{"metrics", "subgroups", "skipped", "source"}`` or
    ``{"skipped": why}``; ``plots``: the model's figure folder relative to the card."""
    support = metrics["support"]
    lines = [
        f"# Model card: `{name}`",
        "",
        f"Written by the `evaluate` stage from what it measured on the `{data}` data; `dvc repro evaluate` rewrites it.",
        *(["", DEMO_NOTE] if data == "demo" else []),
        "",
        "## Model details",
        "",
        f"- approach: `{name}` (the stage `train_{name}` of dvc.yaml; parameters in params.yaml `train_{name}`)",
        f"- registered model: `{registry.get('registered_model', '–')}` version {registry.get('version', '–')}"
        f" (MLflow run `{registry.get('run_id', '–')}`)",
        "- input: an RGB dermoscopic image, centre square, resized; output: probabilities of the classes "
        + ", ".join(support),
        "",
        "## Intended use",
        "",
        INTENDED,
        "",
        "## Out-of-scope use",
        "",
        OUT_OF_SCOPE,
        "",
        "## Training data",
        "",
        TRAINING,
        "",
        f"The ingested `{data}` set: {len(index)} images of {index['lesion_id'].nunique()} lesions; classes: {_mix(index['dx'])}"
        + (f"; diagnosis confirmation: {_mix(index['dx_type'])}" if "dx_type" in index.columns else "")
        + ".",
        "",
        "## Evaluation data",
        "",
        f"The test split: {len(test)} images of {test['lesion_id'].nunique()} lesions, no lesion shared with training or "
        f"validation; classes: {_mix(test['dx'])}. Intervals are {bootstrap['confidence']:.0%} percentile intervals of "
        f"{bootstrap['resamples']} bootstrap resamples of whole lesions (seed {bootstrap['seed']}).",
        "",
        "## Metrics",
        "",
        "| metric | test split |",
        "|---|---|",
    ]
    lines += [f"| {label} | {with_interval(metrics.get(key), metrics.get(key + '_ci'))} |" for label, key in HEADLINE]
    lines += ["", "| class | test images | recall | precision |", "|---|---|---|---|"]
    lines += [
        f"| {dx} | {count} | {with_interval(metrics['recall'][dx], (metrics.get('recall_ci') or {}).get(dx))} | {_f(metrics['precision'][dx])} |"
        for dx, count in support.items()
    ]
    lines += [
        "",
        "## Subgroups",
        "",
        "Per subgroup of the test split, each number with its interval from the lesion bootstrap run within the "
        "subgroup; macro recall averages the classes present in the subgroup, melanoma recall needs a melanoma, "
        f"ROC AUC two classes; a value without an interval comes from fewer than {MIN_INTERVAL_LESIONS} lesions "
        "(melanoma recall: melanoma lesions). *below overall*: the interval lies wholly below the whole test set's value "
        f"(overall: accuracy {_f(subgroups['overall']['accuracy'])}, macro recall {_f(subgroups['overall']['macro_recall'])}, "
        f"melanoma recall {_f(subgroups['overall']['melanoma_recall'])}, ROC AUC {_f(subgroups['overall']['roc_auc_macro'])}).",
        *subgroup_table(subgroups),
        *([""] + [f"- not reported by {key}: {why}" for key, why in skipped.items()] if skipped else []),
    ]
    lines += [
        "",
        "## Calibration",
        "",
        f"Top-label expected calibration error (ECE, {ece_bins} equal-width confidence bins): {_f(metrics['ece'])}"
        + (f" (bootstrap standard error {_f(metrics['ece_se'])})" if "ece_se" in metrics else "")
        + ".",
        "",
        f"![reliability diagram]({plots}/reliability.png)",
        "",
        f"The test images it got wrong with the highest confidence: [{plots}/confident_errors.png]({plots}/confident_errors.png).",
        "",
        "## Flagged subgroups",
        "",
        *_flag_lines(subgroups),
        "",
        "## External test set",
        "",
    ]
    if "metrics" in external:
        lines += [
            f"`{external['source']}` (ISIC layout, {external['metrics']['images']} images; images resampled one by one "
            "unless its metadata has lesion ids):",
            "",
            ", ".join(
                f"{label} {with_interval(external['metrics'].get(key), external['metrics'].get(key + '_ci'))}"
                for label, key in HEADLINE
            )
            + ".",
        ]
        lines += subgroup_table(external.get("subgroups") or {})
        lines += [""] + [
            f"- subgroups not reported by {key}: {why}" for key, why in (external.get("skipped") or {}).items()
        ]
        lines += (
            ["", "Flagged on the external set:", "", *_flag_lines(external["subgroups"])]
            if external.get("subgroups")
            else []
        )
    else:
        lines.append(
            f"Not evaluated: {external.get('skipped', 'no external set')}. Its subgroups are reported only where "
            "its metadata has sex, age, anatomical site or diagnosis-confirmation columns."
        )
    small = sorted(((count, dx) for dx, count in support.items() if count), key=lambda item: item[0])[:2]
    lines += [
        "",
        "## Caveats",
        "",
        *(f"- `{dx}` has {count} test images: one image moves its recall by {1 / count:.2f}." for count, dx in small),
        "- Subgroups are small: a wide interval is no evidence that the model works there, only that the test "
        "set cannot tell; subgroups are not independent of class (e.g. most nevi were confirmed by follow-up).",
        "- Nothing here measures performance on skin types, devices, clinics or prevalences unlike HAM10000's.",
        "",
    ]
    return "\n".join(lines)
