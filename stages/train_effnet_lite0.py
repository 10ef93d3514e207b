"""DVC stage ``train_effnet_lite0``: ImageNet-pretrained EfficientNet-Lite0, fine-tuned, tracked in MLflow."""

import sys
from pathlib import Path

import pipeline.quiet  # noqa: F401  (first: keeps TensorFlow's start-up notices out of the log)
from pipeline.config import Lite0Params, load_params
from pipeline.training.cluster import run_stage
from pipeline.training.console import kept, outcome
from pipeline.training.paths import training_arguments
from pipeline.training.train import train_effnet_lite0


def main(argv=None):
    args, paths = training_arguments(
        __doc__, argv, extra={"pretrained": "converted ImageNet weights (import_lite0_weights output)"}
    )
    base, params = load_params(args.params, "train_effnet_lite0", Lite0Params)
    summary = train_effnet_lite0(base, params, paths, Path(args.pretrained))
    print(f"effnet_lite0: {kept(summary)}, {outcome(summary)}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
