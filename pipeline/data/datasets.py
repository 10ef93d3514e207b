"""Arrays and input pipelines for training, evaluation and prediction.

On the TensorFlow backend batches come from ``tf.data`` (as the published runs did); on any
other backend (JAX, torch) from :class:`ArrayBatches`, a ``keras.utils.PyDataset`` over the
same in-memory arrays with the same seeded per-epoch shuffling, flips and transposes, so
nothing here imports TensorFlow unless it is the backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import keras
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.data.ingest import load_ingested, select_images
from pipeline.data.split import read_split


@dataclass(frozen=True)
class LabelledImages:
    """Images (uint8, N x S x S x 3) with integer labels in class order."""

    images: np.ndarray
    labels: np.ndarray
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


def label_indices(dx: pd.Series, classes: tuple[str, ...]) -> np.ndarray:
    """Map dx codes to their position in ``classes``."""
    position = {name: index for index, name in enumerate(classes)}
    unknown = sorted(set(dx) - set(position))
    if unknown:
        raise PipelineError(f"unknown dx code(s) {unknown}; known: {list(classes)}")
    return dx.map(position).to_numpy(dtype=np.int32)


def resize_images(images: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """Resize a uint8 image array once up front (cheaper than resizing in every epoch)."""
    if images.shape[1] == size:
        # A real in-memory copy: TensorFlow may alias a numpy buffer, and a memory-mapped one
        # (np.load(mmap_mode="r")) can be unmapped under it, which crashes the process.
        return np.array(images, dtype=np.uint8, copy=True)
    resized = np.empty((len(images), size, size, 3), dtype=np.uint8)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for start in range(0, len(images), chunk):
            batch = tf.image.resize(np.asarray(images[start : start + chunk]), (size, size), antialias=True)
            resized[start : start + chunk] = tf.cast(tf.round(tf.clip_by_value(batch, 0, 255)), tf.uint8).numpy()
        return resized
    ops = keras.ops
    for start in range(0, len(images), chunk):
        batch = ops.image.resize(ops.cast(np.asarray(images[start : start + chunk]), "float32"), (size, size), interpolation="bilinear", antialias=True)
        resized[start : start + chunk] = ops.convert_to_numpy(ops.cast(ops.round(ops.clip(batch, 0, 255)), "uint8"))
    return resized


def load_split_images(ingested_dir: str | Path, split_dir: str | Path, split: str, classes: tuple[str, ...], size: int) -> LabelledImages:
    """The images of one split (``train``, ``val`` or ``test``) at ``size`` pixels."""
    images, index = load_ingested(ingested_dir)
    frame = read_split(split_dir, split)
    selected = select_images(images, index, frame["image_id"])
    return LabelledImages(resize_images(selected, size), label_indices(frame["dx"], classes), list(frame["image_id"]))


def load_augmented_images(augmented_dir: str | Path, classes: tuple[str, ...], size: int) -> LabelledImages:
    """The augment stage's train set (originals plus augmented copies) at ``size`` pixels."""
    images, index = load_ingested(augmented_dir)
    return LabelledImages(resize_images(images, size), label_indices(index["dx"], classes), list(index["image_id"]))


def subsample(data: LabelledImages, limit: int, seed: int) -> LabelledImages:
    """A stratified random subset of at most ``limit`` images (for bounded smoke runs)."""
    if limit == 0 or limit >= len(data):
        return data
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(data)), train_size=limit, stratify=data.labels, random_state=seed)
    keep = np.sort(keep)
    return LabelledImages(data.images[keep], data.labels[keep], [data.image_ids[i] for i in keep])


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    num_classes: int,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    random_flip: bool = False,
    random_rotate90: bool = False,
    multiple_of: int = 1,
    shard: tuple[int, int] = (0, 1),
):
    """Batches of float32 0..255 images (+ one-hot labels) for ``fit`` / ``predict``.

    Training data is reshuffled every epoch (seeded) and optionally flipped at random on
    both axes and rotated by 90 degrees: dermoscopy has no canonical orientation, so the
    eight symmetries of the square are free extra data. A ``tf.data`` pipeline on the
    TensorFlow backend, an :class:`ArrayBatches` elsewhere.

    ``multiple_of`` is the number of devices a batch is split across (JAX's data parallelism
    needs every batch divisible by it; TensorFlow's strategy splits uneven batches itself),
    ``shard`` (rank, process count) the part of every batch a process of a training group
    feeds: see :class:`ArrayBatches`.
    """
    if random_rotate90 and images.shape[1] != images.shape[2]:
        raise PipelineError(f"random_rotate90 needs square images, got {images.shape[1]}x{images.shape[2]}")
    if keras.backend.backend() == "tensorflow":
        return _tf_dataset(images, labels, num_classes, batch_size, training, seed, random_flip, random_rotate90)
    return ArrayBatches(images, labels, num_classes, batch_size, training, seed, random_flip, random_rotate90, multiple_of, shard)


