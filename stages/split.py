"""DVC stage ``split``: stratified train/val/test split grouped by lesion_id."""

import argparse
import sys

from pipeline.config import SplitParams, load_params
from pipeline.data.ingest import load_ingested
from pipeline.data.split import split_dataset, split_statistics, write_splits
from pipeline.errors import run_cli
from pipeline.io import write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--ingested", required=True, help="ingest output folder")
    parser.add_argument("--out", required=True, help="folder for train.csv, val.csv, test.csv")
    parser.add_argument("--metrics", required=True, help="JSON file for the per-split class counts")
    args = parser.parse_args(argv)
    base, params = load_params(args.params, "split", SplitParams)
    _, index = load_ingested(args.ingested)
    splits = split_dataset(index, base.classes, params, base.seed)
    write_splits(splits, args.out)
    statistics = split_statistics(splits, base.classes)
    write_json(args.metrics, statistics)
    print(
        "split (images / lesions): "
        + ", ".join(f"{name} {s['images']}/{s['lesions']}" for name, s in statistics.items())
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
