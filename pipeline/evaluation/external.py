"""An external test set in the ISIC 2018 Task 3 test layout, scored into ``metrics/external.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

ISIC2018_INPUT = "ISIC2018_Task3_Test_Input"


ISIC2018_TRUTH = "ISIC2018_Task3_Test_GroundTruth.csv"


def load_isic2018_test(folder: Path, classes: tuple[str, ...], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a folder in the ISIC 2018 Task 3 test layout.

    ``ISIC2018_Task3_Test_GroundTruth.csv`` has one row per image with one-hot columns
    ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``; the images are ``ISIC2018_Task3_Test_Input/<image>.jpg``.
    Images get the ingest preprocessing (centre square, ``size`` pixels), decoded in parallel.
    """
    import os

    from pipeline.data.ingest import decode_all
    from pipeline.errors import DataValidationError

    truth_path = folder / ISIC2018_TRUTH
    if not truth_path.is_file():
        raise PipelineError(f"{truth_path}: ground truth not found (expected the ISIC 2018 Task 3 test layout)")
    truth = pd.read_csv(truth_path)
    columns = {dx.upper(): dx for dx in classes}
    missing = [column for column in ["image", *columns] if column not in truth.columns]
    if missing:
        raise DataValidationError([f"missing column '{column}'" for column in missing], str(truth_path))
    one_hot = truth[list(columns)].to_numpy()
    bad_rows = np.flatnonzero(~np.isclose(one_hot.sum(axis=1), 1.0) | ~np.isin(one_hot, (0, 1)).all(axis=1))
    if len(bad_rows):
        raise DataValidationError([f"line {row + 2}: not a one-hot row" for row in bad_rows], str(truth_path))
    labels = np.array(
        [classes.index(columns[name]) for name in np.asarray(list(columns))[one_hot.argmax(axis=1)]], dtype=np.int32
    )
    paths = [folder / ISIC2018_INPUT / f"{image}.jpg" for image in truth["image"]]
    absent = [str(path) for path in paths if not path.is_file()]
    if absent:
        raise DataValidationError([f"{path}: image not found" for path in absent], str(folder))
    images, problems = decode_all(paths, size, True, os.cpu_count() or 1)
    if problems:
        raise DataValidationError(problems, str(folder))
    return images, labels
