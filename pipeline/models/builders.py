"""Model builders: the focal-loss CNN and the EfficientNetB7 / EfficientNet-Lite0 transfer models.

All models take RGB images with values in 0..255 (``float32``) at their input size, and
carry their class order and source image size in a metadata layer (see
:func:`metadata_layer`), so a saved ``.keras`` file alone is enough to predict.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
from keras import layers

from pipeline.config import CnnParams, EffNetParams, LiteParams, TransferParams
from pipeline.errors import PipelineError

EFFNETB7_WEIGHTS_FILE = "efficientnetb7_notop.h5"
EFFNETB7_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/efficientnetb7_notop.h5"


METADATA_PREFIX = "ham10000_metadata"


def metadata_layer(classes: tuple[str, ...] | list[str], source_size: int | None) -> layers.Layer:
    """An identity layer whose name records what inference needs: the class order and the
    ingest size the model was trained from (predict repeats centre crop -> source size ->
    input size). A built-in layer, not a custom class, so any Keras and ``mlflow models
    serve`` load the model without importing this package."""
    # float32 like the softmax before it: under a mixed-precision policy the default would
    # cast the probabilities to bfloat16/float16 and the loss would see rounded ones (NaN
    # losses with focal loss on a GPU, measured).
    return layers.Identity(name=".".join([METADATA_PREFIX, "source", str(source_size or 0), "classes", *classes]), dtype="float32")


def _metadata(model: keras.Model) -> tuple[list[str], int]:
    for layer in reversed(model.layers):
        if layer.name.startswith(METADATA_PREFIX + "."):
            fields = layer.name.split(".")
            return fields[4:], int(fields[2])
    raise PipelineError(f"model '{model.name}' has no metadata layer: it was not built by this pipeline")


def model_class_names(model: keras.Model) -> list[str]:
    """The class order stored in a model built by this module."""
    return _metadata(model)[0]


def model_source_size(model: keras.Model) -> int:
    """The ingest image size the model was trained from (its input size if not recorded)."""
    return _metadata(model)[1] or model_input_size(model)


def model_input_size(model: keras.Model) -> int:
    """The square input side a model expects."""
    shape = model.input_shape
    if shape[1] is None or shape[1] != shape[2]:
        raise PipelineError(f"model '{model.name}' expects input shape {shape}, not a fixed square image")
    return int(shape[1])


def classifier_head(features, classes: tuple[str, ...], dropout: float, source_size: int | None):
    x = layers.Dropout(dropout, name="head_dropout")(features) if dropout > 0 else features
    # float32 output keeps the softmax and the loss numerically safe under mixed precision.
    x = layers.Dense(len(classes), name="logits", dtype="float32")(x)
    x = layers.Activation("softmax", name="probabilities", dtype="float32")(x)
    return metadata_layer(classes, source_size)(x)


def _batch_norm(name: str, momentum: float) -> layers.BatchNormalization:
    """BatchNorm whose moving statistics (used at inference) follow the batch ones with
    ``momentum``: a high one (Keras' 0.99) needs a few hundred steps to settle, a low one
    (0.9) settles fast but reflects only the last ~10 batches, so predictions jitter from
    one epoch to the next."""
    return layers.BatchNormalization(momentum=momentum, name=name)


def _residual_block(x, filters: int, stride: int, name: str, separable: bool, bn_momentum: float):
    """Two 3x3 convolutions (full or depthwise-separable) with a residual shortcut.

    Separable convolutions cost about 1/8 of the arithmetic of full ones; on two CPU cores
    the measured gap is smaller (small feature maps are bound by memory traffic and
    per-operation overhead), but full convolutions still trained at half the speed
    (reports/experiments.md, e4), so separable is the CPU default.
    """
    convolution = layers.SeparableConv2D if separable else layers.Conv2D
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = _batch_norm(f"{name}_proj_bn", bn_momentum)(shortcut)
    y = convolution(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = _batch_norm(f"{name}_bn1", bn_momentum)(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = convolution(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = _batch_norm(f"{name}_bn2", bn_momentum)(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def build_cnn(params: CnnParams, classes: tuple[str, ...], source_size: int | None = None) -> keras.Model:
    """The focal-loss CNN: a strided stem, residual stages, global pooling, softmax."""
    inputs = keras.Input((params.input_size, params.input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = layers.Conv2D(params.filters[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _batch_norm("stem_bn", params.batch_norm_momentum)(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate(params.filters):
        for block in range(params.blocks_per_stage):
            stride = (2 if stage > 0 else params.first_stage_stride) if block == 0 else 1
            x = _residual_block(
                x, filters, stride, name=f"stage{stage + 1}_block{block + 1}",
                separable=params.block == "separable", bn_momentum=params.batch_norm_momentum,
            )
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier_head(x, classes, params.dropout, source_size), name="cnn_focal")


def keras_cache_weights_path() -> Path:
    """Where Keras looks for cached EfficientNetB7 weights (``$KERAS_HOME`` or ``~/.keras``)."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(keras_home) / "models" / EFFNETB7_WEIGHTS_FILE


def resolve_effnet_weights(spec: str) -> str | None:
    """Turn the ``weights`` param into what ``keras.applications`` accepts, checking files exist.

    ``none`` trains from scratch; ``imagenet`` needs the Keras cache file (this machine may
    have no internet); anything else is a path to a weights ``.h5`` file.
    """
    if spec == "none":
        return None
    if spec == "imagenet":
        cached = keras_cache_weights_path()
        if not cached.is_file():
            raise PipelineError(
                f"EfficientNetB7 ImageNet weights not found at {cached}: download {EFFNETB7_WEIGHTS_URL} "
                f"to that path (or set train_effnetb7.weights to the file's path, or to none to train from scratch)"
            )
        return "imagenet"
    path = Path(spec)
    if not path.is_file():
        raise PipelineError(
            f"train_effnetb7.weights: file {path} not found (expected {EFFNETB7_WEIGHTS_FILE}; "
            "use imagenet for the Keras cache or none to train from scratch)"
        )
    return str(path)


def build_effnetb7(
    params: EffNetParams, classes: tuple[str, ...], source_size: int | None = None
) -> tuple[keras.Model, keras.Model]:
    """EfficientNetB7 backbone plus a new head; returns (model, backbone).

    With pretrained weights the backbone starts frozen and is always called with
    ``training=False``, so its BatchNorm statistics stay frozen during fine-tuning (the Keras
    transfer-learning recipe). Keras EfficientNet normalises 0..255 inputs itself.
    """
    weights = resolve_effnet_weights(params.weights)
    pretrained = weights is not None
    backbone = keras.applications.EfficientNetB7(
        include_top=False, weights=weights, input_shape=(params.input_size, params.input_size, 3), pooling="avg"
    )
    return _transfer_model(backbone, params, classes, source_size, pretrained, "effnetb7"), backbone


def build_effnet_lite(
    variant: str,
    params: LiteParams,
    classes: tuple[str, ...],
    source_size: int | None = None,
    weights_dir: Path | None = None,
) -> tuple[keras.Model, keras.Model]:
    """EfficientNet-Lite ``variant`` (``lite0`` ...) backbone, ImageNet weights from its import
    stage's ``weights_dir``, plus a new head."""
    from pipeline.models.efficientnet_lite import build_lite_backbone

    pretrained = params.weights == "imagenet"
    if pretrained and weights_dir is None:
        raise PipelineError(f"train_effnet_{variant}.weights is imagenet but no converted weights file was given")
    backbone = build_lite_backbone(variant, params.input_size, weights_dir if pretrained else None)
    return _transfer_model(backbone, params, classes, source_size, pretrained, f"effnet_{variant}"), backbone


def average_models(members: list[keras.Model], classes: tuple[str, ...], source_size: int | None, name: str) -> keras.Model:
    """One model whose output is the mean of the ``members``' probabilities (a seed ensemble).

    Each member keeps its own graph under its own name (``member_1`` ...), and the mean carries
    the metadata layer like any model of this module, so the saved file predicts, evaluates and
    registers exactly like a single model."""
    inputs = keras.Input(members[0].input_shape[1:], name="image")
    renamed = [keras.Model(member.inputs[0], member.outputs[0], name=f"member_{number}") for number, member in enumerate(members, start=1)]
    mean = layers.Average(name="mean_probabilities", dtype="float32")([member(inputs) for member in renamed])
    return keras.Model(inputs, metadata_layer(classes, source_size)(mean), name=f"{name}_x{len(members)}")


def shades_of_gray(images, power: float):
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004) on a batch of 0-255 RGB images:
    each channel scaled by ``mean / norm_c``, ``norm_c`` its Minkowski ``power``-norm mean over the
    image, so the estimated illuminant becomes gray. Built from Keras ops, so a saved model carries
    it without custom objects (it loads wherever Keras does)."""
    from keras import ops

    positive = ops.maximum(images, 1e-3)  # pure black would give a zero norm
    norm = ops.power(ops.mean(ops.power(positive / 255.0, power), axis=(1, 2), keepdims=True), 1.0 / power)
    gain = ops.mean(norm, axis=-1, keepdims=True) / ops.maximum(norm, 1e-6)
    return ops.clip(images * gain, 0.0, 255.0)


def _transfer_model(backbone, params: TransferParams, classes, source_size, pretrained: bool, name: str) -> keras.Model:
    """A backbone (pooled features) plus the classification head.

    With pretrained weights the backbone starts frozen and, unless
    ``fine_tune_batch_norm``, is called with ``training=False``, so its BatchNorm layers stay in
    inference mode during fine-tuning too (the Keras transfer-learning recipe).
    """
    backbone.trainable = not pretrained
    inputs = keras.Input((params.input_size, params.input_size, 3), name="image")
    images = shades_of_gray(inputs, params.color_constancy_power) if params.color_constancy_power else inputs
    frozen_batch_norm = pretrained and not params.fine_tune_batch_norm
    features = backbone(images, training=False) if frozen_batch_norm else backbone(images)
    head = classifier_head(features, classes, params.dropout, source_size)
    return keras.Model(inputs, head, name=name)


def unfreeze_top_layers(backbone: keras.Model, count: int, batch_norm: bool = False) -> None:
    """Make the top ``count`` backbone layers (0 = all) trainable; BatchNorm layers stay frozen
    unless ``batch_norm``."""
    backbone.trainable = True
    boundary = len(backbone.layers) - count if count else 0
    for position, layer in enumerate(backbone.layers):
        layer.trainable = position >= boundary and (batch_norm or not isinstance(layer, layers.BatchNormalization))
