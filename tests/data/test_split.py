"""split: lesion-grouped, stratified, seeded, verified."""

import pandas as pd
import pytest

from pipeline.config import HAM10000_CLASSES, SplitParams
from pipeline.errors import PipelineError
from pipeline.data.split import SPLITS, split_dataset, split_statistics, verify_splits

PARAMS = SplitParams(test_fraction=0.2, val_fraction=0.2)


@pytest.fixture
def tiny_index(tiny_ham):
    return pd.read_csv(tiny_ham / "HAM10000_metadata.csv", dtype=str)


def test_no_lesion_on_two_sides_and_every_class_everywhere(tiny_index):
    assert tiny_index["lesion_id"].duplicated().any(), "fixture must have several images per lesion"
    splits = split_dataset(tiny_index, HAM10000_CLASSES, PARAMS, seed=3)
    lesions = [set(splits[name]["lesion_id"]) for name in SPLITS]
    assert not (lesions[0] & lesions[1]) and not (lesions[0] & lesions[2]) and not (lesions[1] & lesions[2])
    for name in SPLITS:
        assert set(splits[name]["dx"]) == set(HAM10000_CLASSES)
    assert sum(len(splits[name]) for name in SPLITS) == len(tiny_index)
    assert set().union(*(set(splits[name]["image_id"]) for name in SPLITS)) == set(tiny_index["image_id"])


def test_fractions_are_roughly_respected(tiny_index):
    splits = split_dataset(tiny_index, HAM10000_CLASSES, PARAMS, seed=3)
    for name in ("val", "test"):
        assert 0.1 < len(splits[name]) / len(tiny_index) < 0.3


def test_same_seed_same_split_other_seed_other_split(tiny_index):
    first = split_dataset(tiny_index, HAM10000_CLASSES, PARAMS, seed=3)
    again = split_dataset(tiny_index, HAM10000_CLASSES, PARAMS, seed=3)
    other = split_dataset(tiny_index, HAM10000_CLASSES, PARAMS, seed=4)
    assert all(first[name].equals(again[name]) for name in SPLITS)
    assert not first["test"]["image_id"].equals(other["test"]["image_id"])


def test_verify_rejects_a_leak_and_a_missing_class(tiny_index):
    splits = split_dataset(tiny_index, HAM10000_CLASSES, PARAMS, seed=3)
    leaked = dict(splits, test=pd.concat([splits["test"], splits["train"].iloc[[0]]]))
    with pytest.raises(PipelineError, match="lesion_id\\(s\\) in both train and test"):
        verify_splits(leaked, HAM10000_CLASSES)
    no_df = dict(splits, val=splits["val"][splits["val"]["dx"] != "df"])
    with pytest.raises(PipelineError, match="class\\(es\\) df absent from val"):
        verify_splits(no_df, HAM10000_CLASSES)


def test_too_few_lesions_of_a_class_fails_loudly(tiny_index):
    # Keep only two lesions of vasc: three splits cannot all get one.
    vasc_lesions = tiny_index.loc[tiny_index["dx"] == "vasc", "lesion_id"].unique()[:2]
    keep = (tiny_index["dx"] != "vasc") | tiny_index["lesion_id"].isin(vasc_lesions)
    with pytest.raises(PipelineError, match="vasc absent"):
        split_dataset(tiny_index[keep], HAM10000_CLASSES, PARAMS, seed=3)


def test_statistics_count_every_class(tiny_index):
    splits = split_dataset(tiny_index, HAM10000_CLASSES, PARAMS, seed=3)
    statistics = split_statistics(splits, HAM10000_CLASSES)
    for name in SPLITS:
        assert sum(statistics[name][dx] for dx in HAM10000_CLASSES) == statistics[name]["images"] == len(splits[name])
        assert statistics[name]["lesions"] == splits[name]["lesion_id"].nunique()
