"""DVC stage ``augment``: albumentations on the train split only, with class balancing."""

import argparse
import sys

from pipeline.config import AugmentParams, load_params
from pipeline.data.augment import augment_train
from pipeline.data.ingest import load_ingested, select_images, write_atomically
from pipeline.data.split import read_split
from pipeline.errors import run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--ingested", required=True, help="ingest output folder")
    parser.add_argument("--split", required=True, help="split output folder (train.csv is used)")
    parser.add_argument("--out", required=True, help="output folder (images.npy + index.csv)")
    args = parser.parse_args(argv)
    base, params = load_params(args.params, "augment", AugmentParams)
    images, index = load_ingested(args.ingested)
    train = read_split(args.split, "train")
    augmented_images, augmented_index = augment_train(
        select_images(images, index, train["image_id"]), train, params, base.seed
    )
    write_atomically(args.out, augmented_images, augmented_index)
    counts = augmented_index["dx"].value_counts().sort_index()
    print("augmented train set: " + ", ".join(f"{dx} {n}" for dx, n in counts.items()))


if __name__ == "__main__":
    sys.exit(run_cli(main))
