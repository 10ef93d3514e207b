"""DVC stage ``train_cnn_focal``: the CNN trained with focal loss, tracked in MLflow."""

import sys

import pipeline.quiet  # noqa: F401  (first: keeps TensorFlow's start-up notices out of the log)
from pipeline.config import CnnParams, load_params
from pipeline.training.console import kept, outcome
from pipeline.training.paths import training_arguments
from pipeline.training.process_group import run_stage
from pipeline.training.train import train_cnn_focal


def main(argv=None):
    args, paths = training_arguments(__doc__, argv)
    base, params = load_params(args.params, "train_cnn_focal", CnnParams)
    summary = train_cnn_focal(base, params, paths)
    print(f"cnn_focal: {kept(summary)}, {outcome(summary)}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
