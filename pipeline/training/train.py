"""Training shared by ``train_cnn_focal``, ``train_effnetb7`` and ``train_effnet_lite0``.

One stage is one MLflow run (or, with ``PIPELINE_OFFLINE_RUNS`` set, one offline bundle that
``python -m pipeline.tracking.bundle import`` logs later): params, per-epoch metrics (loss, accuracy, and the validation
balanced accuracy / macro-F1 / melanoma recall that model selection uses), the model with a
signature, registered with aliases. The best epoch by ``monitor`` (never plain accuracy) is
what gets saved. Every epoch leaves a checkpoint, so an interrupted stage resumes where it
stopped when rerun with the same params and data. Any Keras 3 backend trains
(``KERAS_BACKEND``; see :mod:`pipeline.training.backend`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
from sklearn.utils.class_weight import compute_class_weight

from pipeline.training import backend, cluster
from pipeline.tracking.choose import open_recorder
from pipeline.tracking.provenance import fingerprint, git_commit
from pipeline.tracking.recorder import HISTORY_FILE, MODEL_FILE, RUN_FILE, NullRecorder, Recorder
from pipeline.config import (
    BaseParams, CnnParams, EffNetParams, Lite0Params, TrainParams, TransferParams, as_flat_dict, data_name, data_source,
)
from pipeline.data.datasets import LabelledImages, load_augmented_images, load_split_images, make_dataset, subsample
from pipeline.errors import PipelineError, TrackingError
from pipeline.io import read_json, write_json, write_text_atomic
from pipeline.models.builders import average_models, build_cnn, build_effnet_lite0, build_effnetb7, unfreeze_top_layers

#: The best epoch's record in a checkpoint folder (its score, metrics and the weights file it names).
BEST_FILE = "best.json"
#: Environment variables that once changed a trained model, and the parameter that does it now:
#: refused rather than ignored, so an old job script does not silently train something else.
MOVED_SETTINGS = {"PIPELINE_PRECISION": "precision", "PIPELINE_MAX_TRAIN_MINUTES": "max_train_minutes"}


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


@dataclass
class Phase:
    """One ``fit`` call: its epoch count and how to prepare (freeze/compile) the model for it."""

    name: str
    epochs: int
    learning_rate: float
    prepare: Callable[[keras.Model], None] = field(default=lambda model: None)


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


def class_alpha(counts: np.ndarray, mode: str) -> list[float] | None:
    """Per-class focal-loss alpha from train class counts.

    ``inverse_frequency`` is scikit-learn's "balanced" weight ``n / (k * n_c)``;
    ``sqrt_inverse_frequency`` its square root, a milder correction that trades less overall
    accuracy for balance; ``none`` gives no alpha (all classes weigh 1).
    """
    if mode == "none":
        return None
    if np.any(counts == 0):
        raise PipelineError(f"class_alpha={mode}: a class has no training images (counts {counts.tolist()})")
    labels = np.repeat(np.arange(len(counts)), counts)
    weights = compute_class_weight("balanced", classes=np.arange(len(counts)), y=labels)
    if mode == "sqrt_inverse_frequency":
        weights = np.sqrt(weights)
    return [float(w) for w in weights]


def build_loss(params: TrainParams, alpha: list[float] | None) -> keras.losses.Loss:
    """Keras' categorical focal cross-entropy with per-class alpha (gamma 0 = weighted CE).

    Computed in float32 whatever the precision (``dtype``: the predictions are cast to float32
    first), as Keras' mixed-precision recipe asks; in a float32 run this changes nothing."""
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=alpha if alpha is not None else 1.0,
        gamma=params.focal_gamma,
        label_smoothing=params.label_smoothing,
        name="focal_loss",
        dtype="float32",
    )


def build_optimizer(params: TrainParams, learning_rate: float, steps_per_epoch: int, epochs: int,
                    ema_momentum: float = 0.0) -> keras.optimizers.Optimizer:
    """AdamW with a constant or warm-up + cosine-decay learning rate, keeping a moving average
    of the weights when ``ema_momentum`` is set (see :class:`ValidationMetrics` for its use)."""
    if params.lr_schedule == "cosine":
        warmup_steps = min(params.warmup_epochs, max(epochs - 1, 0)) * steps_per_epoch
        schedule: Any = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10 if warmup_steps else learning_rate,
            decay_steps=max(1, epochs * steps_per_epoch - warmup_steps),
            alpha=0.01,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    else:
        schedule = learning_rate
    if ema_momentum:
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay, use_ema=True, ema_momentum=ema_momentum)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay)


