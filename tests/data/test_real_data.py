"""The real HAM10000 copy (skipped when absent): it validates, and splits without leaks."""

import pytest

from pipeline.config import HAM10000_CLASSES, IngestParams, SplitParams
from pipeline.data.ingest import ingest, load_ingested, locate_images, read_metadata
from pipeline.data.split import SPLITS, split_dataset

pytestmark = pytest.mark.real_data


def test_real_metadata_and_files_are_complete(real_ham10000):
    metadata = read_metadata(real_ham10000, HAM10000_CLASSES)
    assert len(metadata) == 10015
    assert metadata["lesion_id"].nunique() == 7470
    assert metadata["dx"].value_counts().to_dict() == {
        "nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115
    }
    _, missing, _ = locate_images(real_ham10000, metadata["image_id"])
    assert missing == []


def test_real_split_has_no_shared_lesion_and_every_class(real_ham10000):
    metadata = read_metadata(real_ham10000, HAM10000_CLASSES)
    splits = split_dataset(metadata, HAM10000_CLASSES, SplitParams(test_fraction=0.15, val_fraction=0.15), seed=42)
    for first in SPLITS:
        for second in SPLITS:
            if first < second:
                assert not set(splits[first]["lesion_id"]) & set(splits[second]["lesion_id"])
    for name in SPLITS:
        assert set(splits[name]["dx"]) == set(HAM10000_CLASSES)
        assert abs(splits[name]["dx"].eq("mel").mean() - 1113 / 10015) < 0.02  # stratified


@pytest.mark.slow
def test_real_images_all_decode(real_ham10000, tmp_path, base_params):
    ingest(real_ham10000, tmp_path / "ingested", base_params, IngestParams(data_dir=str(real_ham10000)))
    images, index = load_ingested(tmp_path / "ingested")
    assert images.shape == (10015, 32, 32, 3)
    assert images.std() > 10  # real pixels, not zeros
