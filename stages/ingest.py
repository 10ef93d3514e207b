"""DVC stage ``ingest``: validate a HAM10000 folder and decode it into one cached array."""

import argparse
import sys

from pipeline.config import IngestParams, load_params
from pipeline.data.ingest import ingest
from pipeline.errors import run_cli
from pipeline.io import write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--out", required=True, help="output folder (images.npy + index.csv)")
    parser.add_argument("--metrics", required=True, help="JSON file for the ingest throughput")
    args = parser.parse_args(argv)
    base, params = load_params(args.params, "ingest", IngestParams)
    report = ingest(params.data_dir, args.out, base, params)
    write_json(args.metrics, report.as_dict())
    print(
        f"ingested {report.images} images from {params.data_dir} in {report.seconds:.1f} s "
        f"({report.images_per_second:.0f} images/s on {report.workers} workers)"
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
