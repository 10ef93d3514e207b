"""Where a training stage reads and writes: the paths ``dvc.yaml`` gives its script, parsed once,
and the train and validation images read from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import BaseParams, TrainParams, data_source
from pipeline.data.datasets import LabelledImages, load_augmented_images, load_split_images, subsample


@dataclass(frozen=True)
class TrainPaths:
    """Where a training stage reads and writes (all given by dvc.yaml)."""

    ingested: Path
    split: Path
    augmented: Path
    out_dir: Path
    metrics: Path
    checkpoints: Path
    #: The raw data folder ingest read (from params.yaml): names the run and its MLflow input.
    source: Path | None = None


def training_arguments(
    description: str,
    argv=None,
    extra: dict[str, str] | None = None,
    choices: dict[str, list[str]] | None = None,
) -> tuple[argparse.Namespace, TrainPaths]:
    """Parse the command line shared by the training stages, plus ``extra`` required options
    and ``choices``, required options taking one of a list of values."""
    parser = argparse.ArgumentParser(description=description)
    for name, allowed in (choices or {}).items():
        parser.add_argument(f"--{name}", required=True, choices=allowed)
    for name, help_text in (extra or {}).items():
        parser.add_argument(f"--{name}", required=True, help=help_text)
    parser.add_argument("--params", required=True, help="params.yaml")
    for name, help_text in (
        ("ingested", "ingest output folder"),
        ("split", "split output folder"),
        ("augmented", "augment output folder"),
        ("out", "model output folder (model.keras, history.csv, mlflow_run.json)"),
        ("metrics", "JSON file for the best validation metrics"),
        ("checkpoints", "folder for resumable per-epoch checkpoints"),
    ):
        parser.add_argument(f"--{name}", required=True, help=help_text)
    args = parser.parse_args(argv)
    paths = TrainPaths(
        ingested=Path(args.ingested),
        split=Path(args.split),
        augmented=Path(args.augmented),
        out_dir=Path(args.out),
        metrics=Path(args.metrics),
        checkpoints=Path(args.checkpoints),
        source=data_source(args.params),
    )
    return args, paths


def load_training_data(
    paths: TrainPaths, base: BaseParams, params: TrainParams
) -> tuple[LabelledImages, LabelledImages]:
    """(train, val) at the model's input size; train is the augmented set when configured."""
    if params.use_augmented:
        train = load_augmented_images(paths.augmented, base.classes, params.input_size)
    else:
        train = load_split_images(paths.ingested, paths.split, "train", base.classes, params.input_size)
    val = load_split_images(paths.ingested, paths.split, "val", base.classes, params.input_size)
    return subsample(train, params.max_train_images, params.seed), val
