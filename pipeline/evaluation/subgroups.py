"""For whom a model works: test results by sex, age band, anatomical site and diagnosis confirmation.

The HAM10000 metadata carries ``sex``, ``age``, ``localization`` and ``dx_type`` (histopathology,
follow-up, expert consensus, confocal microscopy). The split files keep only
``image_id,lesion_id,dx``; the ingest output's ``index.csv`` keeps every metadata column, so the
test images' metadata is read from there (no stage output changes).

Each subgroup gets its images and lesions, accuracy, macro recall over the classes present,
melanoma recall where it has melanomas and macro one-vs-rest ROC AUC where defined, each with its
95% interval from the lesion bootstrap of :mod:`pipeline.evaluation.uncertainty`, run *within*
the subgroup: each resample draws the subgroup's lesions with replacement, all images of a lesion
together, and the same resample weights serve every model. A subgroup is flagged
``below_overall`` when the interval of one of its numbers lies wholly below that number on the
whole test set (a subgroup that is only small gets a wide interval and no flag; one of fewer than
:data:`MIN_INTERVAL_LESIONS` lesions gets its value without an interval).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.uncertainty import interval, resample_weights
from pipeline.metrics import weighted_metrics

GROUPINGS = ("sex", "age", "localization", "dx_type")
#: The metadata column each grouping reads (``age`` is banded).
COLUMNS = {"sex": "sex", "age": "age", "localization": "localization", "dx_type": "dx_type"}
#: Age bands: [low, high) in years, and their names; a missing or unreadable age is "unknown".
AGE_BANDS = ((0, 30, "<30"), (30, 50, "30-49"), (50, 70, "50-69"), (70, np.inf, ">=70"))
UNKNOWN = "unknown"
#: Sites with fewer test images than this are pooled into "other" (evaluate has no param for it yet).
MIN_SITE_IMAGES = 30
OTHER = "other"
#: A number gets an interval (and can be flagged) only from this many lesions (melanoma recall:
#: melanoma lesions): the percentile interval of a few lesions that all agree has width 0.
MIN_INTERVAL_LESIONS = 5
#: Subgroup metric -> the key of :func:`weighted_metrics` that computes it.
METRICS = {
    "accuracy": "accuracy",
    "macro_recall": "balanced_accuracy",
    "melanoma_recall": "melanoma_recall",
    "roc_auc_macro": "roc_auc_macro",
}
#: Names an ISIC-layout metadata file may give these columns (ISIC 2018/2019 archive exports).
ALIASES = {
    "image": ("image", "image_id", "isic_id", "image_name"),
    "lesion_id": ("lesion_id",),
    "sex": ("sex", "gender"),
    "age": ("age", "age_approx"),
    "localization": ("localization", "anatom_site_general", "anatom_site_general_challenge", "anatom_site"),
    "dx_type": ("dx_type", "diagnosis_confirm_type"),
}


def _clean(values: pd.Series) -> np.ndarray:
    text = values.astype(str).str.strip().str.lower()
    return np.where(text.isin(["", "nan", "none", "unknown"]), UNKNOWN, text).astype(object)


def age_bands(ages: pd.Series) -> np.ndarray:
    """The band of each age (``<30``, ``30-49``, ``50-69``, ``>=70``, ``unknown``)."""
    years = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=np.float64)
    bands = np.full(len(years), UNKNOWN, dtype=object)
    for low, high, name in AGE_BANDS:
        bands[(years >= low) & (years < high)] = name
    return bands


def pool_small(values: np.ndarray, minimum: int = MIN_SITE_IMAGES) -> np.ndarray:
    """``values`` with every value held by fewer than ``minimum`` images replaced by "other"."""
    names, counts = np.unique(values, return_counts=True)
    small = names[counts < minimum]
    return np.where(np.isin(values, small), OTHER, values).astype(object)


def subgroup_labels(
    metadata: pd.DataFrame, min_site_images: int = MIN_SITE_IMAGES
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per grouping, each image's subgroup name; and the groupings skipped, with why."""
    labels, skipped = {}, {}
    for grouping in GROUPINGS:
        column = COLUMNS[grouping]
        if column not in metadata.columns:
            skipped[grouping] = f"no '{column}' column in the metadata"
            continue
        if grouping == "age":
            labels[grouping] = age_bands(metadata[column])
        elif grouping == "localization":
            labels[grouping] = pool_small(_clean(metadata[column]), min_site_images)
        else:
            labels[grouping] = _clean(metadata[column])
    return labels, skipped


