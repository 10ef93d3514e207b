"""Where a training stage reads and writes: the paths ``dvc.yaml`` gives its script, parsed once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import data_source


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


def training_arguments(description: str, argv=None, extra: dict[str, str] | None = None) -> tuple[argparse.Namespace, TrainPaths]:
    """Parse the command line shared by the training stages (plus ``extra`` required options)."""
    parser = argparse.ArgumentParser(description=description)
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

