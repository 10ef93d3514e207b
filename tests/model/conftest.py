"""Fixtures for model tests: tiny pipeline artifacts and tiny training params."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import HAM10000_CLASSES, AugmentParams, BaseParams, CnnParams, IngestParams, SplitParams
from pipeline.training.paths import TrainPaths

TINY_CNN = CnnParams(
    input_size=32,
    epochs=3,
    batch_size=32,
    learning_rate=0.003,
    lr_schedule="cosine",
    warmup_epochs=1,
    weight_decay=0.0001,
    early_stopping_patience=0,
    monitor="val_balanced_accuracy",
    focal_gamma=2.0,
    class_alpha="sqrt_inverse_frequency",
    dropout=0.1,
    random_flip=True,
    use_augmented=True,
    registered_model_name="tests-cnn",
    filters=(16, 32),
    blocks_per_stage=1,
)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """ingest + split + augment of a tiny synthetic HAM10000 folder, made once per session."""
    from pipeline.data.augment import augment_train
    from pipeline.data.demo_data import generate
    from pipeline.data.ingest import ingest, load_ingested, select_images, write_atomically
    from pipeline.data.split import split_dataset, write_splits

    root = tmp_path_factory.mktemp("artifacts")
    generate(root / "ham", total=150, minimum=12, width=40, height=30, seed=11)
    base = BaseParams(seed=7, classes=HAM10000_CLASSES, image_size=32, experiment_name="tests")
    ingest(root / "ham", root / "ingested", base, IngestParams(data_dir=str(root / "ham"), workers=1))
    images, index = load_ingested(root / "ingested")
    splits = split_dataset(index, base.classes, SplitParams(test_fraction=0.2, val_fraction=0.2), base.seed)
    write_splits(splits, root / "split")
    augment = AugmentParams(
        balance_to=30,
        max_copies_per_image=2,
        horizontal_flip=0.5,
        vertical_flip=0.5,
        rotate_limit=90,
        shift_limit=0.0,
        scale_limit=0.0,
        brightness_limit=0.1,
        contrast_limit=0.1,
        hue_shift_limit=0,
        saturation_shift_limit=0,
    )
    augmented, augmented_index = augment_train(
        select_images(images, index, splits["train"]["image_id"]), splits["train"], augment, base.seed
    )
    write_atomically(root / "augmented", augmented, augmented_index)
    return base, root


def make_paths(root, out_name: str) -> TrainPaths:
    return TrainPaths(
        ingested=root / "ingested",
        split=root / "split",
        augmented=root / "augmented",
        out_dir=root / out_name,
        metrics=root / f"{out_name}.json",
        checkpoints=root / f"{out_name}-checkpoints",
    )


def tiny_cnn(**changes) -> CnnParams:
    return dataclasses.replace(TINY_CNN, **changes)


def train_stage_command(repo_root, root, out, params, script="train_cnn_focal", extra=()) -> list[str]:
    """A training stage script's arguments (the CNN's unless ``script``, plus its ``extra``
    options) on the tiny artifacts, writing under ``out``."""
    return [
        str(repo_root / "stages" / f"{script}.py"),
        *extra,
        "--params",
        str(params),
        "--ingested",
        str(root / "ingested"),
        "--split",
        str(root / "split"),
        "--augmented",
        str(root / "augmented"),
        "--out",
        str(out / "model"),
        "--metrics",
        str(out / "train.json"),
        "--checkpoints",
        str(out / "ckpt"),
    ]


def built_by(trainer, *args):
    """What a stage's ``train_*`` function would train: its ``(model, phases)``, built but not trained."""
    from unittest.mock import patch

    captured = {}

    def run_training(_stage, _base, _params, _paths, build):
        captured["built"] = build()

    with patch("pipeline.training.train.run_training", run_training):
        trainer(*args)
    return captured["built"]
