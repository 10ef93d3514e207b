"""DVC: a no-op `dvc repro`, and which stages one param change reruns (DVC's own graph)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import yaml

from benchmarks.common import REPO_ROOT


def bench_dvc() -> dict:
    """`dvc repro` with nothing changed, and which stages a train_effnetb7 param change reruns."""
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run(dvc + ["status", "--json"], capture_output=True, text=True, cwd=REPO_ROOT)
    if status.returncode != 0 or json.loads(status.stdout or "{}"):
        return {"skipped": "the workspace is not up to date with dvc.lock: run `make run` first"}
    started = time.perf_counter()
    repro = subprocess.run(dvc + ["repro"], capture_output=True, text=True, cwd=REPO_ROOT)
    noop_seconds = time.perf_counter() - started
    params_file = REPO_ROOT / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["train_effnetb7"]["fine_tune_learning_rate"] *= 2
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        status = subprocess.run(dvc + ["status", "--json"], capture_output=True, text=True, cwd=REPO_ROOT)
    finally:
        params_file.write_text(original)
    # `dvc status` names the stages whose own params changed; everything downstream of them
    # reruns too, because their outputs (inputs of the downstream stages) change.
    directly = sorted(json.loads(status.stdout or "{}"))
    order = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    rerun = sorted(set(directly) | _downstream_stages(directly), key=order.index)
    return {
        "noop_repro_seconds": round(noop_seconds, 2),
        "noop_reran_nothing": "Running stage" not in repro.stdout,
        "goal_noop_seconds": 5.0,
        "stages_changed_by_train_effnetb7_param": directly,
        "stages_rerun_after_train_effnetb7_param_change": rerun,
        "goal_stages": ["train_effnetb7", "evaluate"],
    }


def _downstream_stages(stages: list[str]) -> set[str]:
    """Stages that depend, directly or not, on any of ``stages`` (DVC's own graph)."""
    import networkx
    from dvc.repo import Repo

    with Repo(str(REPO_ROOT)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {getattr(node, "name", None): node for node in graph.nodes}
        found = set()
        for name in stages:
            found |= {getattr(node, "name", None) for node in networkx.ancestors(graph, by_name[name])}
    return {name for name in found if name}