def _order(grouping: str, values: np.ndarray) -> list[str]:
    """Subgroups in reading order: age bands by age, the others by size; other/unknown last."""
    present = set(values)
    if grouping == "age":
        return [name for *_, name in AGE_BANDS if name in present] + ([UNKNOWN] if UNKNOWN in present else [])
    names, counts = np.unique(values, return_counts=True)
    ranked = [str(name) for _, name in sorted(zip(-counts, names, strict=True)) if name not in (OTHER, UNKNOWN)]
    return ranked + [name for name in (OTHER, UNKNOWN) if name in present]


def subgroup_weights(lesions: np.ndarray | None, mask: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Resample weights (resamples x images of ``mask``) of one subgroup: its lesions drawn with
    replacement, all images of a lesion together (None: every image its own lesion)."""
    members = np.asarray(lesions)[mask] if lesions is not None else None
    return resample_weights(members, int(mask.sum()), resamples, seed)


def _value(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _entry(
    labels: np.ndarray,
    probabilities: np.ndarray,
    weights: np.ndarray,
    melanoma: int,
    confidence: float,
    overall: dict[str, float | None],
    ece_bins: int,
    lesions: dict[str, int],
    minimum: int,
) -> dict[str, Any]:
    """One subgroup's numbers for one model, with intervals and the ``below_overall`` flags."""
    with warnings.catch_warnings():  # all-NaN means: undefined in this (re)sample
        warnings.simplefilter("ignore", RuntimeWarning)
        point = weighted_metrics(labels, probabilities, np.ones((1, len(labels))), melanoma, ece_bins)
        samples = weighted_metrics(labels, probabilities, weights, melanoma, ece_bins)
    out: dict[str, Any] = {}
    flagged = []
    for name, key in METRICS.items():
        value = _value(point[key][0])
        enough = lesions["melanoma_lesions" if name == "melanoma_recall" else "lesions"] >= minimum
        ci = [_value(bound) for bound in interval(samples[key], confidence)] if value is not None and enough else None
        out[name], out[f"{name}_ci"] = value, ci
        reference = overall.get(name)
        if ci is not None and ci[1] is not None and reference is not None and ci[1] < reference:
            flagged.append(name)
    out["below_overall"] = bool(flagged)
    out["below_overall_in"] = flagged
    return out


def overall_values(labels: np.ndarray, probabilities: np.ndarray, melanoma: int) -> dict[str, float | None]:
    """The whole set's point value of every subgroup metric (the reference of the flag)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = weighted_metrics(labels, probabilities, np.ones((1, len(labels))), melanoma)
    return {name: _value(point[key][0]) for name, key in METRICS.items()}


def subgroup_results(
    probabilities: dict[str, np.ndarray],
    labels: np.ndarray,
    lesions: np.ndarray | None,
    metadata: pd.DataFrame,
    classes: tuple[str, ...],
    params: Any,
    min_site_images: int = MIN_SITE_IMAGES,
    min_interval_lesions: int = MIN_INTERVAL_LESIONS,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``({model: {"overall": {...}, grouping: {subgroup: {...}}}}, {skipped grouping: why})``.

    ``lesions`` (one id per image; None: every image its own lesion) groups the bootstrap;
    ``params`` gives ``bootstrap_resamples``, ``bootstrap_seed``, ``confidence``, ``ece_bins``.
    Each subgroup's resample weights are drawn once and shared by all models."""
    labels = np.asarray(labels)
    melanoma = classes.index("mel")
    groupings, skipped = subgroup_labels(metadata.reset_index(drop=True), min_site_images)
    results: dict[str, Any] = {}
    for name, p in probabilities.items():
        overall = overall_values(labels, p, melanoma)
        results[name] = {"overall": {"images": int(len(labels)), **overall}}
    position = 0
    for grouping, values in groupings.items():
        for name in results:
            results[name][grouping] = {}
        for subgroup in _order(grouping, values):
            mask = values == subgroup
            weights = subgroup_weights(lesions, mask, params.bootstrap_resamples, params.bootstrap_seed + position)
            position += 1
            ids = np.asarray(lesions)[mask] if lesions is not None else np.arange(int(mask.sum()))
            counts = {
                "images": int(mask.sum()),
                "lesions": int(len(np.unique(ids))),
                "melanomas": int(np.sum(labels[mask] == melanoma)),
                "melanoma_lesions": int(len(np.unique(ids[labels[mask] == melanoma]))),
            }
            for name, p in probabilities.items():
                reference = {key: value for key, value in results[name]["overall"].items() if key != "images"}
                results[name][grouping][subgroup] = {
                    **counts,
                    **_entry(
                        labels[mask],
                        p[mask],
                        weights,
                        melanoma,
                        params.confidence,
                        reference,
                        params.ece_bins,
                        counts,
                        min_interval_lesions,
                    ),
                }
    return results, skipped


def split_metadata(index: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The metadata columns of the ingest index for the test images, in the test split's order."""
    columns = [column for column in index.columns if column in COLUMNS.values()]
    return index.set_index("image_id").loc[list(test["image_id"]), columns].reset_index(drop=True)


def external_metadata(folder: Path, truth_file: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Metadata of an ISIC-layout folder, in its ground truth's row order, and its lesion ids
    (None when it has none). Read from the ground truth and any other CSV in the folder with an
    image column (e.g. ``ISIC2018_Task3_Test_LesionGroupings.csv``, an ISIC metadata export);
    column names are mapped through :data:`ALIASES`."""
    truth = pd.read_csv(folder / truth_file, dtype=str, keep_default_na=False)
    merged = pd.DataFrame({"image": truth["image"]})
    for path in [folder / truth_file, *sorted(p for p in folder.glob("*.csv") if p.name != truth_file)]:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.columns = [str(column).strip().lower() for column in table.columns]
        key = next((column for column in ALIASES["image"] if column in table.columns), None)
        if key is None:
            continue
        table = table.drop_duplicates(key).set_index(key)
        for wanted, names in ALIASES.items():
            found = next((column for column in names if column in table.columns and column != key), None)
            if wanted != "image" and found is not None and wanted not in merged.columns:
                merged[wanted] = table[found].reindex(merged["image"]).fillna("").to_numpy()
    lesions = merged["lesion_id"].to_numpy() if "lesion_id" in merged.columns else None
    if lesions is not None and (lesions == "").any():  # images without a lesion id stand alone
        lesions = np.where(lesions == "", merged["image"].to_numpy(), lesions)
    return merged.drop(columns=["image", *(["lesion_id"] if "lesion_id" in merged.columns else [])]), lesions


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name.replace(">=", "ge").replace("<", "lt")).strip("_")


def mlflow_subgroup_metrics(results: dict[str, Any], prefix: str) -> dict[str, float]:
    """One model's subgroup numbers as MLflow metrics: ``test_sub_sex_female_accuracy`` (and
    ``_ci_low`` / ``_ci_high``), ``..._images``, ``..._below_overall`` (1 or 0)."""
    flat: dict[str, float] = {}
    for grouping, subgroups in results.items():
        if grouping == "overall":
            continue
        for subgroup, entry in subgroups.items():
            stem = f"{prefix}_sub_{grouping}_{_slug(subgroup)}"
            flat[f"{stem}_images"] = entry["images"]
            flat[f"{stem}_below_overall"] = float(entry["below_overall"])
            for name in METRICS:
                if entry[name] is not None:
                    flat[f"{stem}_{name}"] = entry[name]
                    low, high = entry[f"{name}_ci"] or (None, None)
                    if low is not None and high is not None:
                        flat[f"{stem}_{name}_ci_low"], flat[f"{stem}_{name}_ci_high"] = low, high
    return flat


def flagged(results: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """``(grouping, subgroup, metrics)`` of every subgroup of one model flagged ``below_overall``."""
    return [
        (grouping, subgroup, entry["below_overall_in"])
        for grouping, subgroups in results.items()
        if grouping != "overall"
        for subgroup, entry in subgroups.items()
        if entry["below_overall"]
    ]
