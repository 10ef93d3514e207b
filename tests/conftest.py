"""Shared fixtures: tiny synthetic HAM10000 folders, params, and a throwaway MLflow store."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from pipeline.config import HAM10000_CLASSES, BaseParams

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def base_params() -> BaseParams:
    return BaseParams(seed=7, classes=HAM10000_CLASSES, image_size=32, experiment_name="tests")


@pytest.fixture
def tiny_ham(tmp_path: Path) -> Path:
    """A small synthetic data set in the official HAM10000 layout (all 7 classes)."""
    from pipeline.data.demo_data import generate

    folder = tmp_path / "ham"
    generate(folder, total=150, minimum=12, width=40, height=30, seed=11)
    return folder


@pytest.fixture(scope="session")
def real_ham10000() -> Path:
    """The real HAM10000 copy ($HAM10000_DIR or ../shared/ham10000); skips when absent."""
    folder = Path(os.environ.get("HAM10000_DIR") or REPO_ROOT.parent / "shared" / "ham10000")
    if not (folder / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 not found at {folder} (set HAM10000_DIR to run the real-data tests)")
    return folder


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store whose schema is made once per session (a migration takes a second)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_mlflow_db: Path) -> str:
    """Point MLflow at a throwaway sqlite store (a copy of the empty one) for the duration of one test."""
    shutil.copyfile(migrated_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