def validation_scores(probabilities: np.ndarray, labels: np.ndarray, loss: keras.losses.Loss, melanoma: int) -> dict[str, float]:
    """The validation numbers of one epoch (or of the averaged members) from the probabilities."""
    predicted = probabilities.argmax(axis=1)
    one_hot = np.eye(probabilities.shape[1], dtype=np.float32)[labels]
    return {
        "val_loss": float(loss(one_hot, probabilities)),
        "val_accuracy": float(np.mean(predicted == labels)),
        "val_balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "val_macro_f1": float(f1_score(labels, predicted, labels=np.arange(probabilities.shape[1]), average="macro", zero_division=0)),
        "val_melanoma_recall": float(recall_score(labels, predicted, labels=[melanoma], average="macro", zero_division=0)),
    }


class ValidationMetrics(keras.callbacks.Callback):
    """Adds validation loss, accuracy, balanced accuracy, macro-F1 and melanoma recall to logs.

    It also keeps the best weights by ``monitor`` in the checkpoint folder, with the best
    score in ``best.json`` so a resumed run still knows what it has to beat. It must come
    before callbacks that read these keys (EarlyStopping, the MLflow logger).

    In a training group each process predicts the validation images with a local copy of the
    weights (``local``), and all take process 0's numbers, so they agree on the best epoch
    and on when to stop.

    With weight averaging (an optimizer with ``use_ema``) the epoch is judged, and kept, as the
    averaged model: Keras' ``SwapEMAWeights`` puts the averages into the model around the
    scoring and puts the trained weights back before the next epoch, so training itself and
    ``BackupAndRestore`` (which saves the optimizer's averages with it) see the raw weights.
    """

    def __init__(self, data: LabelledImages, dataset: Any, loss: keras.losses.Loss, classes: tuple[str, ...], monitor: str, state_dir: Path,
                 epoch_offset: int, train_images: int, devices: backend.Devices | None = None, local: keras.Model | None = None):
        super().__init__()
        self.devices, self.local = devices, local
        self.labels = data.labels
        self.dataset = dataset
        self.loss = loss
        self.melanoma = classes.index("mel")
        self.monitor = monitor
        self.state_file = state_dir / BEST_FILE
        self.epoch_offset = epoch_offset
        self.best = read_json(self.state_file) if self.state_file.is_file() else {"value": -1.0, "epoch": -1, "metrics": {}}
        self._started = 0.0
        self.images_per_epoch = train_images
        self.averages: keras.callbacks.SwapEMAWeights | None = None

    def set_model(self, model):
        super().set_model(model)
        if getattr(model.optimizer, "use_ema", False):
            self.averages = keras.callbacks.SwapEMAWeights()
            self.averages.set_model(model)

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def _scores(self) -> dict[str, float]:
        if self.local is not None:
            self.local.set_weights(self.model.get_weights())
            with self.devices.local():
                probabilities = self.local.predict(self.dataset, verbose=0)
        else:
            # (On several devices the last batch may be padded: keep one output per image.)
            probabilities = self.model.predict(self.dataset, verbose=0)[: len(self.labels)]
        return validation_scores(probabilities, self.labels, self.loss, self.melanoma)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train_seconds = time.perf_counter() - self._started
        if not np.isfinite(logs.get("loss", 0.0)):
            raise PipelineError(
                f"training diverged: the loss is {logs.get('loss')} in epoch {epoch + self.epoch_offset + 1} "
                f"(precision {keras.mixed_precision.global_policy().name}); no model is kept. "
                "Try the parameter precision: float32 or a lower learning rate"
            )
        if self.averages is not None:
            self.averages.on_test_begin()  # the averaged weights into the model
        try:
            metrics = {**self._scores(), "epoch_seconds": train_seconds,
                       "train_images_per_second": self.images_per_epoch / train_seconds if train_seconds else 0.0}
            if self.devices is not None and self.devices.group is not None:
                metrics = dict(zip(metrics, cluster.broadcast(list(metrics.values()))))
            logs.update(metrics)
            global_epoch = epoch + self.epoch_offset
            if metrics[self.monitor] > self.best["value"]:
                # The weights first, under a name of their own, then the record that names them: a
                # crash at any point leaves the previous record and the weights it names intact.
                weights = f"best-epoch{global_epoch + 1}.weights.h5"
                save_weights_atomically(self.model, self.state_file.parent / weights)
                previous = self.best.get("weights")
                self.best = {"value": metrics[self.monitor], "epoch": global_epoch, "metrics": metrics, "weights": weights}
                write_json(self.state_file, self.best)
                if previous and previous != weights:
                    (self.state_file.parent / previous).unlink(missing_ok=True)
        finally:
            if self.averages is not None:
                self.averages.on_test_end()  # the trained weights back, for the next epoch
                # (on_test_*: its on_predict_end does not swap back, Keras 3.15)
        print(
            f"epoch {global_epoch + 1}: loss {logs.get('loss', float('nan')):.4f} "
            f"val_balanced_accuracy {metrics['val_balanced_accuracy']:.4f} val_accuracy {metrics['val_accuracy']:.4f} "
            f"val_melanoma_recall {metrics['val_melanoma_recall']:.4f} ({train_seconds:.0f} s)",
            flush=True,
        )


