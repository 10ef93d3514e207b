"""Running dvc.yaml's commands without DVC (GPU nodes): same paths, same params, same order."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.training.stage_runner import set_params, stage_commands


def test_commands_match_what_dvc_would_run(repo_root, tmp_path):
    commands = stage_commands(repo_root / "dvc.yaml", repo_root / "params.yaml")
    pipeline = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    assert set(commands) == set(pipeline["stages"])
    assert "${" not in " ".join(commands.values())
    # `python` is this interpreter; every path comes from vars.paths of dvc.yaml.
    assert commands["split"] == (
        f"{sys.executable} stages/split.py --params params.yaml --ingested data/ingested --out data/split --metrics metrics/split.json"
    )
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert "--model effnet_lite0=models/effnet_lite0" in commands["evaluate"]
    assert (
        pipeline["stages"]["ingest"]["deps"][0] == "${ingest.data_dir}" and params["ingest"]["data_dir"] == "data/demo"
    )


def test_set_edits_existing_keys_only(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("base: {image_size: 128}\ningest: {data_dir: data/demo}\n")
    set_params(params, ["base.image_size=224", "ingest.data_dir=/data/ham"])
    assert yaml.safe_load(params.read_text()) == {"base": {"image_size": 224}, "ingest": {"data_dir": "/data/ham"}}
    with pytest.raises(PipelineError, match="--set base.imagesize: .* has no such key"):
        set_params(params, ["base.imagesize=1"])
    with pytest.raises(PipelineError, match="expected KEY=VALUE"):
        set_params(params, ["base.image_size"])


def test_a_failing_stage_stops_the_run_in_one_line(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  bad:\n    cmd: python -c 'import sys; sys.exit(3)'\n  after:\n    cmd: touch after\n"
    )
    (tmp_path / "params.yaml").write_text("{}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.training.stage_runner", "bad", "after"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stderr.strip() == "error: stage 'bad' failed with exit status 3"
    assert not (tmp_path / "after").exists()
    unknown = subprocess.run(
        [sys.executable, "-m", "pipeline.training.stage_runner", "nope"], cwd=tmp_path, capture_output=True, text=True
    )
    assert unknown.returncode == 1 and "unknown stage(s) ['nope']" in unknown.stderr
