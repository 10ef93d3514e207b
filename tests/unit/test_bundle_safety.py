"""Offline run bundles are untrusted input: `check` refuses, in one line and before anything is
logged, any name that could reach outside the bundle or the project, and `import --restore`
writes only the stage's own outputs, each file hashed against the manifest as it is copied.

The bundles here are made by hand (no training, no MLflow server): the MLflow calls of an import
are replaced by stand-ins that say the run is already imported, so only the restore runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.errors import run_cli
from pipeline.io import sha256_of
from pipeline.tracking import bundle as bundles
from pipeline.tracking import mlflow_runs
from pipeline.tracking.offline import FORMAT, HISTORY, MANIFEST, METRICS, MODEL, STAGE_METRICS, VERSION

DVC_YAML = """\
vars:
  - paths:
      cnn_focal: models/cnn_focal
      metrics: metrics
stages:
  train_cnn_focal:
    cmd: python stages/train_cnn_focal.py --out ${paths.cnn_focal}
    outs:
      - ${paths.cnn_focal}
    metrics:
      - ${paths.metrics}/train_cnn_focal.json:
          cache: false
"""


def make_bundle(folder: Path, outputs: dict | None = None, stage: str = "train_cnn_focal") -> Path:
    folder.mkdir(parents=True)
    (folder / MODEL).write_bytes(b"not really a model")
    (folder / METRICS).write_text("key,value,step,timestamp_ms\nloss,0.5,0,1\n")
    (folder / HISTORY).write_text("epoch,loss\n0,0.5\n")
    (folder / STAGE_METRICS).write_text('{"best_val_balanced_accuracy": 0.5}\n')
    write_manifest(
        folder,
        {
            "format": FORMAT,
            "version": VERSION,
            "bundle_id": folder.name,
            "experiment_name": "tests",
            "run_name": "cnn_focal-ham",
            "tags": {"stage": stage},
            "params": {},
            "metrics": {},
            "registered_model_name": "tests-cnn",
            "score": 0.5,
            "outputs": outputs or {"model_dir": "models/cnn_focal", "metrics": "metrics/train_cnn_focal.json"},
            "files": {name: sha256_of(folder / name) for name in (MODEL, METRICS, HISTORY, STAGE_METRICS)},
            "start_time_ms": 1,
            "end_time_ms": 2,
        },
    )
    return folder


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the working directory) and, beside it, a folder nothing may write to."""
    root = tmp_path / "project"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def imported(monkeypatch):
    """MLflow stand-ins: the bundle counts as already imported (run ``run-1``), so nothing is logged."""
    monkeypatch.setattr(mlflow_runs, "connect", lambda name: "stub")
    monkeypatch.setattr(mlflow_runs, "find_run_by_tag", lambda key, value: "run-1")
    monkeypatch.setattr(mlflow_runs, "tracking_uri", lambda: "stub://tracking")


def check(folder: Path, capsys) -> tuple[int, list[str], list[str]]:
    status = run_cli(bundles.main, ["check", str(folder)])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


def test_a_sound_bundle_passes_check(project, capsys):
    folder = make_bundle(project.parent / "bundles" / "b1")
    status, out, err = check(folder, capsys)
    assert (status, err) == (0, []) and out[0].startswith(f"{folder}: ok")


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlinked_folder"])
def test_outputs_that_leave_the_project_are_refused_by_check_in_one_line(project, capsys, where):
    outside = project.parent / "outside"
    if where == "dotdot":
        outputs = {"model_dir": "../outside/model", "metrics": "metrics/train.json"}
    elif where == "absolute":
        outputs = {"model_dir": str(outside / "model"), "metrics": "metrics/train.json"}
    else:  # a folder inside the project that is a link to one outside it
        (project / "models").symlink_to(outside, target_is_directory=True)
        outputs = {"model_dir": "models/cnn_focal", "metrics": "metrics/train.json"}
    folder = make_bundle(project.parent / "bundles" / "b1", outputs)
    status, out, err = check(folder, capsys)
    assert status == 1 and out == [] and len(err) == 1 and err[0].startswith("error: "), (status, out, err)
    assert "model_dir" in err[0] and "outside the project" in err[0]


@pytest.mark.parametrize("name", ["../secret.txt", "ABSOLUTE", "sub/../model.keras"])
def test_manifest_file_names_with_dotdot_or_absolute_paths_are_refused(project, capsys, name):
    secret = project.parent / "bundles" / "secret.txt"  # what "../secret.txt" names from the bundle
    secret.parent.mkdir()
    secret.write_text("not the bundle's")
    name = str(secret) if name == "ABSOLUTE" else name
    folder = make_bundle(project.parent / "bundles" / "b1")
    (folder / "sub").mkdir()
    manifest = read_manifest(folder)
    manifest["files"][name] = sha256_of(secret) if "secret" in name else manifest["files"][MODEL]
    write_manifest(folder, manifest)
    status, out, err = check(folder, capsys)
    assert status == 1 and out == [] and len(err) == 1 and err[0].startswith("error: "), (status, out, err)
    assert repr(name) in err[0]


