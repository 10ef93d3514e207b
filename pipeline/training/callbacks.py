"""The Keras callbacks of a training run: validation scoring that keeps the best epoch (as the
averaged model under weight averaging), the time limit, and per-epoch logging to the run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.data.datasets import LabelledImages
from pipeline.errors import PipelineError, TrackingError
from pipeline.io import read_json, write_json
from pipeline.metrics import point_metrics
from pipeline.tracking.recorder import Recorder
from pipeline.training import backend, process_group
from pipeline.training.checkpoints import BEST_FILE, save_weights_atomically


def validation_scores(
    probabilities: np.ndarray, labels: np.ndarray, loss: keras.losses.Loss, melanoma: int
) -> dict[str, float]:
    """The validation numbers of one epoch (or of the averaged members) from the probabilities."""
    one_hot = np.eye(probabilities.shape[1], dtype=np.float32)[labels]
    point = point_metrics(labels, probabilities, melanoma, ranking=False)
    return {
        "val_loss": float(loss(one_hot, probabilities)),
        "val_accuracy": point["accuracy"],
        "val_balanced_accuracy": point["balanced_accuracy"],
        "val_macro_f1": point["macro_f1"],
        "val_melanoma_recall": float(np.nan_to_num(point["melanoma_recall"], nan=0.0)),
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

    def __init__(
        self,
        data: LabelledImages,
        dataset: Any,
        loss: keras.losses.Loss,
        classes: tuple[str, ...],
        monitor: str,
        state_dir: Path,
        epoch_offset: int,
        train_images: int,
        devices: backend.Devices | None = None,
        local: keras.Model | None = None,
    ):
        super().__init__()
        self.devices, self.local = devices, local
        self.labels = data.labels
        self.dataset = dataset
        self.loss = loss
        self.melanoma = classes.index("mel")
        self.monitor = monitor
        self.state_file = state_dir / BEST_FILE
        self.epoch_offset = epoch_offset
        self.best = (
            read_json(self.state_file) if self.state_file.is_file() else {"value": -1.0, "epoch": -1, "metrics": {}}
        )
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
            metrics = {
                **self._scores(),
                "epoch_seconds": train_seconds,
                "train_images_per_second": self.images_per_epoch / train_seconds if train_seconds else 0.0,
            }
            if self.devices is not None and self.devices.group is not None:
                metrics = dict(zip(metrics, process_group.broadcast(list(metrics.values()))))
            logs.update(metrics)
            global_epoch = epoch + self.epoch_offset
            if metrics[self.monitor] > self.best["value"]:
                # The weights first, under a name of their own, then the record that names them: a
                # crash at any point leaves the previous record and the weights it names intact.
                weights = f"best-epoch{global_epoch + 1}.weights.h5"
                save_weights_atomically(self.model, self.state_file.parent / weights)
                previous = self.best.get("weights")
                self.best = {
                    "value": metrics[self.monitor],
                    "epoch": global_epoch,
                    "metrics": metrics,
                    "weights": weights,
                }
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

    def __init__(self, deadline: float, epoch_offset: int, group: process_group.Group | None = None):
        super().__init__()
        self.deadline = deadline
        self.epoch_offset = epoch_offset
        self.group = group

    def on_epoch_end(self, epoch, logs=None):
        passed = time.time() >= self.deadline
        if self.group is not None:  # process 0's clock decides for the whole group
            passed = bool(process_group.broadcast([float(passed)])[0])
        if passed:
            self.model.stop_training = True
            print(
                f"time limit reached after epoch {epoch + self.epoch_offset + 1}: training stops, the best epoch so far is kept",
                flush=True,
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
