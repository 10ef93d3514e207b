"""The PNG figures ``evaluate`` writes for each model under ``plots/<model>/`` and logs to MLflow.

- ``confusion_counts.png``, ``confusion_normalized.png``: the confusion matrix (counts, and
  row-normalised: recall on the diagonal); ``roc.png``: one-vs-rest ROC curves.
- ``reliability.png``: the reliability diagram: the test images binned by top-label confidence
  (``evaluate.ece_bins`` equal-width bins, right-closed as the ECE's), each bin's accuracy against
  its mean confidence, and below it how many images each bin holds.
- ``confident_errors.png``: the 16 test images the model got wrong with the highest confidence,
  each with its true and predicted class and the predicted probability.

Each function takes a scored set as ``(name, labels, probabilities)`` (an
:class:`pipeline.evaluation.scoring.Scored`) and returns the paths it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

#: How many images the gallery of confident errors shows (a 4 x 4 grid).
GALLERY_SIZE = 16


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path, dpi: int = 110) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    _pyplot().close(figure)
    return path


def draw_figures(scored: Any, classes: tuple[str, ...], out_dir: Path) -> list[Path]:
    """PNG confusion matrices (counts, row-normalised) and ROC curves; returns their paths."""
    plt = _pyplot()
    predicted = scored.probabilities.argmax(axis=1)
    counts = confusion_matrix(scored.labels, predicted, labels=np.arange(len(classes)))
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    paths = []
    for matrix, kind, fmt in ((counts, "counts", "d"), (normalised, "normalized", ".2f")):
        figure, axes = plt.subplots(figsize=(6.5, 5.5))
        image = axes.imshow(matrix, cmap="Blues")
        for (row, column), value in np.ndenumerate(matrix):
            axes.text(
                column,
                row,
                format(value, fmt),
                ha="center",
                va="center",
                color="white" if value > matrix.max() / 2 else "black",
                fontsize=8,
            )
        axes.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xticklabels=classes,
            yticklabels=classes,
            xlabel="predicted",
            ylabel="actual",
            title=f"{scored.name}: confusion matrix ({kind})",
        )
        figure.colorbar(image, ax=axes)
        paths.append(_save(figure, out_dir / f"confusion_{kind}.png"))
    figure, axes = plt.subplots(figsize=(6, 5.5))
    for index, dx in enumerate(classes):
        positives = scored.labels == index
        if positives.any() and not positives.all():
            fpr, tpr, _ = roc_curve(positives, scored.probabilities[:, index])
            auc = roc_auc_score(positives, scored.probabilities[:, index])
            axes.plot(fpr, tpr, label=f"{dx} (AUC {auc:.3f})", linewidth=2 if dx == "mel" else 1)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{scored.name}: one-vs-rest ROC")
    axes.legend(loc="lower right", fontsize=8)
    paths.append(_save(figure, out_dir / "roc.png"))
    return paths


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Per confidence bin: its edges, image count, mean confidence and accuracy (NaN when empty),
    binned as :func:`pipeline.metrics.expected_calibration_error` bins."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / counts
        accuracy = np.bincount(which, correct, minlength=bins) / counts
    return {"edges": edges, "counts": counts, "confidence": mean_confidence, "accuracy": accuracy}


def reliability_diagram(scored: Any, out_dir: Path, bins: int) -> Path:
    """``reliability.png``: accuracy against confidence per bin, with the bin counts below."""
    plt = _pyplot()
    binned = calibration_bins(scored.labels, scored.probabilities, bins)
    counts, filled = binned["counts"], binned["counts"] > 0
    ece = float(
        np.sum(counts[filled] / counts.sum() * np.abs(binned["confidence"][filled] - binned["accuracy"][filled]))
    )
    left, width = binned["edges"][:-1], 1.0 / bins
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        left[filled],
        binned["accuracy"][filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy of the bin",
    )
    top.plot(
        binned["confidence"][filled],
        binned["accuracy"][filled],
        "o",
        color="tab:orange",
        markersize=4,
        label="(mean confidence, accuracy)",
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"{scored.name}: reliability (top-label ECE {ece:.3f}, {bins} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(left, counts, width=width, align="edge", edgecolor="black", color="tab:grey")
    for x, count in zip(left[filled], counts[filled], strict=True):
        bottom.text(x + width / 2, count, f"{int(count)}", ha="center", va="bottom", fontsize=7)
    bottom.set(xlim=(0, 1), xlabel="confidence (top-label probability)", ylabel="images")
    bottom.set_ylim(0, max(counts.max(), 1) * 1.25)
    return _save(figure, out_dir / "reliability.png")


def confident_errors(
    scored: Any,
    images: np.ndarray,
    classes: tuple[str, ...],
    out_dir: Path,
    image_ids: Any = None,
    count: int = GALLERY_SIZE,
) -> Path:
    """``confident_errors.png``: the ``count`` wrong predictions with the highest probability
    (true class, predicted class and its probability; the image id when given)."""
    plt = _pyplot()
    predicted = scored.probabilities.argmax(axis=1)
    confidence = scored.probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != scored.labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    columns = 4
    rows = max(1, int(np.ceil(len(chosen) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows + 0.4), squeeze=False)
    for cell in axes.flat:
        cell.axis("off")
    for cell, position in zip(axes.flat, chosen, strict=False):  # more cells than errors
        cell.imshow(np.asarray(images[position]))
        name = f"{image_ids[position]}\n" if image_ids is not None else ""
        cell.set_title(
            f"{name}true {classes[scored.labels[position]]}, predicted {classes[predicted[position]]}\n"
            f"p = {confidence[position]:.2f}",
            fontsize=7,
        )
    if not len(chosen):
        axes.flat[0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    figure.suptitle(
        f"{scored.name}: the {len(chosen)} most confident errors of {len(wrong)} ({len(scored.labels)} test images)",
        fontsize=9,
    )
    return _save(figure, out_dir / "confident_errors.png", dpi=80)  # photographs: kept small, plots/ is committed


def calibration_figures(
    scored: Any, images: np.ndarray, classes: tuple[str, ...], out_dir: Path, bins: int, image_ids: Any = None
) -> list[Path]:
    """The reliability diagram and the gallery of confident errors of one model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [reliability_diagram(scored, out_dir, bins), confident_errors(scored, images, classes, out_dir, image_ids)]
