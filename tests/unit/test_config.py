"""params.yaml loading: every section of the real file loads, and bad input fails clearly."""

import subprocess
import sys

import pytest
import yaml

from pipeline.config import (
    AugmentParams,
    CnnParams,
    EffNetParams,
    EvaluateParams,
    IngestParams,
    LiteParams,
    SplitParams,
    load_params,
    parse_section,
)
from pipeline.errors import ParamsError

SECTIONS = {
    "ingest": IngestParams,
    "split": SplitParams,
    "augment": AugmentParams,
    "train_cnn_focal": CnnParams,
    "train_effnetb7": EffNetParams,
    "train_effnet_lite0": LiteParams,
    "train_effnet_lite2": LiteParams,
    "evaluate": EvaluateParams,
}


@pytest.mark.parametrize("section", sorted(SECTIONS))
@pytest.mark.parametrize("profile", ["params.yaml", "cpu", "demo", "quick", "gpu"])
def test_every_section_of_every_profile_loads(repo_root, profile, section, tmp_path, monkeypatch):
    if profile == "params.yaml":
        path = repo_root / "params.yaml"
    else:
        from pipeline.profiles import compose, dump

        monkeypatch.chdir(repo_root)
        path = tmp_path / "params.yaml"
        path.write_text(dump(compose(profile)))
    base, params = load_params(path, section, SECTIONS[section])
    assert len(base.classes) == 7
    assert isinstance(params, SECTIONS[section])


def _write_params(tmp_path, repo_root, section, **changes):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params[section].update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_unknown_key_is_named(tmp_path, repo_root):
    path = _write_params(tmp_path, repo_root, "train_cnn_focal", epoch=3)
    with pytest.raises(ParamsError, match=r"train_cnn_focal\.epoch: unknown key"):
        load_params(path, "train_cnn_focal", CnnParams)


@pytest.mark.parametrize(
    ("section", "cls", "key", "value", "message"),
    [
        ("train_cnn_focal", CnnParams, "epochs", 0, r"train_cnn_focal\.epochs: must be >= 1, got 0"),
        ("train_cnn_focal", CnnParams, "learning_rate", "fast", r"learning_rate: must be a number"),
        ("train_cnn_focal", CnnParams, "filters", [], r"filters: must be a non-empty list"),
        ("train_cnn_focal", CnnParams, "filters", [32, "x"], r"filters\[1\]: must be an integer"),
        ("train_cnn_focal", CnnParams, "filters", [8, 16], r"filters: every value must be in \[16, 2048\]"),
        ("train_cnn_focal", CnnParams, "class_alpha", "inverse", r"class_alpha: must be one of"),
        ("train_cnn_focal", CnnParams, "random_flip", "yes", r"random_flip: must be true or false"),
        (
            "train_cnn_focal",
            CnnParams,
            "block",
            "dense",
            r"train_cnn_focal\.block: must be one of \['conv', 'separable'\]",
        ),
        ("train_cnn_focal", CnnParams, "batch_norm_momentum", 1.0, r"batch_norm_momentum: must be <= 0\.999, got 1"),
        ("train_cnn_focal", CnnParams, "first_stage_stride", 3, r"first_stage_stride: must be <= 2, got 3"),
        ("split", SplitParams, "test_fraction", 0.9, r"split\.test_fraction: must be <= 0\.5"),
        ("augment", AugmentParams, "horizontal_flip", 1.5, r"horizontal_flip: must be <= 1\.0"),
        ("train_effnetb7", EffNetParams, "batch_size", True, r"batch_size: must be an integer"),
        (
            "train_effnet_lite0",
            LiteParams,
            "weights",
            "hub",
            r"train_effnet_lite0\.weights: must be one of \['imagenet', 'none'\]",
        ),
        (
            "train_effnet_lite0",
            LiteParams,
            "fine_tune_batch_norm",
            "no",
            r"fine_tune_batch_norm: must be true or false",
        ),
        ("evaluate", EvaluateParams, "ensemble_grid_step", 0.0, r"evaluate\.ensemble_grid_step: must be >= 0\.01"),
    ],
)
def test_bad_values_name_the_key(tmp_path, repo_root, section, cls, key, value, message):
    path = _write_params(tmp_path, repo_root, section, **{key: value})
    with pytest.raises(ParamsError, match=message):
        load_params(path, section, cls)


def test_missing_required_key():
    with pytest.raises(ParamsError, match=r"ingest\.data_dir: missing"):
        parse_section({"workers": 1}, IngestParams, "ingest")


def test_cross_field_rule():
    with pytest.raises(ParamsError, match="test_fraction \\+ val_fraction must be < 0.8"):
        parse_section({"test_fraction": 0.45, "val_fraction": 0.45}, SplitParams, "split")


def test_base_classes_must_be_the_seven_codes(tmp_path, repo_root):
    path = _write_params(tmp_path, repo_root, "base", classes=["nv", "mel"])
    with pytest.raises(ParamsError, match=r"base\.classes: must list the 7 HAM10000 codes"):
        load_params(path, "split", SplitParams)


def test_missing_section_and_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: {seed: 1, image_size: 32}\n")
    with pytest.raises(ParamsError, match="section 'split' is missing"):
        load_params(path, "split", SplitParams)
    path.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path, "split", SplitParams)


def test_stage_reports_bad_params_in_one_line_and_exits_non_zero(tmp_path, repo_root):
    path = _write_params(tmp_path, repo_root, "split", val_fraction=-1)
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "stages" / "split.py"),
            "--params",
            str(path),
            "--ingested",
            str(tmp_path / "x"),
            "--out",
            str(tmp_path / "out"),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        cwd=repo_root,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: params.yaml: split.val_fraction: must be >= 0.02, got -1.0"]
    assert not (tmp_path / "out").exists()
