"""The training recipe: class weights, the focal loss, the optimizer and its learning-rate
schedule, and the phases a stage trains in (one for the CNN; head, then fine-tuning, for a
pretrained backbone)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from pipeline.config import TrainParams, TransferParams
from pipeline.errors import PipelineError
from pipeline.models.builders import unfreeze_top_layers


@dataclass
class Phase:
    """One ``fit`` call: its epoch count and how to prepare (freeze/compile) the model for it."""

    name: str
    epochs: int
    learning_rate: float
    prepare: Callable[[keras.Model], None] = field(default=lambda model: None)


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


def build_optimizer(
    params: TrainParams, learning_rate: float, steps_per_epoch: int, epochs: int, ema_momentum: float = 0.0
) -> keras.optimizers.Optimizer:
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
        return keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=params.weight_decay, use_ema=True, ema_momentum=ema_momentum
        )
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay)


def transfer_phases(params: TransferParams, backbone: keras.Model, pretrained: bool) -> list[Phase]:
    """Head training on the frozen backbone, then fine-tuning (pretrained weights only)."""
    phases = [Phase("head" if pretrained else "train", params.epochs, params.learning_rate)]
    if pretrained and params.fine_tune_epochs:
        phases.append(
            Phase(
                "fine_tune",
                params.fine_tune_epochs,
                params.fine_tune_learning_rate,
                prepare=lambda _model: unfreeze_top_layers(
                    backbone, params.fine_tune_layers, params.fine_tune_batch_norm
                ),
            )
        )
    return phases
