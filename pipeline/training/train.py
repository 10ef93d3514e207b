"""Training shared by ``train_cnn_focal``, ``train_effnetb7`` and the ``train_effnet_lite*`` stages.

One stage is one MLflow run (or, with ``PIPELINE_OFFLINE_RUNS`` set, one offline bundle that
``python -m pipeline.tracking.bundle import`` logs later): params, per-epoch metrics (loss, accuracy, and the validation
balanced accuracy / macro-F1 / melanoma recall that model selection uses), the model with a
signature, registered with aliases. The best epoch by ``monitor`` (never plain accuracy) is
what gets saved. Every epoch leaves a checkpoint, so an interrupted stage resumes where it
stopped when rerun with the same params and data. Any Keras 3 backend trains
(``KERAS_BACKEND``; see :mod:`pipeline.training.backend`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from pipeline.config import BaseParams, CnnParams, EffNetParams, LiteParams, TrainParams, as_flat_dict, data_name
from pipeline.data.datasets import LabelledImages, make_dataset
from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json, write_text_atomic
from pipeline.models.builders import average_models, build_cnn, build_effnet_lite, build_effnetb7
from pipeline.tracking.destination import open_recorder
from pipeline.tracking.provenance import git_commit
from pipeline.tracking.recorder import HISTORY_FILE, MODEL_FILE, RUN_FILE, NullRecorder, Recorder
from pipeline.training import backend, process_group
from pipeline.training.callbacks import EpochLogger, TimeLimit, ValidationMetrics, validation_scores
from pipeline.training.checkpoints import BEST_FILE, resume_state, save_weights_atomically
from pipeline.training.export import save_for_inference
from pipeline.training.paths import TrainPaths, load_training_data
from pipeline.training.recipe import Phase, build_loss, build_optimizer, class_alpha, transfer_phases

#: Environment variables that once changed a trained model, and the parameter that does it now:
#: refused rather than ignored, so an old job script does not silently train something else.
MOVED_SETTINGS = {"PIPELINE_PRECISION": "precision", "PIPELINE_MAX_TRAIN_MINUTES": "max_train_minutes"}

#: Eager validation predicts in batches this many training batches large (fewer Python dispatches).
EAGER_VALIDATION_BATCHES = 8


def time_limit_deadline(minutes: float) -> float | None:
    """The wall-clock deadline ``minutes`` from now (0: none)."""
    return time.time() + minutes * 60 if minutes else None


def refuse_moved_settings(stage: str) -> None:
    """One error line for an environment variable whose setting is a parameter now."""
    for variable, key in MOVED_SETTINGS.items():
        if variable in os.environ:
            raise PipelineError(
                f"{variable} is no longer read: set the parameter {stage}.{key} instead "
                f"(conf/config.yaml, or dvc exp run -S {stage}.{key}=...), then unset {variable}"
            )


def fit_phases(
    model: keras.Model,
    phases: list[Phase],
    params: TrainParams,
    loss: keras.losses.Loss,
    devices: backend.Devices,
    train_dataset: Any,
    val: LabelledImages,
    val_dataset: Any,
    classes: tuple[str, ...],
    state_dir: Path,
    recorder: Recorder,
    train_images: int,
    deadline: float | None = None,
    first_epoch: int = 0,
) -> list[pd.DataFrame]:
    """Run each phase's ``fit``; a phase finished before an interruption is not redone, and
    none starts after the ``deadline``. Epochs are numbered from ``first_epoch`` (a seed
    ensemble's later members continue the numbering, so their curves follow in one run)."""
    steps_per_epoch = int(np.ceil(train_images / params.batch_size))
    history_frames = []
    epoch_offset = first_epoch
    # A group validates on a local copy of the weights (see ValidationMetrics).
    local = devices.local_copy(model) if devices.group is not None else None
    for phase in phases:
        done_weights = state_dir / f"{phase.name}.done.weights.h5"
        # Only the last phase averages: the one whose weights ship (a transfer stage's head
        # phase starts from a random head, which an average would drag along).
        ema_momentum = params.ema_momentum if phase is phases[-1] else 0.0
        with devices.scope():
            phase.prepare(model)
            model.compile(
                optimizer=build_optimizer(params, phase.learning_rate, steps_per_epoch, phase.epochs, ema_momentum),
                loss=loss,
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                run_eagerly=params.run_eagerly,
            )
        if done_weights.is_file():
            model.load_weights(done_weights)
            epoch_offset += phase.epochs
            continue
        if deadline is not None and time.time() >= deadline and (state_dir / BEST_FILE).is_file():
            # (Before any epoch has finished the phase runs anyway: one epoch, then TimeLimit stops it.)
            print(f"time limit reached: phase '{phase.name}' skipped", flush=True)
            break
        callbacks: list[keras.callbacks.Callback] = [
            ValidationMetrics(
                val, val_dataset, loss, classes, params.monitor, state_dir, epoch_offset, train_images, devices, local
            ),
            EpochLogger(recorder, epoch_offset),
            keras.callbacks.BackupAndRestore(str(state_dir / f"{phase.name}-backup")),
        ]
        if params.early_stopping_patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=params.monitor, mode="max", patience=params.early_stopping_patience
                )
            )
        if deadline is not None:
            callbacks.append(TimeLimit(deadline, epoch_offset, devices.group))
        # shuffle=False: the input pipeline already reshuffles every epoch (seeded).
        # verbose=0: the stage log has one line per epoch, ValidationMetrics' (with its timing).
        history = model.fit(train_dataset, epochs=phase.epochs, callbacks=callbacks, verbose=0, shuffle=False)
        frame = pd.DataFrame(history.history)
        frame.insert(0, "epoch", np.asarray(history.epoch) + epoch_offset + 1)
        frame.insert(1, "phase", phase.name)
        history_frames.append(frame)
        save_weights_atomically(model, done_weights)
        epoch_offset += phase.epochs
    return history_frames