class TimeLimit(keras.callbacks.Callback):
    """Ends training after the epoch during which the wall-clock ``deadline`` passed (the
    best epoch so far is kept as usual): a job on a shared GPU node ends on time with its model."""

    def __init__(self, deadline: float, epoch_offset: int, group: cluster.Group | None = None):
        super().__init__()
        self.deadline = deadline
        self.epoch_offset = epoch_offset
        self.group = group

    def on_epoch_end(self, epoch, logs=None):
        passed = time.time() >= self.deadline
        if self.group is not None:  # process 0's clock decides for the whole group
            passed = bool(cluster.broadcast([float(passed)])[0])
        if passed:
            self.model.stop_training = True
            print(f"time limit reached after epoch {epoch + self.epoch_offset + 1}: training stops, the best epoch so far is kept", flush=True)


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


class EpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics to the run (MLflow or an offline bundle).

    A tracking failure mid-run is reported once and logging stops, but training goes on: a
    lost server must not cost the model. The stage still fails at the end, when the final
    logging raises, after the model file is saved.
    """

    def __init__(self, recorder: Recorder, epoch_offset: int):
        super().__init__()
        self.recorder = recorder
        self.epoch_offset = epoch_offset
        self.failed = False

    def on_epoch_end(self, epoch, logs=None):
        if self.failed or not logs:
            return
        try:
            self.recorder.log_metrics(logs, step=epoch + self.epoch_offset)
        except TrackingError as error:
            self.failed = True
            print(f"warning: {error}; per-epoch logging stopped, training continues", flush=True)


def load_training_data(paths: TrainPaths, base: BaseParams, params: TrainParams) -> tuple[LabelledImages, LabelledImages]:
    """(train, val) at the model's input size; train is the augmented set when configured."""
    if params.use_augmented:
        train = load_augmented_images(paths.augmented, base.classes, params.input_size)
    else:
        train = load_split_images(paths.ingested, paths.split, "train", base.classes, params.input_size)
    val = load_split_images(paths.ingested, paths.split, "val", base.classes, params.input_size)
    return subsample(train, params.max_train_images, params.seed), val


@dataclass
class RunState:
    """Where one training run keeps its resumable state, and the run it continues (if any)."""

    checkpoint_dir: Path
    resume_run_id: str | None
    data_hash: str
    params_hash: str


def resume_state(stage: str, base: BaseParams, params: TrainParams, paths: TrainPaths, recorder: Recorder, fresh: bool = False) -> RunState:
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


