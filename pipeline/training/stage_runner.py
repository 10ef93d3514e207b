"""Run ``dvc.yaml``'s stage commands without DVC, for machines that have none (a GPU node).

DVC stays the orchestrator wherever it is installed. A GPU node reached through a job
queue often has only Python and a deep-learning framework: there this runs the same
commands, with the same paths (``vars`` of ``dvc.yaml``, written once) and ``params.yaml``
values, in the order given. ``--set KEY=VALUE`` edits ``params.yaml`` first, like
``dvc exp run --set-param``. Nothing is cached or locked: bring the outputs (or the offline
run bundles, see :mod:`pipeline.tracking.bundle`) back to a machine with DVC and MLflow.

    python -m pipeline.training.stage_runner --set ingest.data_dir=/data/ham10000 ingest split augment train_cnn_focal
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError, run_cli

PLACEHOLDER = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def stage_commands(dvc_file: Path, params_file: Path) -> dict[str, str]:
    """Every stage's ``cmd`` with ``${...}`` resolved from ``vars`` and the params file."""
    pipeline = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    params = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    context: dict[str, Any] = dict(params)
    for entry in pipeline.get("vars", []):
        if isinstance(entry, dict):
            context.update(entry)
    commands = {}
    for name, stage in pipeline["stages"].items():
        command = " ".join(str(stage["cmd"]).split())

        def resolve(match: re.Match) -> str:
            try:
                return str(_lookup(context, match.group(1)))
            except KeyError:
                raise PipelineError(
                    f"{dvc_file}: stage {name} uses ${{{match.group(1)}}}, which neither vars nor {params_file} define"
                ) from None

        command = PLACEHOLDER.sub(resolve, command)
        # dvc.yaml says `python`: here that is this interpreter (a node may have only python3).
        commands[name] = (
            shlex.quote(sys.executable) + command[len("python") :] if command.startswith("python ") else command
        )
    return commands


def set_params(params_file: Path, assignments: list[str]) -> None:
    """Apply ``KEY=VALUE`` edits (VALUE parsed as YAML) to existing keys of the params file."""
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        if not separator:
            raise PipelineError(f"--set {assignment!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        try:
            node = _lookup(params, ".".join(parents)) if parents else params
        except KeyError:
            raise PipelineError(f"--set {key}: {params_file} has no section {'.'.join(parents)}") from None
        if not isinstance(node, dict) or leaf not in node:
            raise PipelineError(f"--set {key}: {params_file} has no such key")
        node[leaf] = yaml.safe_load(raw)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.training.stage_runner", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("stages", nargs="+", help="stage names of dvc.yaml, run in this order")
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE", help="edit params.yaml first"
    )
    parser.add_argument("--dvc-file", default="dvc.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    if args.assignments:
        set_params(Path(args.params), args.assignments)
    commands = stage_commands(Path(args.dvc_file), Path(args.params))
    unknown = [stage for stage in args.stages if stage not in commands]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown}; {args.dvc_file} has {list(commands)}")
    for stage in args.stages:
        print(f"running stage '{stage}':\n> {commands[stage]}", flush=True)
        started = time.perf_counter()
        result = subprocess.run(commands[stage], shell=True)
        if result.returncode:
            raise PipelineError(f"stage '{stage}' failed with exit status {result.returncode}")
        print(f"stage '{stage}' done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
