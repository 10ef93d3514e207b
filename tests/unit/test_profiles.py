"""Profiles are overlays: conf/config.yaml holds the defaults the user edits, each profile only
what it changes, and params.yaml is what DVC's Hydra composition makes of them."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.profiles import compose, dump, names

TRAINING_STAGES = {"train_cnn_focal", "train_effnetb7", "train_effnet_lite0", "train_effnet_lite2"}


def _flat(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return flat


@pytest.fixture
def conf(repo_root, tmp_path, monkeypatch):
    """A copy of the repository's conf/ to edit, the working directory its parent."""
    shutil.copytree(repo_root / "conf", tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "conf"


def test_the_committed_params_are_the_demo_profile_composed(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    assert names() == ["cpu", "demo", "gpu", "quick"]
    # A fresh clone's `dvc exp run` (demo by default) writes exactly what is committed: nothing reruns.
    assert compose() == yaml.safe_load((repo_root / "params.yaml").read_text())
    assert compose("demo") == compose()


def test_a_profile_lists_only_the_keys_it_changes(repo_root):
    defaults = _flat(
        {
            key: value
            for key, value in yaml.safe_load((repo_root / "conf" / "config.yaml").read_text()).items()
            if key != "defaults"
        }
    )
    for name in ["cpu", "demo", "gpu", "quick"]:
        overlay = _flat(yaml.safe_load((repo_root / "conf" / "profile" / f"{name}.yaml").read_text()))
        assert overlay.pop("profile") == name
        same = sorted(key for key, value in overlay.items() if defaults.get(key) == value)
        assert not same, f"conf/profile/{name}.yaml repeats defaults of conf/config.yaml: {same}"


def test_an_edit_of_the_defaults_reaches_every_profile_that_does_not_change_that_key(conf):
    text = (conf / "config.yaml").read_text()
    assert "  dropout: 0.3\n  epochs: 30\n" in text
    (conf / "config.yaml").write_text(
        text.replace("  dropout: 0.3\n  epochs: 30\n", "  dropout: 0.45\n  epochs: 30\n", 1)
    )
    before = {path: path.read_bytes() for path in conf.rglob("*.yaml")}
    for name in ["cpu", "demo", "quick", "gpu"]:
        assert compose(name)["train_cnn_focal"]["dropout"] == 0.45
    assert compose("demo")["train_cnn_focal"]["epochs"] == 8  # the profile's own key wins
    assert {path: path.read_bytes() for path in conf.rglob("*.yaml")} == before  # composing writes nothing there


def test_a_one_off_value_goes_on_top_of_the_profile(conf):
    params = compose("quick", ["train_cnn_focal.precision=mixed", "ingest.data_dir=../shared/ham10000"])
    assert params["profile"] == "quick" and params["train_cnn_focal"]["precision"] == "mixed"
    assert params["ingest"]["data_dir"] == "../shared/ham10000" and params["train_cnn_focal"]["epochs"] == 5


def test_an_unknown_profile_or_key_is_one_error_line(conf, tmp_path):
    with pytest.raises(ParamsError, match=r"profile 'fast' not found \(conf/profile/: cpu, demo, gpu, quick\)"):
        compose("fast")
    with pytest.raises(ParamsError, match="cannot compose profile demo: .*no_such_key"):
        compose("demo", ["train_cnn_focal.no_such_key=1"])
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.profiles", "fast", "--out", str(tmp_path / "p.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: profile 'fast' not found (conf/profile/: cpu, demo, gpu, quick)"
    ]
    assert not (tmp_path / "p.yaml").exists()


def test_the_command_line_writes_a_profile_for_a_machine_without_dvc(conf, tmp_path):
    out = tmp_path / "node" / "params.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.profiles", "gpu", "--set", "base.image_size=224", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "conf/profile/gpu.yaml + base.image_size=224" in result.stdout
    params = yaml.safe_load(out.read_text())
    assert params["base"]["image_size"] == 224 and params["train_effnetb7"]["input_size"] == 600
    assert params == yaml.safe_load(dump(compose("gpu", ["base.image_size=224"])))


def test_the_precision_parameter_makes_dvc_see_exactly_the_training_stages_changed(repo_root, tmp_path):
    # dvc status in a copy of the graph and its lock: a changed precision is a changed param of
    # every training stage, and of nothing else.
    for name in ["dvc.yaml", "dvc.lock", "params.yaml"]:
        shutil.copy(repo_root / name, tmp_path / name)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for stage in TRAINING_STAGES:
        params[stage]["precision"] = "mixed"
    (tmp_path / "params.yaml").write_text(dump(params))
    status = json.loads(
        subprocess.run([*dvc, "status", "--json"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    )
    changed_params = {
        stage
        for stage, changes in status.items()
        for change in changes
        if isinstance(change, dict)
        for key in change.get("changed deps", {})
        if key == "params.yaml"
    }
    assert changed_params == TRAINING_STAGES