def run_training(
    stage: str,
    base: BaseParams,
    params: TrainParams,
    paths: TrainPaths,
    build: Callable[[], tuple[keras.Model, list[Phase]]],
) -> dict[str, Any]:
    """Train, select the best epoch, save the model locally, then log and register it.

    In a training group (:mod:`pipeline.training.process_group`) every process trains; only process
    0 logs and writes the outputs, the others keep their checkpoints in a temporary folder."""
    refuse_moved_settings(stage)
    group = process_group.from_env()
    recorder = (
        open_recorder() if group is None or group.chief else NullRecorder(f"{group.describe()}: process 0 logs the run")
    )
    recorder.connect(base.experiment_name)  # fail fast, before any work, if MLflow is down
    deadline = time_limit_deadline(params.max_train_minutes)
    devices = backend.configure(params.seed, params.precision, group)
    if not devices.chief:
        scratch = Path(tempfile.mkdtemp(prefix=f"{stage}-process{group.rank}-"))
        paths = dataclasses.replace(
            paths, checkpoints=scratch / "checkpoints", out_dir=scratch / "out", metrics=scratch / "metrics.json"
        )
    print(
        f"{stage}: keras {keras.__version__} on {devices.backend}, {devices.label}, {devices.policy}; tracking: {recorder.describe()}",
        flush=True,
    )
    for note in devices.notes:
        print(note, flush=True)
    train, val = load_training_data(paths, base, params)
    num_classes = len(base.classes)
    counts = train.class_counts(num_classes)
    alpha = class_alpha(counts, params.class_alpha)
    state = resume_state(stage, base, params, paths, recorder, fresh=group is not None)

    def train_batches(seed: int):
        return make_dataset(
            train.images,
            train.labels,
            num_classes,
            params.batch_size,
            training=True,
            seed=seed,
            random_flip=params.random_flip,
            random_rotate90=params.random_rotate90,
            multiple_of=devices.replicas,
            shard=devices.shard,
        )

    train_dataset = train_batches(params.seed)
    # A group validates with a local copy of the model: whole batches, on this process alone.
    # Run eagerly (a smoke run of a big model), each batch pays Python's dispatch of every layer:
    # B7 scores 1,431 images in 42 s in batches of 32, 12 s in batches of 256 (measured).
    val_batch = params.batch_size * EAGER_VALIDATION_BATCHES if params.run_eagerly else params.batch_size
    val_dataset = make_dataset(val.images, None, num_classes, val_batch, multiple_of=1 if group else devices.replicas)
    tags = {
        "stage": stage,
        "approach": stage.removeprefix("train_"),
        "git_commit": git_commit(),
        "data_hash": state.data_hash,
        "params_hash": state.params_hash,
        "device": devices.label,
        "keras_backend": devices.backend,
        "precision": devices.policy,
        "smoke_run": str(params.smoke_run).lower(),
    }
    if deadline is not None:
        tags["time_limit_minutes"] = f"{params.max_train_minutes:g}"
    started = time.perf_counter()
    dataset = data_name(paths.source)
    run_name = f"{stage.removeprefix('train_')}-{dataset}"  # approach and data: cnn_focal-ham10000
    with recorder.run(run_name, tags, state.resume_run_id) as run_id:
        write_json(state.checkpoint_dir / RUN_FILE, {"run_id": run_id})
        if not state.resume_run_id:
            recorder.log_input(dataset, state.data_hash, paths.source)
            recorder.log_params(
                {
                    **as_flat_dict(base, "base"),
                    **as_flat_dict(params, stage),
                    "train_images": len(train),
                    "val_images": len(val),
                    **{f"train_count.{dx}": int(n) for dx, n in zip(base.classes, counts)},
                    "focal_alpha": ",".join(f"{a:.3f}" for a in alpha) if alpha else "none",
                }
            )
        loss = build_loss(params, alpha)
        models, bests, history_frames = [], [], []
        for member in range(params.members):
            member_dir = state.checkpoint_dir
            if params.members > 1:
                print(f"member {member + 1} of {params.members}: training seed {params.seed + member}", flush=True)
                member_dir = state.checkpoint_dir / f"member-{member + 1}"
                member_dir.mkdir(exist_ok=True)
            if member:
                # Seeded again, in the order a one-model run seeds, builds its input and its
                # model: member k is the run with seed + k, weights and batches alike.
                keras.utils.set_random_seed(params.seed + member)
                train_dataset = train_batches(params.seed + member)
            with devices.scope():
                model, phases = build()
                devices.adapt(model)
            frames = fit_phases(
                model,
                phases,
                params,
                loss,
                devices,
                train_dataset,
                val,
                val_dataset,
                base.classes,
                member_dir,
                recorder,
                len(train),
                deadline,
                first_epoch=member * sum(phase.epochs for phase in phases),
            )
            history_frames += [frame.assign(member=member + 1) if params.members > 1 else frame for frame in frames]
            bests.append(read_json(member_dir / BEST_FILE))
            model.load_weights(member_dir / bests[-1].get("weights", "best.weights.h5"))
            models.append(model)
        if group is not None:  # from here on one process alone saves and logs: a local model
            keras.distribution.set_distribution(None)
            models = [devices.local_copy(model) for model in models]
        summary = {"best_epoch": bests[0]["epoch"] + 1}
        if params.members > 1:
            # What ships is the members' mean: it is scored on the validation split as a whole,
            # and each member's own best is logged beside it.
            with devices.scope() if group is None else contextlib.nullcontext():
                model = average_models(models, base.classes, base.image_size, models[0].name)
            probabilities = model.predict(val_dataset, verbose=0)[: len(val)]
            scores = validation_scores(probabilities, val.labels, loss, base.classes.index("mel"))
            summary.update({f"best_{key}": value for key, value in scores.items()})
            for number, best in enumerate(bests, start=1):
                summary[f"member{number}_best_epoch"] = best["epoch"] + 1
                summary[f"member{number}_best_{params.monitor}"] = best["value"]
        else:
            model = models[0]
            summary.update(
                {
                    f"best_{params.monitor}": bests[0]["value"],
                    **{f"best_{key}": value for key, value in bests[0]["metrics"].items() if key.startswith("val_")},
                }
            )
        summary.update({"train_seconds": round(time.perf_counter() - started, 1), "train_images": len(train)})
        if not devices.chief:
            shutil.rmtree(paths.checkpoints.parent, ignore_errors=True)
            return {**summary, "group_process": group.describe()}
        # Save locally first: nothing after this point can lose the trained model.
        paths.out_dir.mkdir(parents=True, exist_ok=True)
        save_for_inference(model, paths.out_dir / MODEL_FILE)
        if history_frames:
            write_text_atomic(
                paths.out_dir / HISTORY_FILE, pd.concat(history_frames, ignore_index=True).to_csv(index=False)
            )
        write_json(paths.metrics, summary)
        recorder.log_metrics(summary)
        run_record = recorder.log_model(
            model,
            val.images[:4].astype(np.float32),
            params.registered_model_name,
            summary["best_val_balanced_accuracy"],
            paths.out_dir,
            paths.metrics,
        )
        # The model folder says whether it is a smoke run: evaluate lists it apart, wherever it came from.
        write_json(paths.out_dir / RUN_FILE, {**run_record, "smoke_run": params.smoke_run})
    shutil.rmtree(state.checkpoint_dir, ignore_errors=True)
    return {**summary, **run_record}


