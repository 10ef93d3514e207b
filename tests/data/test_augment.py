"""augment: train split only, balanced up to the target, capped, seeded."""

import numpy as np
import pandas as pd
import pytest

from pipeline.data.augment import augment_train, plan_copies
from pipeline.config import AugmentParams


def _params(**changes):
    values = dict(balance_to=40, max_copies_per_image=3, horizontal_flip=0.5, vertical_flip=0.5, rotate_limit=90,
                  shift_limit=0.05, scale_limit=0.1, brightness_limit=0.2, contrast_limit=0.2, hue_shift_limit=5,
                  saturation_shift_limit=10)
    values.update(changes)
    return AugmentParams(**values)


@pytest.fixture
def train():
    counts = {"nv": 60, "mel": 20, "df": 5}
    rows = [{"image_id": f"{dx}_{i}", "lesion_id": f"L_{dx}_{i // 2}", "dx": dx} for dx, n in counts.items() for i in range(n)]
    frame = pd.DataFrame(rows)
    images = np.random.default_rng(0).integers(0, 255, (len(frame), 24, 24, 3), dtype=np.uint8)
    return images, frame


def test_minority_classes_are_augmented_up_to_the_target_within_the_cap(train):
    images, frame = train
    output, index = augment_train(images, frame, _params(), seed=1)
    counts = index["dx"].value_counts()
    assert counts["nv"] == 60  # above the target: untouched
    assert counts["mel"] == 40  # 20 originals + 20 copies
    assert counts["df"] == 5 + 5 * 3  # capped at 3 copies per image
    assert len(output) == len(index)
    assert index.loc[index["augmented"], "source_image_id"].isin(frame["image_id"]).all()
    assert (index.loc[index["augmented"], "lesion_id"].values
            == frame.set_index("image_id").loc[index.loc[index["augmented"], "source_image_id"], "lesion_id"].values).all()


def test_originals_come_first_unchanged_and_copies_differ(train):
    images, frame = train
    output, index = augment_train(images, frame, _params(), seed=1)
    np.testing.assert_array_equal(output[: len(frame)], images)
    first_copy = index.index[index["augmented"]][0]
    source = frame.index[frame["image_id"] == index.loc[first_copy, "source_image_id"]][0]
    assert not np.array_equal(output[first_copy], images[source])


def test_same_seed_gives_identical_output(train):
    images, frame = train
    first, index_first = augment_train(images, frame, _params(), seed=5)
    second, index_second = augment_train(images, frame, _params(), seed=5)
    np.testing.assert_array_equal(first, second)
    pd.testing.assert_frame_equal(index_first, index_second)


def test_balancing_off_returns_only_originals(train):
    images, frame = train
    output, index = augment_train(images, frame, _params(balance_to=0), seed=1)
    assert len(output) == len(frame) and not index["augmented"].any()
    assert plan_copies(frame, _params(balance_to=0), seed=1) == []


def test_every_image_gets_a_copy_before_any_gets_two(train):
    _, frame = train
    plan = plan_copies(frame, _params(balance_to=30), seed=2)  # mel needs 10 copies of 20 images
    mel_positions = [p for p in plan if frame.loc[p, "dx"] == "mel"]
    assert len(mel_positions) == len(set(mel_positions)) == 10
