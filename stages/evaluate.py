"""DVC stage ``evaluate``: test-split metrics, plots and a comparison report for every model."""

import argparse
import sys
from pathlib import Path

import pipeline.quiet  # noqa: F401  (first: keeps TensorFlow's start-up notices out of the log)
from pipeline.config import EvaluateParams, data_name, data_source, load_params
from pipeline.errors import PipelineError, run_cli
from pipeline.evaluation.evaluate import run_evaluation
from pipeline.evaluation.report import summary_table
from pipeline.evaluation.runs import is_smoke_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--ingested", required=True, help="ingest output folder")
    parser.add_argument("--split", required=True, help="split output folder (test.csv is used)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER", help="a trained model folder")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--plots", required=True, help="folder for plot data and figures")
    parser.add_argument("--report", required=True, help="Markdown comparison report to write")
    parser.add_argument("--external-metrics", required=True, help="metrics JSON for the optional external test set")
    parser.add_argument("--paired", required=True, help="JSON of the paired comparisons (test and external set)")
    parser.add_argument(
        "--subgroups", required=True, help="metrics JSON of the results by subgroup (sex, age, site, dx_type)"
    )
    parser.add_argument("--cards", required=True, help="folder for the model cards (<model>.md)")
    args = parser.parse_args(argv)
    base, params = load_params(args.params, "evaluate", EvaluateParams)
    model_dirs = {}
    for item in args.model:
        name, separator, folder = item.partition("=")
        if not separator or not name or not folder:
            raise PipelineError(f"--model {item!r}: expected NAME=FOLDER")
        model_dirs[name] = Path(folder)
    results = run_evaluation(
        model_dirs,
        Path(args.ingested),
        Path(args.split),
        base.classes,
        base.experiment_name,
        params,
        Path(args.metrics),
        Path(args.plots),
        Path(args.report),
        external_metrics_file=Path(args.external_metrics),
        image_size=base.image_size,
        data=data_name(data_source(args.params)),
        smoke_runs=frozenset(name for name, folder in model_dirs.items() if is_smoke_run(folder)),
        paired_file=Path(args.paired),
        subgroups_file=Path(args.subgroups),
        cards_dir=Path(args.cards),
    )
    print(summary_table(results))


if __name__ == "__main__":
    sys.exit(run_cli(main))
