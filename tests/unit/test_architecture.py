"""pipeline/'s architecture stays as drawn: the import-linter contracts in .importlinter hold
(layers by concern, no import circle in a subpackage), and they do catch a violation."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(folder: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT), "--no-cache"], cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def copy_of_pipeline(tmp_path):
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    return tmp_path


def test_the_import_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        # the old circle: the MLflow recorder reaching back into the bundle importer
        (
            "tracking/mlflow_runs.py",
            "from pipeline.tracking import bundle",
            "No cycles are allowed in pipeline.tracking",
        ),
        # a lower layer reaching up: tracking using the training loop
        (
            "tracking/bundle.py",
            "from pipeline.training import train",
            "pipeline.tracking is not allowed to import pipeline.training",
        ),
        # siblings of one layer stay independent
        (
            "data/split.py",
            "from pipeline.models import builders",
            "pipeline.data is not allowed to import pipeline.models",
        ),
    ],
)
def test_a_violation_breaks_a_contract(copy_of_pipeline, module, line, broken):
    with open(copy_of_pipeline / "pipeline" / module, "a") as handle:
        handle.write(f"\n{line}\n")
    result = lint(copy_of_pipeline)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout[-3000:]
