"""``augment``: offline albumentations on the train split only, with optional class balancing.

The split happens first, so no augmented copy of a validation or test image can exist. The
output holds every original train image plus, when ``balance_to`` > 0, augmented copies of
minority-class images until each class reaches ``balance_to`` images (at most
``max_copies_per_image`` copies of any one image, so a class of 80 images is not turned into
40 copies of each). Validation and test images are never augmented.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.config import AugmentParams

AUGMENTED_COLUMNS = ("image_id", "lesion_id", "dx", "source_image_id", "augmented")


def build_transform(params: AugmentParams, seed: int) -> A.Compose:
    """The albumentations pipeline described by the ``augment`` params, seeded."""
    return A.Compose(
        [
            A.HorizontalFlip(p=params.horizontal_flip),
            A.VerticalFlip(p=params.vertical_flip),
            A.Affine(
                scale=(1.0 - params.scale_limit, 1.0 + params.scale_limit),
                translate_percent=(-params.shift_limit, params.shift_limit),
                rotate=(-params.rotate_limit, params.rotate_limit),
                # Reflecting the border keeps skin texture at the corners instead of black wedges.
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0 if (params.rotate_limit or params.shift_limit or params.scale_limit) else 0.0,
            ),
            A.RandomBrightnessContrast(
                brightness_limit=params.brightness_limit, contrast_limit=params.contrast_limit, p=0.8
            ),
            A.HueSaturationValue(
                hue_shift_limit=params.hue_shift_limit,
                sat_shift_limit=params.saturation_shift_limit,
                val_shift_limit=0,
                p=0.8,
            ),
        ],
        seed=seed,
    )


def plan_copies(train: pd.DataFrame, params: AugmentParams, seed: int) -> list[int]:
    """Row positions of ``train`` to augment once each (a position may repeat).

    For each class below ``balance_to``, images are taken round-robin in a seeded random order
    so every image gets a copy before any gets a second one.
    """
    if params.balance_to == 0:
        return []
    rng = np.random.default_rng(seed)
    plan: list[int] = []
    for dx, positions in train.groupby("dx", sort=True).indices.items():
        needed = params.balance_to - len(positions)
        needed = min(needed, len(positions) * params.max_copies_per_image)
        if needed <= 0:
            continue
        order = rng.permutation(positions)
        plan.extend(int(order[k % len(order)]) for k in range(needed))
    return plan


def augment_train(
    images: np.ndarray, train: pd.DataFrame, params: AugmentParams, seed: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """Return (train images + augmented copies, their index) for the rows of ``train``.

    ``images`` holds the train images in the row order of ``train``.
    """
    if len(images) != len(train):
        raise ValueError(f"{len(images)} images for {len(train)} train rows")
    plan = plan_copies(train, params, seed)
    transform = build_transform(params, seed)
    output = np.empty((len(train) + len(plan),) + images.shape[1:], dtype=np.uint8)
    output[: len(train)] = images
    copy_numbers: dict[int, int] = {}
    rows = []
    for offset, position in enumerate(tqdm(plan, desc="augment", unit="img", mininterval=2.0, disable=None)):
        output[len(train) + offset] = transform(image=np.asarray(images[position]))["image"]
        copy_numbers[position] = copy_numbers.get(position, 0) + 1
        source = train.iloc[position]
        rows.append(
            {
                "image_id": f"{source['image_id']}_aug{copy_numbers[position]}",
                "lesion_id": source["lesion_id"],
                "dx": source["dx"],
                "source_image_id": source["image_id"],
                "augmented": True,
            }
        )
    originals = train[["image_id", "lesion_id", "dx"]].assign(source_image_id=train["image_id"], augmented=False)
    index = pd.concat([originals, pd.DataFrame(rows, columns=list(AUGMENTED_COLUMNS))], ignore_index=True)
    return output, index