class ArrayBatches(keras.utils.PyDataset):
    """In-memory batches for every backend: a seeded permutation per epoch, then per-image
    flips / transposes drawn from a generator seeded by (seed, epoch, batch), so a batch's
    content depends on neither thread timing nor ``workers``.

    Split across ``multiple_of`` devices, every batch must divide evenly: an epoch's last,
    partial training batch is cut down to a multiple (at most ``multiple_of - 1`` images sit
    out that epoch, other ones each epoch as the order is reshuffled), and a prediction batch is
    padded by repeating its last image (the caller keeps the first ``len(images)`` outputs).

    In a training group of ``shard = (rank, count)`` processes each process feeds its own
    contiguous part of every global batch (Keras assembles the parts in rank order): the batch
    and its augmentation draws are those of a single process, then cut, so a group trains on
    exactly the batches one process would.
    """

    def __init__(self, images, labels, num_classes, batch_size, training=False, seed=0, random_flip=False, random_rotate90=False,
                 multiple_of=1, shard=(0, 1)):
        if multiple_of < 1 or batch_size % multiple_of:
            raise PipelineError(f"batch_size {batch_size} cannot be split evenly across {multiple_of} devices: "
                                f"make it a multiple of {multiple_of}")
        if multiple_of % shard[1]:
            raise PipelineError(f"{multiple_of} devices cannot be shared evenly by {shard[1]} processes")
        self.shard = shard
        # Threads (numpy copies release the GIL): enough to feed a GPU from in-memory arrays.
        super().__init__(workers=min(8, os.cpu_count() or 1), use_multiprocessing=False, max_queue_size=16)
        self.images, self.labels = images, labels
        self.num_classes, self.batch_size = num_classes, batch_size
        self.training, self.seed = training, seed
        self.random_flip, self.random_rotate90 = random_flip, random_rotate90
        self.multiple_of = multiple_of
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.training:
            return np.arange(len(self.images))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

    def __len__(self) -> int:
        if not self.training:
            return int(np.ceil(len(self.images) / self.batch_size))
        full, rest = divmod(len(self.images), self.batch_size)
        return full + (rest >= self.multiple_of)

    def __getitem__(self, index: int):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        uneven = len(chosen) % self.multiple_of
        if uneven and self.training:
            chosen = chosen[: len(chosen) - uneven]
        elif uneven:
            chosen = np.concatenate([chosen, np.repeat(chosen[-1:], self.multiple_of - uneven)])
        draws = np.random.default_rng([self.seed, self.epoch, index]).random((3, len(chosen))) < 0.5
        rank, count = self.shard
        if count > 1:
            part = slice(rank * len(chosen) // count, (rank + 1) * len(chosen) // count)
            chosen, draws = chosen[part], draws[:, part]
        batch = self.images[chosen].astype(np.float32)
        if self.training and (self.random_flip or self.random_rotate90):
            if self.random_flip:
                batch[draws[0]] = batch[draws[0], :, ::-1]
                batch[draws[1]] = batch[draws[1], ::-1]
            if self.random_rotate90:
                batch[draws[2]] = batch[draws[2]].transpose(0, 2, 1, 3)
        if self.labels is None:
            return (batch,)
        return batch, np.eye(self.num_classes, dtype=np.float32)[self.labels[chosen]]

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


def _tf_dataset(images, labels, num_classes, batch_size, training, seed, random_flip, random_rotate90):
    import tensorflow as tf

    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(images)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=False)

    def prepare(batch_images, batch_labels=None):
        batch_images = tf.cast(batch_images, tf.float32)
        if training and random_flip:
            batch_images = _random_flips(batch_images, seed)
        if training and random_rotate90:
            batch_images = _random_transpose(batch_images, seed + 2)
        if batch_labels is None:
            return batch_images
        return batch_images, tf.one_hot(batch_labels, num_classes)

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _random_flips(batch, seed: int):
    """Flip each image left-right and up-down with probability 1/2 each (per image)."""
    import tensorflow as tf

    batch = _at_random(batch, lambda images: tf.reverse(images, axis=[2]), seed)
    return _at_random(batch, lambda images: tf.reverse(images, axis=[1]), seed + 1)


def _random_transpose(batch, seed: int):
    """Swap the rows and columns of each image with probability 1/2: combined with the two
    flips this draws uniformly from all eight rotations and reflections of the square."""
    import tensorflow as tf

    return _at_random(batch, lambda images: tf.transpose(images, perm=[0, 2, 1, 3]), seed)


def _at_random(batch, transform, seed: int):
    """``transform`` applied to each image of ``batch`` with probability 1/2 (seeded draw)."""
    import tensorflow as tf

    chosen = tf.random.uniform([tf.shape(batch)[0], 1, 1, 1], seed=seed) < 0.5
    return tf.where(chosen, transform(batch), batch)
