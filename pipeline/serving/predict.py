"""Classify images with a trained or registered model, outside the pipeline.

    python -m pipeline.serving.predict --model models/cnn_focal/model.keras photo.jpg folder/
    python -m pipeline.serving.predict --model models:/ham10000-cnn-focal@champion folder/ --output out.csv
    ham10000-predict --model models/cnn_focal --tta --explain gradcam/ folder/

Images of any size get exactly the training preprocessing: the largest centred square,
resized to the ingest size the model was trained from, then to the model's input size. The
model file carries the class order and both sizes, so nothing else is needed. Output: one
JSON line per image on stdout (``{"image", "dx", "probabilities"}``), or a CSV with
``--output``. Unreadable files are reported on stderr and skipped; the exit status is 1 if
any file failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data.images import ImageDecodeError, find_image_files, load_square_image
from pipeline.errors import PipelineError, run_cli


def _decode(path: Path, source_size: int) -> np.ndarray | str:
    """The image, or one line saying why not: one bad file never loses the rest of the batch."""
    try:
        return load_square_image(path, source_size)
    except ImageDecodeError as error:
        return " ".join(str(error).split())
    except Exception as error:  # a decoder's bug on a crafted file: still one file, one line
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        return f"{path}: cannot decode image ({type(error).__name__}: {detail})"


def decoded_batches(
    paths: list[Path], source_size: int, batch_size: int
) -> Iterator[tuple[list[Path], np.ndarray, list[str]]]:
    """Decode ``paths`` in parallel threads (PIL releases the GIL), batch by batch.

    Yields (decoded paths, their images, error messages of the batch's failed files).
    """
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            good_paths, images, errors = [], [], []
            for path, result in zip(chunk, pool.map(lambda p: _decode(p, source_size), chunk)):
                if isinstance(result, str):
                    errors.append(result)
                else:
                    good_paths.append(path)
                    images.append(result)
            array = np.stack(images) if images else np.zeros((0, source_size, source_size, 3), np.uint8)
            yield good_paths, array, errors


def grad_cam(model, images: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1] (N x H x W at the last convolutional resolution).

    The last 4-D activation is taken from the model itself (the CNN) or, for a nested
    backbone such as EfficientNetB7, from inside the backbone with the head applied on top.
    """
    import tensorflow as tf

    forward = _conv_and_output(model)
    inputs = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        conv, probabilities = forward(inputs)
        tape.watch(conv)
        scores = tf.gather(probabilities, class_indices, axis=1, batch_dims=1)
    gradients = tape.gradient(scores, conv)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    heatmaps = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()
    peak = heatmaps.max(axis=(1, 2), keepdims=True)
    return np.divide(heatmaps, peak, out=np.zeros_like(heatmaps), where=peak > 0)


def _conv_and_output(model):
    """A function image -> (last conv activation, probabilities) for Grad-CAM."""
    import keras

    for layer in reversed(model.layers):
        output = layer.output
        if isinstance(layer, keras.Model) and len(output.shape) == 2:  # nested backbone with pooling
            inner = [sublayer for sublayer in layer.layers if len(sublayer.output.shape) == 4]
            feature_model = keras.Model(layer.inputs, [inner[-1].output, layer.output])
            head = model.layers[model.layers.index(layer) + 1 :]

            def nested(images, feature_model=feature_model, head=head):
                conv, x = feature_model(images, training=False)
                for head_layer in head:
                    x = head_layer(x, training=False)
                return conv, x

            return nested
        if len(output.shape) == 4:
            grad_model = keras.Model(model.inputs, [output, model.output])
            return lambda images: grad_model(images, training=False)
    raise PipelineError(f"model '{model.name}' has no convolutional layer for Grad-CAM")


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: Path) -> None:
    """Write the image with the heatmap blended over it as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image

    size = image.shape[:2]
    heat = (
        np.asarray(Image.fromarray((heatmap * 255).astype(np.uint8)).resize(size[::-1], Image.Resampling.BILINEAR))
        / 255.0
    )
    coloured = colormaps["jet"](heat)[..., :3] * 255
    blended = (0.55 * image + 0.45 * coloured).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([image, blended], axis=1)).save(path)


def predict(
    model_reference: str,
    inputs: list[str],
    batch_size: int = 64,
    tta: bool = False,
    explain_dir: Path | None = None,
) -> Iterator[dict | str]:
    """Yield one result dict per image, or an error string per unreadable file."""
    from pipeline.data.datasets import resize_images
    from pipeline.models.builders import model_class_names, model_input_size, model_source_size
    from pipeline.serving.inference import load_model, predict_probabilities

    model = load_model(model_reference)
    classes = model_class_names(model)
    input_size, source_size = model_input_size(model), model_source_size(model)
    paths = find_image_files(inputs)
    if not paths:
        raise PipelineError(f"no image files found in {', '.join(inputs)}")
    progress = tqdm(total=len(paths), desc="predict", unit="img", disable=None, file=sys.stderr)
    for good_paths, images, errors in decoded_batches(paths, source_size, batch_size):
        yield from errors
        if len(good_paths):
            model_images = resize_images(images, input_size)
            probabilities = predict_probabilities(model, model_images, batch_size, tta=tta)
            predicted = probabilities.argmax(axis=1)
            if explain_dir is not None:
                heatmaps = grad_cam(model, model_images, predicted)
                for path, image, heatmap in zip(good_paths, images, heatmaps):
                    save_overlay(image, heatmap, explain_dir / f"{path.stem}_gradcam.png")
            for path, row, top in zip(good_paths, probabilities, predicted):
                yield {
                    "image": str(path),
                    "dx": classes[top],
                    "probabilities": {dx: round(float(p), 6) for dx, p in zip(classes, row)},
                }
        progress.update(len(good_paths) + len(errors))
    progress.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ham10000-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="a .keras file, a folder holding model.keras, or models:/NAME@ALIAS"
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders (walked recursively)"
    )
    parser.add_argument("--output", type=Path, help="write a CSV here instead of JSON lines on stdout")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tta", action="store_true", help="average over flipped copies (test-time augmentation)")
    parser.add_argument("--explain", type=Path, metavar="DIR", help="write a Grad-CAM overlay PNG per image into DIR")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise PipelineError("--batch-size must be >= 1")

    started = time.perf_counter()
    results, failures, classified = [], 0, 0
    for item in predict(args.model, args.inputs, args.batch_size, args.tta, args.explain):
        if isinstance(item, str):
            failures += 1
            print(f"error: {item}", file=sys.stderr)
            continue
        classified += 1
        if args.output is None:
            print(json.dumps(item), flush=True)
        else:
            results.append(item)
    if args.output is not None and results:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        classes = list(results[0]["probabilities"])
        with open(args.output, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "dx", *[f"p_{dx}" for dx in classes]])
            for item in results:
                writer.writerow([item["image"], item["dx"], *[item["probabilities"][dx] for dx in classes]])
    seconds = time.perf_counter() - started
    print(
        f"classified {classified} image(s), {failures} failed, in {seconds:.1f} s "
        f"({classified / seconds:.1f} images/s, model loading included)",
        file=sys.stderr,
    )
    if failures:
        raise PipelineError(f"{failures} file(s) could not be classified (see above)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
