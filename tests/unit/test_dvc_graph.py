"""The DVC graph: each stage depends on its own params section, so a change reruns only what it must."""

import yaml

import pytest


@pytest.fixture(scope="module")
def stages(repo_root):
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]


def _param_sections(stage):
    return {entry.split(".")[0] if isinstance(entry, str) else next(iter(entry)) for entry in stage.get("params", [])}


def test_every_stage_has_a_script_and_reads_only_base_and_its_own_section(stages, repo_root):
    assert list(stages) == [
        "ingest", "split", "augment", "train_cnn_focal", "train_effnetb7", "import_lite0_weights", "train_effnet_lite0", "evaluate"
    ]
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"python stages/{name}.py ")
        assert (repo_root / "stages" / f"{name}.py").is_file()
        assert f"stages/{name}.py" in stage["deps"]
        assert _param_sections(stage) <= {"base", name}


def _path(entry):
    return entry if isinstance(entry, str) else next(iter(entry))


def _downstream(stages, changed):
    """Stages that rerun when ``changed`` reruns: those depending on its outputs, transitively."""
    rerun, frontier = {changed}, [changed]
    while frontier:
        outs = [_path(out) for out in stages[frontier.pop()].get("outs", [])]
        for name, stage in stages.items():
            depends = any(dep == out or dep.startswith(out + "/") for dep in map(_path, stage["deps"]) for out in outs)
            if depends and name not in rerun:
                rerun.add(name)
                frontier.append(name)
    return rerun


def test_an_augment_param_reruns_augment_and_what_depends_on_it(stages):
    assert _downstream(stages, "augment") == {"augment", "train_cnn_focal", "train_effnetb7", "train_effnet_lite0", "evaluate"}


def test_a_train_effnetb7_param_reruns_only_that_stage_and_evaluate(stages):
    assert _downstream(stages, "train_effnetb7") == {"train_effnetb7", "evaluate"}
    assert "train_effnetb7" not in _param_sections(stages["train_cnn_focal"])


def test_the_lite0_weights_are_converted_once_and_feed_only_its_training(stages):
    assert _downstream(stages, "import_lite0_weights") == {"import_lite0_weights", "train_effnet_lite0", "evaluate"}
    assert _downstream(stages, "train_effnet_lite0") == {"train_effnet_lite0", "evaluate"}
    assert not stages["import_lite0_weights"].get("params"), "no params: the conversion reruns only when its code changes"
