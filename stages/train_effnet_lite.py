"""DVC stages ``train_effnet_lite0`` and ``train_effnet_lite2``: an ImageNet-pretrained
EfficientNet-Lite (``--backbone``), fine-tuned, tracked in MLflow. Parameters: the section
``train_effnet_<backbone>`` of the params file."""

import sys
from pathlib import Path

import pipeline.quiet  # noqa: F401  (first: keeps TensorFlow's start-up notices out of the log)
from pipeline.config import LiteParams, load_params
from pipeline.models.efficientnet_lite import VARIANTS
from pipeline.training.console import kept, outcome
from pipeline.training.paths import training_arguments
from pipeline.training.process_group import run_stage
from pipeline.training.train import train_effnet_lite


def main(argv=None):
    args, paths = training_arguments(
        __doc__,
        argv,
        extra={"pretrained": "converted ImageNet weights (the import_<backbone>_weights stage's output)"},
        choices={"backbone": sorted(VARIANTS)},
    )
    section = f"train_effnet_{args.backbone}"
    base, params = load_params(args.params, section, LiteParams)
    summary = train_effnet_lite(args.backbone, base, params, paths, Path(args.pretrained))
    print(f"effnet_{args.backbone}: {kept(summary)}, {outcome(summary)}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
