"""DVC stage ``train_effnetb7``: EfficientNetB7 transfer learning, tracked in MLflow."""

import sys

import pipeline.quiet  # noqa: F401  (first: keeps TensorFlow's start-up notices out of the log)
from pipeline.config import EffNetParams, load_params
from pipeline.training.console import kept, outcome
from pipeline.training.paths import training_arguments
from pipeline.training.process_group import run_stage
from pipeline.training.train import train_effnetb7


def main(argv=None):
    args, paths = training_arguments(__doc__, argv)
    base, params = load_params(args.params, "train_effnetb7", EffNetParams)
    summary = train_effnetb7(base, params, paths)
    print(f"effnetb7: {kept(summary)}, {outcome(summary)}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