@pytest.mark.parametrize("listed", [True, False])
def test_a_symlink_in_the_bundle_is_refused_listed_or_not(project, capsys, listed):
    secret = project.parent / "outside" / "secret.csv"
    secret.write_text("epoch,loss\n0,0.1\n")
    folder = make_bundle(project.parent / "bundles" / "b1")
    (folder / HISTORY).unlink()
    (folder / HISTORY).symlink_to(secret)
    manifest = read_manifest(folder)
    if listed:
        manifest["files"][HISTORY] = sha256_of(secret)
    else:
        del manifest["files"][HISTORY]
    write_manifest(folder, manifest)
    status, out, err = check(folder, capsys)
    assert (
        status == 1
        and len(err) == 1
        and err[0] == f"error: bundle {folder}: {HISTORY} is a symbolic link (a bundle holds regular files only)"
    )


def test_restore_writes_the_stage_outs_of_dvc_yaml_not_the_manifests_paths(project, imported):
    (project / "dvc.yaml").write_text(DVC_YAML)
    folder = make_bundle(
        project.parent / "bundles" / "b1",
        {"model_dir": "../outside/model", "metrics": str(project.parent / "outside" / "m.json")},
    )
    bundles.import_bundle(folder, restore=True)
    assert (project / "models" / "cnn_focal" / "model.keras").read_bytes() == b"not really a model"
    assert (project / "metrics" / "train_cnn_focal.json").is_file()
    assert json.loads((project / "models" / "cnn_focal" / "mlflow_run.json").read_text())["run_id"] == "run-1"
    assert list((project.parent / "outside").iterdir()) == []


def test_a_stage_that_is_not_a_training_stage_of_dvc_yaml_is_refused(project, capsys):
    (project / "dvc.yaml").write_text(DVC_YAML)
    folder = make_bundle(project.parent / "bundles" / "b1", stage="ingest")
    status, _, err = check(folder, capsys)
    assert status == 1 and len(err) == 1 and "stage 'ingest'" in err[0] and "dvc.yaml" in err[0]


def test_restore_never_writes_outside_the_project(project, imported):
    folder = make_bundle(
        project.parent / "bundles" / "b1", {"model_dir": "../outside/model", "metrics": "../outside/m.json"}
    )
    with pytest.raises(bundles.BundleError, match="outside the project"):
        bundles.import_bundle(folder, restore=True)
    assert list((project.parent / "outside").iterdir()) == []


def test_an_unlisted_file_is_never_copied(project, imported):
    folder = make_bundle(project.parent / "bundles" / "b1")
    manifest = read_manifest(folder)
    del manifest["files"][HISTORY]
    write_manifest(folder, manifest)
    bundles.import_bundle(folder, restore=True)
    assert (project / "models" / "cnn_focal" / MODEL).is_file()
    assert not (project / "models" / "cnn_focal" / "history.csv").exists()


def test_a_file_changed_after_the_check_is_not_restored(project, monkeypatch, imported):
    """Every copied file is hashed as it is copied: one swapped between the check and the copy
    (here: while the server is asked about the run) fails the import and is not written."""
    folder = make_bundle(project.parent / "bundles" / "b1")

    def swap_then_answer(key, value):
        (folder / HISTORY).write_text("epoch,loss\n0,99\n")
        return "run-1"

    monkeypatch.setattr(mlflow_runs, "find_run_by_tag", swap_then_answer)
    with pytest.raises(bundles.BundleError, match=f"{HISTORY} does not match its sha256"):
        bundles.import_bundle(folder, restore=True)
    assert not (project / "models" / "cnn_focal" / "history.csv").exists()


def test_restore_replaces_a_symlinked_output_file_instead_of_writing_through_it(project, imported):
    target = project.parent / "outside" / "victim.keras"
    target.write_bytes(b"keep me")
    (project / "models" / "cnn_focal").mkdir(parents=True)
    (project / "models" / "cnn_focal" / MODEL).symlink_to(target)
    folder = make_bundle(project.parent / "bundles" / "b1")
    bundles.import_bundle(folder, restore=True)
    assert target.read_bytes() == b"keep me"
    restored = project / "models" / "cnn_focal" / MODEL
    assert not restored.is_symlink() and restored.read_bytes() == b"not really a model"
    assert oct(os.stat(restored).st_mode & 0o777) != "0o000"
