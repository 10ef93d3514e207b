"""Pack what a remote training node needs, and nothing of the test split.

A GPU node lent for a few minutes (or reached through a job queue with a size limit on
uploads) needs the training and validation images, their metadata rows and the split files
that the ``split`` stage made here. The test images stay on this machine: the model is
evaluated here, by the usual ``evaluate`` stage, on the split it never saw.

    python -m pipeline.data.pack --data ../shared/ham10000 --split data/split --out .device-data

writes ``<out>/ham10000/`` (official layout: ``HAM10000_metadata.csv`` with the train and
val rows, the JPEGs in their original part folders) and ``<out>/split/{train,val}.csv``.
On the node, ``ingest`` reads ``<out>/ham10000`` and the split files are copied to the
``split`` output path instead of running ``split`` there (see README, "Training on a GPU node").
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError, run_cli
from pipeline.data.ingest import METADATA_FILE, locate_images

SPLITS = ("train", "val")


def pack(data_dir: Path, split_dir: Path, out_dir: Path) -> dict[str, int]:
    """Copy the train/val images and metadata rows of ``data_dir`` into ``out_dir``; return counts."""
    metadata = pd.read_csv(data_dir / METADATA_FILE, dtype=str)
    wanted = pd.concat([pd.read_csv(split_dir / f"{name}.csv", dtype=str) for name in SPLITS])["image_id"]
    missing = sorted(set(wanted) - set(metadata["image_id"]))
    if missing:
        raise PipelineError(f"{split_dir} names {len(missing)} image(s) that {data_dir / METADATA_FILE} lacks, e.g. {missing[0]}: was the split made from this folder?")
    images, absent, _ = locate_images(data_dir, wanted)
    if absent:
        raise PipelineError(f"{data_dir}: no image file for {len(absent)} image(s) of the split, e.g. {absent[0]}")
    target = out_dir / data_dir.name if data_dir.name else out_dir / "data"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "split").mkdir(parents=True)
    target.mkdir(parents=True)
    metadata[metadata["image_id"].isin(set(wanted))].to_csv(target / METADATA_FILE, index=False)
    for image_id in wanted:
        source = images[image_id]
        relative = source.parent.relative_to(data_dir)
        destination = target / relative / source.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    for name in SPLITS:
        shutil.copyfile(split_dir / f"{name}.csv", out_dir / "split" / f"{name}.csv")
    return {"images": len(wanted), "left_out": len(metadata) - len(wanted)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the HAM10000 folder the split was made from")
    parser.add_argument("--split", required=True, help="the split stage's output folder")
    parser.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    counts = pack(Path(args.data), Path(args.split), Path(args.out))
    print(f"packed {counts['images']} train/val images into {args.out} ({counts['left_out']} test images left out)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