def fit_phases(model: keras.Model, phases: list[Phase], params: TrainParams, loss: keras.losses.Loss, devices: backend.Devices,
               train_dataset: Any, val: LabelledImages, val_dataset: Any, classes: tuple[str, ...], state_dir: Path,
               recorder: Recorder, train_images: int, deadline: float | None = None, first_epoch: int = 0) -> list[pd.DataFrame]:
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
            ValidationMetrics(val, val_dataset, loss, classes, params.monitor, state_dir, epoch_offset, train_images, devices, local),
            EpochLogger(recorder, epoch_offset),
            keras.callbacks.BackupAndRestore(str(state_dir / f"{phase.name}-backup")),
        ]
        if params.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor=params.monitor, mode="max", patience=params.early_stopping_patience))
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

    In a training group (:mod:`pipeline.training.cluster`) every process trains; only process
    0 logs and writes the outputs, the others keep their checkpoints in a temporary folder."""
    refuse_moved_settings(stage)
    group = cluster.from_env()
    recorder = open_recorder() if group is None or group.chief else NullRecorder(f"{group.describe()}: process 0 logs the run")
    recorder.connect(base.experiment_name)  # fail fast, before any work, if MLflow is down
    deadline = time_limit_deadline(params.max_train_minutes)
    devices = backend.configure(params.seed, params.precision, group)
    if not devices.chief:
        scratch = Path(tempfile.mkdtemp(prefix=f"{stage}-process{group.rank}-"))
        paths = dataclasses.replace(paths, checkpoints=scratch / "checkpoints", out_dir=scratch / "out", metrics=scratch / "metrics.json")
    print(f"{stage}: keras {keras.__version__} on {devices.backend}, {devices.label}, {devices.policy}; tracking: {recorder.describe()}", flush=True)
    for note in devices.notes:
        print(note, flush=True)
    train, val = load_training_data(paths, base, params)
    num_classes = len(base.classes)
    counts = train.class_counts(num_classes)
    alpha = class_alpha(counts, params.class_alpha)
    state = resume_state(stage, base, params, paths, recorder, fresh=group is not None)

    def train_batches(seed: int):
        return make_dataset(
            train.images, train.labels, num_classes, params.batch_size, training=True, seed=seed,
            random_flip=params.random_flip, random_rotate90=params.random_rotate90, multiple_of=devices.replicas, shard=devices.shard,
        )

    train_dataset = train_batches(params.seed)
    # A group validates with a local copy of the model: whole batches, on this process alone.
    val_dataset = make_dataset(val.images, None, num_classes, params.batch_size, multiple_of=1 if group else devices.replicas)
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
            frames = fit_phases(model, phases, params, loss, devices, train_dataset, val, val_dataset, base.classes,
                                member_dir, recorder, len(train), deadline, first_epoch=member * sum(phase.epochs for phase in phases))
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
            summary.update({f"best_{params.monitor}": bests[0]["value"],
                            **{f"best_{key}": value for key, value in bests[0]["metrics"].items() if key.startswith("val_")}})
        summary.update({"train_seconds": round(time.perf_counter() - started, 1), "train_images": len(train)})
        if not devices.chief:
            shutil.rmtree(paths.checkpoints.parent, ignore_errors=True)
            return {**summary, "group_process": group.describe()}
        # Save locally first: nothing after this point can lose the trained model.
        paths.out_dir.mkdir(parents=True, exist_ok=True)
        save_for_inference(model, paths.out_dir / MODEL_FILE)
        if history_frames:
            write_text_atomic(paths.out_dir / HISTORY_FILE, pd.concat(history_frames, ignore_index=True).to_csv(index=False))
        write_json(paths.metrics, summary)
        recorder.log_metrics(summary)
        run_record = recorder.log_model(
            model, val.images[:4].astype(np.float32), params.registered_model_name, summary["best_val_balanced_accuracy"],
            paths.out_dir, paths.metrics,
        )
        # The model folder says whether it is a smoke run: evaluate lists it apart, wherever it came from.
        write_json(paths.out_dir / RUN_FILE, {**run_record, "smoke_run": params.smoke_run})
    shutil.rmtree(state.checkpoint_dir, ignore_errors=True)
    return {**summary, **run_record}


def kept(summary: dict[str, Any]) -> str:
    """The kept epoch(s) and the validation score, for the stage's last line."""
    epochs = []  # a seed ensemble's members, in order (member1_best_epoch, member2_...)
    while f"member{len(epochs) + 1}_best_epoch" in summary:
        epochs.append(str(summary[f"member{len(epochs) + 1}_best_epoch"]))
    kept_epochs = f"best epochs {', '.join(epochs)} ({len(epochs)} members averaged)" if epochs else f"best epoch {summary['best_epoch']}"
    return f"{kept_epochs}, val balanced accuracy {summary['best_val_balanced_accuracy']:.4f}"