def train_cnn_focal(base: BaseParams, params: CnnParams, paths: TrainPaths) -> dict[str, Any]:
    """Train the focal-loss CNN (one phase)."""

    def build():
        return build_cnn(params, base.classes, base.image_size), [Phase("train", params.epochs, params.learning_rate)]

    return run_training("train_cnn_focal", base, params, paths, build)


def train_effnetb7(base: BaseParams, params: EffNetParams, paths: TrainPaths) -> dict[str, Any]:
    """Train EfficientNetB7: frozen-backbone head training, then fine-tuning when pretrained."""

    def build():
        model, backbone = build_effnetb7(params, base.classes, base.image_size)
        return model, transfer_phases(params, backbone, params.weights != "none")

    return run_training("train_effnetb7", base, params, paths, build)


def train_effnet_lite(
    variant: str, base: BaseParams, params: LiteParams, paths: TrainPaths, weights_dir: Path | None
) -> dict[str, Any]:
    """Train EfficientNet-Lite ``variant`` from its converted ImageNet weights: head, then fine-tuning."""

    def build():
        model, backbone = build_effnet_lite(variant, params, base.classes, base.image_size, weights_dir)
        return model, transfer_phases(params, backbone, params.weights == "imagenet")

    return run_training(f"train_effnet_{variant}", base, params, paths, build)
