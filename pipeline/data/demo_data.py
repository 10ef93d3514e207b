"""Deterministic synthetic demo data in the exact HAM10000 folder layout.

The demo set lets ``make run`` work on a fresh machine with no download. It mimics what
matters to the pipeline: the seven dx codes in HAM10000's imbalance (nv dominates), several
images per lesion (so a split must group by lesion_id), the metadata columns of
``HAM10000_metadata.csv`` and the two image folders. Each class has its own colour, shape,
border and texture, with noise, so a model can learn it but not trivially.
Its metrics mean nothing medically.

Regenerate with ``python -m pipeline.data.demo_data data/demo`` (the committed copy was made so).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.config import HAM10000_CLASSES
from pipeline.data.ingest import METADATA_FILE

#: Image counts per class in the real HAM10000 (10,015 images).
HAM10000_COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
LOCALIZATIONS = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "scalp")
DX_TYPES = {"nv": "follow_up", "mel": "histo", "bkl": "histo", "bcc": "histo", "akiec": "histo", "vasc": "consensus", "df": "consensus"}


@dataclass(frozen=True)
class LesionLook:
    """How one class tends to look: mean RGB, radius (fraction of height), border irregularity."""

    colour: tuple[int, int, int]
    radius: float
    irregularity: float
    elongation: float


LOOKS = {
    "nv": LesionLook((115, 78, 52), 0.28, 0.03, 1.1),
    "mel": LesionLook((62, 42, 48), 0.36, 0.16, 1.25),
    "bkl": LesionLook((165, 125, 85), 0.30, 0.07, 1.5),
    "bcc": LesionLook((205, 135, 140), 0.24, 0.05, 1.0),
    "akiec": LesionLook((185, 95, 80), 0.30, 0.10, 1.3),
    "vasc": LesionLook((160, 40, 75), 0.20, 0.04, 1.0),
    "df": LesionLook((160, 112, 85), 0.22, 0.02, 1.0),
}


def class_counts(total: int, minimum: int) -> dict[str, int]:
    """HAM10000's class proportions scaled to about ``total`` images, at least ``minimum`` each."""
    scale = total / sum(HAM10000_COUNTS.values())
    return {dx: max(minimum, round(count * scale)) for dx, count in HAM10000_COUNTS.items()}


def render_lesion(dx: str, lesion_rng: np.random.Generator, image_rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One RGB image of a lesion of class ``dx``.

    ``lesion_rng`` fixes the lesion (shape, colour), ``image_rng`` the shot (position, noise),
    so images of one lesion look alike, as in HAM10000.
    """
    look = LOOKS[dx]
    skin = np.array([222, 180, 150]) + lesion_rng.normal(0, 12, 3)
    colour = np.array(look.colour) + lesion_rng.normal(0, 28, 3)
    radius = height * look.radius * lesion_rng.uniform(0.8, 1.2)
    phases = lesion_rng.uniform(0, 2 * np.pi, 4)
    angle = lesion_rng.uniform(0, np.pi) + image_rng.normal(0, 0.3)

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width / 2 + image_rng.normal(0, width * 0.04)
    cy = height / 2 + image_rng.normal(0, height * 0.04)
    dx_, dy_ = x - cx, y - cy
    rx = dx_ * np.cos(angle) + dy_ * np.sin(angle)
    ry = (-dx_ * np.sin(angle) + dy_ * np.cos(angle)) * look.elongation
    theta = np.arctan2(ry, rx)
    border = radius * (1 + look.irregularity * sum(np.sin((k + 2) * theta + phases[k]) for k in range(4)))
    distance = np.hypot(rx, ry)
    inside = np.clip((border - distance) / 2.0, 0, 1)[..., None]  # soft edge

    image = skin + image_rng.normal(0, 6, (height, width, 3))
    lesion = colour + image_rng.normal(0, 14, (height, width, 3))
    if dx == "mel":  # blue-grey veil and dark blotches
        veil = (np.sin(rx / 3 + phases[0]) > 0.3)[..., None] * np.array([-5, 3, 18])
        lesion = lesion + veil
    elif dx == "bkl":  # waxy ridges
        lesion = lesion + (np.sin(ry / 2.0) * 8)[..., None]
    elif dx == "bcc":  # red branching vessels
        vessels = (np.abs(np.sin(rx / 4 + np.sin(ry / 5) * 2)) < 0.12)[..., None] * np.array([10, -30, -25])
        lesion = lesion + vessels
    elif dx == "akiec":  # scaly surface
        lesion = lesion + image_rng.normal(0, 15, (height, width, 1))
    elif dx == "vasc":  # lobules
        lesion = lesion + ((np.sin(rx / 2.5) * np.sin(ry / 2.5)) > 0.4)[..., None] * np.array([-15, -5, 10])
    elif dx == "df":  # white central patch
        centre = (distance < radius * 0.45)[..., None]
        lesion = np.where(centre, lesion + np.array([30, 35, 32]), lesion)
    pixels = image * (1 - inside) + lesion * inside
    return np.clip(pixels, 0, 255).astype(np.uint8)


def generate(out_dir: str | Path, total: int = 700, minimum: int = 16, width: int = 80, height: int = 60, seed: int = 2018) -> pd.DataFrame:
    """Write the demo data set into ``out_dir`` and return its metadata."""
    out_dir = Path(out_dir)
    parts = [out_dir / "HAM10000_images_part_1", out_dir / "HAM10000_images_part_2"]
    for part in parts:
        part.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    lesion_number = 0
    for dx in HAM10000_CLASSES:
        remaining = class_counts(total, minimum)[dx]
        while remaining > 0:
            lesion_number += 1
            images_of_lesion = min(remaining, int(rng.choice([1, 1, 1, 2, 2, 3])))
            lesion_seed = int(rng.integers(2**31))
            age = float(rng.integers(4, 18) * 5)
            sex = str(rng.choice(["male", "female"]))
            localization = str(rng.choice(LOCALIZATIONS))
            for _ in range(images_of_lesion):
                rows.append(
                    {
                        "lesion_id": f"HAM_{lesion_number:07d}",
                        "dx": dx,
                        "dx_type": DX_TYPES[dx],
                        "age": age,
                        "sex": sex,
                        "localization": localization,
                        "lesion_seed": lesion_seed,
                        "image_seed": int(rng.integers(2**31)),
                    }
                )
            remaining -= images_of_lesion
    # Shuffle so image ids do not reveal the class, then number them like ISIC ids.
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    for number, row in enumerate(rows):
        row["image_id"] = f"DEMO_{number:07d}"
        image = render_lesion(
            row["dx"], np.random.default_rng(row["lesion_seed"]), np.random.default_rng(row["image_seed"]), width, height
        )
        part = parts[0] if number < len(rows) // 2 else parts[1]
        Image.fromarray(image).save(part / f"{row['image_id']}.jpg", quality=90)
    metadata = pd.DataFrame(rows)[["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]]
    metadata.to_csv(out_dir / METADATA_FILE, index=False)
    return metadata


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the demo data set into")
    parser.add_argument("--total", type=int, default=700, help="approximate number of images")
    args = parser.parse_args(argv)
    metadata = generate(args.out_dir, total=args.total)
    print(f"wrote {len(metadata)} images of {metadata['lesion_id'].nunique()} lesions to {args.out_dir}")


if __name__ == "__main__":
    main()
