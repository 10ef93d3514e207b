"""tf.data input pipeline: on-the-fly symmetries of the square, shapes and labels."""

import numpy as np
import pytest

from pipeline.data.datasets import make_dataset
from pipeline.errors import PipelineError


def _symmetries(image: np.ndarray) -> list[np.ndarray]:
    """The eight rotations and reflections of a square image."""
    rotations = [np.rot90(image, k) for k in range(4)]
    return rotations + [np.fliplr(rotated) for rotated in rotations]


def _distinct_images(count: int, size: int = 6) -> np.ndarray:
    # Random pixels: no image equals any of its own symmetries, so each output is identifiable.
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(("random_flip", "random_rotate90", "expected_variants"), [(True, False, 4), (True, True, 8)])
def test_training_batches_are_symmetries_of_their_source_images(random_flip, random_rotate90, expected_variants):
    images = _distinct_images(400)
    labels = np.arange(400) % 7
    dataset = make_dataset(images, labels, 7, 64, training=True, seed=3, random_flip=random_flip, random_rotate90=random_rotate90)
    seen_variants = set()
    for batch_images, batch_labels in dataset:
        for image, one_hot in zip(batch_images.numpy().astype(np.uint8), batch_labels.numpy()):
            # Pixel multisets identify the source image whatever the orientation.
            source = next(i for i in range(len(images)) if np.array_equal(np.sort(images[i], axis=None), np.sort(image, axis=None)))
            variant = next(k for k, candidate in enumerate(_symmetries(images[source])) if np.array_equal(candidate, image))
            seen_variants.add(variant)
            assert one_hot.argmax() == labels[source]
    assert len(seen_variants) == expected_variants


def test_evaluation_batches_keep_order_and_orientation():
    images = _distinct_images(10)
    batches = list(make_dataset(images, None, 7, 4, random_flip=True, random_rotate90=True))
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batches]).astype(np.uint8), images)


def test_rotation_refuses_non_square_images():
    with pytest.raises(PipelineError, match="random_rotate90 needs square images, got 4x6"):
        make_dataset(np.zeros((2, 4, 6, 3), np.uint8), np.zeros(2, int), 7, 2, training=True, random_rotate90=True)
