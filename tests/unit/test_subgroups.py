"""Results by subgroup (sex, age band, anatomical site, dx_type): the lesion bootstrap within each
subgroup, pooled small sites, age bands, and the ``below_overall`` flag."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from pipeline.config import HAM10000_CLASSES as CLASSES
from pipeline.evaluation.subgroups import (
    METRICS,
    OTHER,
    UNKNOWN,
    age_bands,
    external_metadata,
    flagged,
    mlflow_subgroup_metrics,
    pool_small,
    split_metadata,
    subgroup_labels,
    subgroup_results,
    subgroup_weights,
)

PARAMS = SimpleNamespace(bootstrap_resamples=300, bootstrap_seed=0, confidence=0.95, ece_bins=10)
MEL = CLASSES.index("mel")


def _probabilities(labels, right):
    """Confident probabilities: the true class where ``right``, the next class otherwise."""
    predicted = np.where(right, labels, (labels + 1) % len(CLASSES))
    p = np.full((len(labels), len(CLASSES)), 0.02)
    p[np.arange(len(labels)), predicted] = 0.88
    return p


def test_the_subgroup_bootstrap_draws_whole_lesions_and_never_splits_one():
    rng = np.random.default_rng(1)
    lesions = rng.choice([f"L{i}" for i in range(40)], size=150)
    mask = rng.random(150) < 0.5
    weights = subgroup_weights(lesions, mask, 500, seed=3)
    members = lesions[mask]
    assert weights.shape == (500, mask.sum())
    for lesion in np.unique(members):
        columns = weights[:, members == lesion]
        assert (columns == columns[:, :1]).all(), f"a resample split lesion {lesion}"
    # each resample draws as many lesions as the subgroup has: one image per lesion counts them
    first = [np.flatnonzero(members == lesion)[0] for lesion in np.unique(members)]
    assert (weights[:, first].sum(axis=1) == len(first)).all()


def test_a_subgroup_of_two_lesions_has_only_lesion_level_resample_values():
    # lesion A: two images right; lesion B: one right, one wrong -> resampled accuracy is 1, 0.75 or 0.5 only
    labels = np.array([0, 1, 2, 3])
    probabilities = _probabilities(labels, np.array([True, True, True, False]))
    metadata = pd.DataFrame({"sex": ["female"] * 4})
    results, _ = subgroup_results(
        {"m": probabilities}, labels, np.array(["A", "A", "B", "B"]), metadata, CLASSES, PARAMS
    )
    entry = results["m"]["sex"]["female"]
    assert entry["images"] == 4 and entry["lesions"] == 2 and entry["accuracy"] == 0.75
    assert entry["accuracy_ci"] is None  # 2 lesions: too few for an interval
    results, _ = subgroup_results(
        {"m": probabilities}, labels, np.array(["A", "A", "B", "B"]), metadata, CLASSES, PARAMS, min_interval_lesions=2
    )
    assert results["m"]["sex"]["female"]["accuracy_ci"] == [0.5, 1.0]


def test_sites_with_fewer_than_30_images_are_pooled_into_other():
    sites = np.array(["back"] * 40 + ["face"] * 30 + ["ear"] * 10 + ["acral"] * 5 + ["scalp"] * 29, dtype=object)
    pooled = pool_small(sites)
    assert set(pooled) == {"back", "face", OTHER}
    assert (pooled == OTHER).sum() == 44
    labels, skipped = subgroup_labels(pd.DataFrame({"localization": sites}))
    assert list(labels) == ["localization"] and (labels["localization"] == OTHER).sum() == 44
    assert set(skipped) == {"sex", "age", "dx_type"}


def test_age_bands_include_unknown_for_missing_or_unreadable_ages():
    ages = pd.Series(["", "nan", "abc", "0.0", "29.9", "30", "49.0", "50", "69", "70", "85.0"])
    assert list(age_bands(ages)) == [
        UNKNOWN,
        UNKNOWN,
        UNKNOWN,
        "<30",
        "<30",
        "30-49",
        "30-49",
        "50-69",
        "50-69",
        ">=70",
        ">=70",
    ]


def _synthetic(n=400, seed=0):
    """A test set where patients >= 70 are mostly misclassified and the rest mostly right."""
    rng = np.random.default_rng(seed)
    lesions = np.array([f"L{i // 2}" for i in range(n)])  # two images per lesion
    ages = np.repeat(rng.choice([20, 40, 60, 80, np.nan], size=n // 2), 2)
    labels = np.repeat(rng.integers(0, len(CLASSES), size=n // 2), 2)
    right = np.where(ages >= 70, rng.random(n) < 0.2, rng.random(n) < 0.9)
    metadata = pd.DataFrame(
        {
            "age": ages.astype(str),
            "sex": np.repeat(rng.choice(["male", "female", ""], n // 2), 2),
            "localization": np.repeat(rng.choice(["back", "face", "ear"], n // 2, p=[0.5, 0.45, 0.05]), 2),
            "dx_type": np.repeat(rng.choice(["histo", "follow_up"], n // 2), 2),
        }
    )
    return labels, _probabilities(labels, right), lesions, metadata


def test_a_subgroup_is_flagged_exactly_when_an_interval_lies_wholly_below_the_overall_value():
    labels, probabilities, lesions, metadata = _synthetic()
    results, skipped = subgroup_results({"m": probabilities}, labels, lesions, metadata, CLASSES, PARAMS)
    assert skipped == {}
    model = results["m"]
    assert list(model["age"]) == ["<30", "30-49", "50-69", ">=70", UNKNOWN]
    assert model["age"][">=70"]["below_overall"] and "accuracy" in model["age"][">=70"]["below_overall_in"]
    assert (
        not model["age"]["30-49"]["below_overall"] and model["age"]["30-49"]["accuracy"] > model["overall"]["accuracy"]
    )
    # one melanoma lesion, half its images right: a value, but no (zero-width) interval and no flag
    assert model["age"]["30-49"]["melanoma_lesions"] == 1 and model["age"]["30-49"]["melanoma_recall_ci"] is None
    checked = 0
    for grouping in ("sex", "age", "localization", "dx_type"):
        for entry in model[grouping].values():
            expected = [
                name
                for name in METRICS
                if entry[f"{name}_ci"] is not None
                and entry[f"{name}_ci"][1] is not None
                and entry[f"{name}_ci"][1] < model["overall"][name]
            ]
            assert entry["below_overall_in"] == expected and entry["below_overall"] == bool(expected)
            checked += 1
    assert checked >= 12
    assert ("age", ">=70", model["age"][">=70"]["below_overall_in"]) in flagged(model)
    # "ear" (few images) is pooled; "unknown" sex is a subgroup of its own
    assert set(model["localization"]) == {"back", "face", OTHER} and UNKNOWN in model["sex"]


def test_melanoma_recall_and_auc_are_undefined_where_they_cannot_be_computed():
    labels = np.zeros(6, dtype=int)  # one class only, no melanoma
    results, _ = subgroup_results(
        {"m": _probabilities(labels, np.ones(6, bool))},
        labels,
        None,
        pd.DataFrame({"dx_type": ["histo"] * 6}),
        CLASSES,
        PARAMS,
    )
    entry = results["m"]["dx_type"]["histo"]
    assert entry["melanoma_recall"] is None and entry["melanoma_recall_ci"] is None and entry["melanomas"] == 0
    assert entry["roc_auc_macro"] is None and entry["lesions"] == 6  # no lesion ids: images stand alone


def test_every_model_shares_one_subgroup_resample_and_mlflow_names_are_valid():
    labels, probabilities, lesions, metadata = _synthetic(seed=2)
    results, _ = subgroup_results(
        {"a": probabilities, "b": probabilities.copy()}, labels, lesions, metadata, CLASSES, PARAMS
    )
    assert results["a"] == results["b"]
    flat = mlflow_subgroup_metrics(results["a"], "test")
    assert "test_sub_age_ge70_accuracy_ci_low" in flat and "test_sub_age_lt30_images" in flat
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-.") for name in flat)
    assert all(np.isfinite(value) for value in flat.values())


def test_test_metadata_comes_from_the_ingest_index_in_the_split_order():
    index = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "lesion_id": ["1", "2", "3"],
            "dx": ["nv", "mel", "nv"],
            "age": ["40.0", "", "75.0"],
            "sex": ["male", "female", "unknown"],
        }
    )
    metadata = split_metadata(index, pd.DataFrame({"image_id": ["c", "a"]}))
    assert list(metadata.columns) == ["age", "sex"] and list(metadata["age"]) == ["75.0", "40.0"]


def test_an_isic_folder_gives_the_subgroups_its_metadata_has_and_skips_the_others(tmp_path):
    truth = "ISIC2018_Task3_Test_GroundTruth.csv"
    pd.DataFrame({"image": ["ISIC_1", "ISIC_2", "ISIC_3"], "MEL": [1, 0, 0], "NV": [0, 1, 1]}).to_csv(
        tmp_path / truth, index=False
    )
    pd.DataFrame(
        {
            "image": ["ISIC_3", "ISIC_1", "ISIC_2"],
            "age_approx": ["80", "35", ""],
            "anatom_site_general": ["head/neck", "trunk", "trunk"],
            "lesion_id": ["x", "y", ""],
        }
    ).to_csv(tmp_path / "ISIC_metadata.csv", index=False)
    metadata, lesions = external_metadata(tmp_path, truth)
    assert list(metadata["age"]) == ["35", "", "80"] and list(metadata["localization"]) == [
        "trunk",
        "trunk",
        "head/neck",
    ]
    assert list(lesions) == ["y", "ISIC_2", "x"]
    _, skipped = subgroup_labels(metadata)
    assert set(skipped) == {"sex", "dx_type"}


def test_subgroups_of_a_test_split_of_real_size_take_seconds():
    """About 1,431 images, 4 models, 4 groupings, 200 resamples: vectorised over the resamples."""
    import time

    labels, probabilities, lesions, metadata = _synthetic(n=1430, seed=4)
    started = time.perf_counter()
    subgroup_results(
        {f"m{i}": probabilities for i in range(4)},
        labels,
        lesions,
        metadata,
        CLASSES,
        SimpleNamespace(**{**vars(PARAMS), "bootstrap_resamples": 200}),
    )
    assert time.perf_counter() - started < 30
