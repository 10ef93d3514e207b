"""``split``: a stratified train/val/test split grouped by ``lesion_id``.

Several HAM10000 images show the same lesion; if one lesion had images on both sides of a
split, the test score would measure memory instead of generalisation. scikit-learn's
``StratifiedGroupKFold`` keeps each lesion in one fold while balancing the classes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.config import SplitParams
from pipeline.errors import PipelineError

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("image_id", "lesion_id", "dx")


def _hold_out(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off about ``fraction`` of ``frame`` as one fold of a StratifiedGroupKFold."""
    n_splits = max(2, round(1.0 / fraction))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest_positions, held_positions = next(folds.split(frame, frame["dx"], groups=frame["lesion_id"]))
    return frame.iloc[rest_positions], frame.iloc[held_positions]


def split_dataset(index: pd.DataFrame, classes: tuple[str, ...], params: SplitParams, seed: int) -> dict[str, pd.DataFrame]:
    """Return ``{"train", "val", "test"}`` frames, verified leak-free and with every class."""
    columns = [column for column in index.columns if column in SPLIT_COLUMNS]
    frame = index[columns].reset_index(drop=True)
    rest, test = _hold_out(frame, params.test_fraction, seed)
    # val_fraction is a fraction of the whole set, so rescale it to what is left after test.
    train, val = _hold_out(rest.reset_index(drop=True), params.val_fraction / (1.0 - params.test_fraction), seed)
    splits = {"train": train, "val": val, "test": test}
    verify_splits(splits, classes)
    return {name: part.sort_values("image_id").reset_index(drop=True) for name, part in splits.items()}


def verify_splits(splits: dict[str, pd.DataFrame], classes: tuple[str, ...]) -> None:
    """Fail loudly if a lesion is on two sides or a class is absent from a split."""
    problems = []
    for position, first in enumerate(SPLITS):
        for second in SPLITS[position + 1 :]:
            shared = set(splits[first]["lesion_id"]) & set(splits[second]["lesion_id"])
            if shared:
                example = ", ".join(sorted(shared)[:3])
                problems.append(f"{len(shared)} lesion_id(s) in both {first} and {second} (e.g. {example})")
    for name in SPLITS:
        absent = [dx for dx in classes if dx not in set(splits[name]["dx"])]
        if absent:
            problems.append(
                f"class(es) {', '.join(absent)} absent from {name} "
                "(too few lesions of that class for these fractions)"
            )
    if problems:
        raise PipelineError("invalid split: " + "; ".join(problems))


def split_statistics(splits: dict[str, pd.DataFrame], classes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Counts per class (and in total, images and lesions) for each split."""
    statistics = {}
    for name in SPLITS:
        counts = splits[name]["dx"].value_counts()
        entry = {dx: int(counts.get(dx, 0)) for dx in classes}
        entry["images"] = int(len(splits[name]))
        entry["lesions"] = int(splits[name]["lesion_id"].nunique())
        statistics[name] = entry
    return statistics


def write_splits(splits: dict[str, pd.DataFrame], out_dir: str | Path) -> None:
    """Write ``train.csv``, ``val.csv`` and ``test.csv`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        splits[name].to_csv(out_dir / f"{name}.csv", index=False)


def read_split(split_dir: str | Path, name: str) -> pd.DataFrame:
    """Read one split CSV written by :func:`write_splits`."""
    path = Path(split_dir) / f"{name}.csv"
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as error:
        raise PipelineError(f"{path}: split file missing; run `dvc repro split`") from error

