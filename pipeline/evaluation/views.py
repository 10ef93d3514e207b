"""Views of the whole image at test time: does a model see more of the lesion than ingest's square?

HAM10000's images are 4:3 (600 x 450, or 200 x 150 in smaller copies); ``ingest`` keeps the
largest centred square and drops a quarter of every image, where lesion borders sometimes are.
A model trained on those squares can still be shown the rest at test time, in one of the views
of :data:`VIEWS`, every one at the scale of ingest's square (the short side resized to the
model's input size, so a lesion keeps the size training saw):

- ``centre``: the centred square, ingest's crop (the reference; what ``evaluate`` scores; here
  cut from the resized frame, so its pixels differ from ingest's by resampling only);
- ``three_crops``: the mean over three squares covering the frame (left, centre, right);
- ``full_frame``: the whole frame in one pass (the networks are fully convolutional and pool
  globally; :func:`any_size` lifts the saved model's fixed input shape).

``python -m pipeline.evaluation.views`` scores each view on one split (validation, for
choosing) with the same lesion-bootstrap intervals as ``evaluate``, paired against ``centre``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from pipeline.config import BaseParams, data_source, parse_section, read_params
from pipeline.data.datasets import label_indices
from pipeline.data.images import load_frame
from pipeline.data.ingest import locate_images
from pipeline.errors import PipelineError, run_cli
from pipeline.evaluation.uncertainty import Bootstrap
from pipeline.io import write_json
from pipeline.metrics import point_metrics
from pipeline.serving.inference import load_model, predict_probabilities

VIEWS = ("centre", "three_crops", "full_frame")


def square_crops(frame: np.ndarray) -> list[np.ndarray]:
    """Three squares of side ``min(height, width)`` covering ``frame``: first, centred, last
    along its long side (the centred one is ingest's)."""
    height, width = frame.shape[:2]
    side = min(height, width)
    long_side = max(height, width)
    starts = (0, (long_side - side) // 2, long_side - side)
    if width >= height:
        return [frame[:, start : start + side] for start in starts]
    return [frame[start : start + side, :] for start in starts]


def any_size(model: keras.Model) -> keras.Model:
    """The same model (same weights) accepting images of any height and width."""

    def free(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                shape = node["config"]["batch_shape"]
                node["config"]["batch_shape"] = [shape[0], None, None, shape[-1]]
            for value in node.values():
                free(value)
        elif isinstance(node, list):
            for value in node:
                free(value)

    config = model.get_config()
    free(config)
    flexible = model.__class__.from_config(config)
    flexible.set_weights(model.get_weights())
    return flexible


def _crop_probabilities(model: keras.Model, frames: np.ndarray, tta: bool) -> list[np.ndarray]:
    """The model's probabilities of the first, centred and last squares of every frame."""
    crops = [np.stack(parts) for parts in zip(*(square_crops(frame) for frame in frames))]
    return [predict_probabilities(model, crop, tta=tta) for crop in crops]


def _from_crops(view: str, crops: list[np.ndarray]) -> np.ndarray:
    return crops[1] if view == "centre" else np.mean(crops, axis=0).astype(np.float32)


def view_probabilities(model: keras.Model, frames: np.ndarray, view: str, tta: bool) -> np.ndarray:
    """Class probabilities of ``frames`` (N x h x w x 3 at ingest's scale) seen in ``view``
    (with ``tta``, each the mean over the image and its flips, as evaluate scores)."""
    if view not in VIEWS:
        raise PipelineError(f"unknown view {view!r} (known: {', '.join(VIEWS)})")
    return all_views(model, frames, tta, (view,))[view]


def all_views(
    model: keras.Model, frames: np.ndarray, tta: bool, views: tuple[str, ...] = VIEWS
) -> dict[str, np.ndarray]:
    """:func:`view_probabilities` of each of ``views``, each crop predicted once."""
    crops = _crop_probabilities(model, frames, tta) if set(views) - {"full_frame"} else []
    return {
        view: predict_probabilities(any_size(model), frames, tta=tta)
        if view == "full_frame"
        else _from_crops(view, crops)
        for view in views
    }


def load_frames(data_dir: Path, image_ids: pd.Series, size: int) -> np.ndarray:
    """The original images of ``image_ids`` as whole frames at ingest's scale (one array; the
    frames of one data set share their shape, as HAM10000's do)."""
    found, missing, _ = locate_images(data_dir, image_ids)
    if missing:
        raise PipelineError(f"{data_dir}: {len(missing)} images of the split not found (first: {missing[0]})")
    frames = [load_frame(found[image_id], size) for image_id in image_ids]
    shapes = {frame.shape for frame in frames}
    if len(shapes) != 1:
        raise PipelineError(f"{data_dir}: frames of several shapes {sorted(shapes)[:3]}; views need one")
    return np.stack(frames)


def compare_views(
    models: dict[str, Path], split_csv: Path, data_dir: Path, base: BaseParams, tta: bool, resamples: int = 1000
) -> dict[str, Any]:
    """Each model's balanced accuracy in every view, with lesion-bootstrap intervals, and each
    view paired against ``centre`` over the same resamples."""
    rows = pd.read_csv(split_csv)
    labels = label_indices(rows["dx"], base.classes)
    bootstrap = Bootstrap.of(labels, rows["lesion_id"].to_numpy(), resamples, 0, 0.95, base.classes.index("mel"))
    report: dict[str, Any] = {"split": split_csv.stem, "images": len(rows), "tta": tta, "models": {}}
    frames_by_size: dict[int, np.ndarray] = {}
    for name, folder in models.items():
        model = load_model(folder)
        size = int(model.input_shape[1])
        frames = frames_by_size.setdefault(size, load_frames(data_dir, rows["image_id"], size))
        probabilities = all_views(model, frames, tta)
        result = {}
        for view, probs in probabilities.items():
            point = point_metrics(labels, probs, bootstrap.melanoma, ranking=False)
            result[view] = {
                "balanced_accuracy": point["balanced_accuracy"],
                "balanced_accuracy_ci": bootstrap.intervals(probs, base.classes)["balanced_accuracy_ci"],
                "accuracy": point["accuracy"],
                "melanoma_recall": point["melanoma_recall"],
            }
            if view != "centre":
                result[view]["minus_centre"] = bootstrap.paired(probs, probabilities["centre"])
        report["models"][name] = result
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True, help="params.yaml (base classes; ingest.data_dir: the originals)")
    parser.add_argument("--split-csv", required=True, help="the split to score, e.g. data/split/val.csv")
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER (a training stage's output)")
    parser.add_argument("--no-tta", action="store_true", help="no flips (training's validation scoring)")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    base = parse_section(read_params(args.params).get("base"), BaseParams, f"{Path(args.params).name}: base")
    data_dir = data_source(args.params)
    if data_dir is None:
        raise PipelineError(f"{args.params}: ingest.data_dir is not set (the folder of the original images)")
    malformed = [item for item in args.model if "=" not in item]
    if malformed:
        raise PipelineError(f"--model {malformed[0]}: give NAME=FOLDER")
    models = {name: Path(folder) for name, folder in (item.split("=", 1) for item in args.model)}
    report = compare_views(models, Path(args.split_csv), data_dir, base, not args.no_tta)
    write_json(Path(args.out), report)
    for name, result in report["models"].items():
        for view, numbers in result.items():
            low, high = numbers["balanced_accuracy_ci"]
            line = f"{name:14s} {view:12s} balanced accuracy {numbers['balanced_accuracy']:.3f} [{low:.3f}, {high:.3f}]"
            if "minus_centre" in numbers:
                paired = numbers["minus_centre"]["balanced_accuracy"]
                line += f"  minus centre {paired['difference']:+.3f} [{paired['ci'][0]:+.3f}, {paired['ci'][1]:+.3f}]"
            print(line)


if __name__ == "__main__":
    sys.exit(run_cli(main))