def outcome(summary: dict[str, Any]) -> str:
    """Where the run went, for the stage's last line."""
    if summary.get("group_process"):
        return f"{summary['group_process']}: done, process 0 writes the outputs and logs the run"
    if summary.get("offline_bundle"):
        return f"recorded offline in {summary['offline_bundle']} (log it: python -m pipeline.tracking.bundle import <that folder>)"
    return f"registered {summary['registered_model']} v{summary['version']}"


def save_weights_atomically(model: keras.Model, path: Path) -> None:
    """``model.save_weights(path)`` so that ``path`` holds the old weights or all the new ones,
    never part (a temporary file beside it, then ``os.replace``)."""
    partial = path.with_name(f".{os.getpid()}.partial.weights.h5")
    try:
        model.save_weights(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_for_inference(model: keras.Model, path: Path) -> None:
    """Save the architecture and weights only (the optimizer state would triple the file), in
    float32: a model trained in mixed precision on a GPU must predict in full precision on a
    CPU (its variables are float32 already; only the layers' compute policy changes). Atomic:
    a crash leaves no half-written model file for a later stage to trust."""
    clean = keras.Model.from_config(_portable(model.get_config()))
    clean.set_weights(model.get_weights())
    partial = path.with_name(f".{os.getpid()}.partial.keras")
    try:
        clean.save(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _portable(config: Any) -> Any:
    """``config`` with every mixed-precision dtype policy replaced by float32 and BatchNorm's
    TensorFlow-only ``synchronized`` (set for several devices) switched off."""
    if isinstance(config, list):
        return [_portable(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith("mixed_"):
        return {**config, "config": {**config["config"], "name": "float32"}}
    if config.get("class_name") == "BatchNormalization" and config.get("config", {}).get("synchronized"):
        config = {**config, "config": {**config["config"], "synchronized": False}}  # and on into its dtype policy
    return {key: _portable(value) for key, value in config.items()}


def train_cnn_focal(base: BaseParams, params: CnnParams, paths: TrainPaths) -> dict[str, Any]:
    """Train the focal-loss CNN (one phase)."""

    def build():
        return build_cnn(params, base.classes, base.image_size), [Phase("train", params.epochs, params.learning_rate)]

    return run_training("train_cnn_focal", base, params, paths, build)


def transfer_phases(params: TransferParams, backbone: keras.Model, pretrained: bool) -> list[Phase]:
    """Head training on the frozen backbone, then fine-tuning (pretrained weights only)."""
    phases = [Phase("head" if pretrained else "train", params.epochs, params.learning_rate)]
    if pretrained and params.fine_tune_epochs:
        phases.append(
            Phase(
                "fine_tune",
                params.fine_tune_epochs,
                params.fine_tune_learning_rate,
                prepare=lambda _model: unfreeze_top_layers(backbone, params.fine_tune_layers, params.fine_tune_batch_norm),
            )
        )
    return phases


def train_effnetb7(base: BaseParams, params: EffNetParams, paths: TrainPaths) -> dict[str, Any]:
    """Train EfficientNetB7: frozen-backbone head training, then fine-tuning when pretrained."""

    def build():
        model, backbone = build_effnetb7(params, base.classes, base.image_size)
        return model, transfer_phases(params, backbone, params.weights != "none")

    return run_training("train_effnetb7", base, params, paths, build)


def train_effnet_lite0(base: BaseParams, params: Lite0Params, paths: TrainPaths, weights_dir: Path | None) -> dict[str, Any]:
    """Train EfficientNet-Lite0 from the converted ImageNet weights: head, then fine-tuning."""

    def build():
        model, backbone = build_effnet_lite0(params, base.classes, base.image_size, weights_dir)
        return model, transfer_phases(params, backbone, params.weights == "imagenet")

    return run_training("train_effnet_lite0", base, params, paths, build)
