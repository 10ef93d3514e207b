"""A run's resumable state: the checkpoint folder of its params and data, the record of its best
epoch, and weights written so that a crash never leaves half a file where a record points."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import keras

from pipeline.config import BaseParams, TrainParams, as_flat_dict
from pipeline.io import read_json, replacing
from pipeline.tracking.provenance import fingerprint
from pipeline.tracking.recorder import RUN_FILE, Recorder
from pipeline.training.paths import TrainPaths

#: The best epoch's record in a checkpoint folder (its score, metrics and the weights file it names).
BEST_FILE = "best.json"


@dataclass
class RunState:
    """Where one training run keeps its resumable state, and the run it continues (if any)."""

    checkpoint_dir: Path
    resume_run_id: str | None
    data_hash: str
    params_hash: str


def resume_state(
    stage: str, base: BaseParams, params: TrainParams, paths: TrainPaths, recorder: Recorder, fresh: bool = False
) -> RunState:
    """The checkpoint folder of these params and data, and the run to resume if it still exists.

    ``fresh`` empties it first: a training group always starts over, because its processes
    could only resume together from the same epoch, which nothing guarantees after a failure."""
    input_files = [paths.split / "train.csv", paths.split / "val.csv"]
    if params.use_augmented:
        input_files.append(paths.augmented / "index.csv")
    data_hash = fingerprint(files=tuple(input_files))
    params_hash = fingerprint(as_flat_dict(base, "base"), as_flat_dict(params, stage))
    checkpoint_dir = paths.checkpoints / f"{stage}-{params_hash}-{data_hash}"
    if fresh:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume_file = checkpoint_dir / RUN_FILE
    resume_run_id = read_json(resume_file)["run_id"] if resume_file.is_file() else None
    if resume_run_id and not recorder.run_exists(resume_run_id):
        resume_run_id = None
    if resume_run_id:
        print(f"resuming {stage} from {checkpoint_dir} (run {resume_run_id})", flush=True)
    return RunState(checkpoint_dir, resume_run_id, data_hash, params_hash)


def save_weights_atomically(model: keras.Model, path: str | Path) -> None:
    """``model.save_weights(path)`` so that ``path`` holds the old weights or all the new ones,
    never part (a temporary file beside it, then ``os.replace``)."""
    with replacing(path, ".partial.weights.h5") as partial:
        model.save_weights(partial)
