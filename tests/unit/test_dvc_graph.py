"""The DVC graph: each stage depends on its own params section and on exactly the code it runs, so
a change reruns only what it must, and everything it must.

Code deps are computed from the code, not kept by hand: ``stages/<name>.py`` runs the import
closure of that script inside ``pipeline/`` (every ``import`` / ``from ... import`` anywhere in a
module's syntax tree, function-level and relative ones included; importing ``pipeline.a.b`` also
runs ``pipeline/__init__.py`` and ``pipeline/a/__init__.py``; ``from pipeline.a import b`` counts
``b`` when it is a module). Every module of that closure is a dep of the stage (the file itself,
or a folder dep holding it), except the few in :data:`EXCLUDED`, which record where a run went and
cannot change a stage's outputs. No ``pipeline/`` dep lies outside the closure, so editing
``pipeline/team/``, ``benchmarks/`` or ``docs/`` reruns nothing. Code deps are listed file by file:
DVC would hash a folder dep's ``__pycache__`` too.

``requirements.lock`` is a dep of every stage whose code imports third-party numerical packages
(TensorFlow, Keras, numpy, pandas, Pillow, OpenCV, albumentations, scikit-learn): their versions
change outputs (decoded and resized pixels, split assignment, augmented images, trained weights,
metrics), and the lock file is where a version changes.
"""

import ast
import copy
import re
import sys

import pytest
import yaml

#: Modules of a stage's import closure left out of its deps on purpose, each with why it cannot
#: change the stage's outputs (model weights, metrics JSON, plots, report). They decide where a run
#: is recorded, not what is computed; the run record they return only fills ``mlflow_run.json``,
#: whose run id differs on every run anyway. ``tracking/recorder.py`` (the model folder's file
#: names) and ``tracking/provenance.py`` (the fingerprints that decide whether a run resumes from a
#: checkpoint) do shape outputs and stay deps.
EXCLUDED = {
    "pipeline/local_servers/__init__.py": "empty package file of the local-services layer, reached only through tracking/mlflow_runs.py",
    "pipeline/local_servers/detached.py": "starts, polls and stops local service processes (the MLflow server); writes no stage output",
    "pipeline/local_servers/mlflow_server.py": "starts or checks the MLflow server; mlflow_runs.py only asks it whether the server answers",
    "pipeline/tracking/destination.py": "picks the recorder (MLflow or an offline bundle): where a run is recorded, not what is trained",
    "pipeline/tracking/mlflow_runs.py": "sends params, metrics and the saved model to MLflow after they are computed; "
    "evaluate loads models from their folders, never from MLflow",
    "pipeline/tracking/offline.py": "copies the finished model, history and metrics into a bundle folder outside the DVC outputs",
    "pipeline/quiet.py": "imports Keras with TensorFlow's start-up notices filtered out of standard error; computes nothing",
    "pipeline/training/console.py": "formats the stage's last console line (kept epoch, where the run went); writes nothing",
}

#: Top-level names of the third-party packages whose versions change numbers (see the docstring).
NUMERICAL = {"tensorflow", "keras", "numpy", "pandas", "PIL", "cv2", "albumentations", "sklearn"}
LOCK_FILE = "requirements.lock"
#: Folders no stage may depend on: editing them reruns nothing.
NEVER_DEPS = ("pipeline/team", "benchmarks", "docs")


@pytest.fixture(scope="module")
def stages(repo_root):
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]


def _param_sections(stage):
    return {entry.split(".")[0] if isinstance(entry, str) else next(iter(entry)) for entry in stage.get("params", [])}


def test_every_stage_has_a_script_and_reads_only_base_and_its_own_section(stages, repo_root):
    assert list(stages) == [
        "ingest",
        "split",
        "augment",
        "train_cnn_focal",
        "train_effnetb7",
        "import_lite0_weights",
        "train_effnet_lite0",
        "import_lite2_weights",
        "train_effnet_lite2",
        "evaluate",
    ]
    # The EfficientNet-Lite stages share one script per kind, the backbone as its argument.
    shared = {"import_lite0_weights": "import_lite_weights", "import_lite2_weights": "import_lite_weights"}
    shared |= {"train_effnet_lite0": "train_effnet_lite", "train_effnet_lite2": "train_effnet_lite"}
    for name, stage in stages.items():
        script = shared.get(name, name)
        assert stage["cmd"].startswith(f"python stages/{script}.py ")
        if script != name:
            assert f"--backbone {re.search(r'lite[0-9]', name).group()} " in stage["cmd"]
        assert (repo_root / "stages" / f"{script}.py").is_file()
        assert f"stages/{script}.py" in stage["deps"]
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


def test_no_stage_depends_on_a_file_inside_another_stages_output(stages):
    """A dep inside a directory output (it was ``${paths.split}/train.csv``) makes DVC look that
    directory up by the hash in the committed dvc.lock: in a fresh clone, `make seeds` on other
    data than the lock's failed its second queued run (``failed to load directory ('data',
    'split')``). Stages depend on whole outputs."""
    outs = {_path(out) for stage in stages.values() for out in stage.get("outs", [])}
    inside = [
        (name, dep)
        for name, stage in stages.items()
        for dep in map(_path, stage["deps"])
        for out in outs
        if dep.startswith(out + "/")
    ]
    assert inside == []


def test_an_augment_param_reruns_augment_and_what_depends_on_it(stages):
    assert _downstream(stages, "augment") == {
        "augment",
        "train_cnn_focal",
        "train_effnetb7",
        "train_effnet_lite0",
        "train_effnet_lite2",
        "evaluate",
    }


def test_a_train_effnetb7_param_reruns_only_that_stage_and_evaluate(stages):
    assert _downstream(stages, "train_effnetb7") == {"train_effnetb7", "evaluate"}
    assert "train_effnetb7" not in _param_sections(stages["train_cnn_focal"])


@pytest.mark.parametrize("backbone", ["lite0", "lite2"])
def test_each_lite_backbone_is_converted_once_and_feeds_only_its_training(stages, backbone):
    weights, training = f"import_{backbone}_weights", f"train_effnet_{backbone}"
    assert _downstream(stages, weights) == {weights, training, "evaluate"}
    assert _downstream(stages, training) == {training, "evaluate"}
    assert not stages[weights].get("params"), "no params: the conversion reruns only when its code changes"


# --- code deps -------------------------------------------------------------------------------


def _imported_modules(repo_root, path):
    """Absolute names of every module ``path`` may import (``from a import b`` yields ``a`` and
    ``a.b``: b may be a submodule), from every import statement in its syntax tree."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = list(path.relative_to(repo_root).parts[:-1])  # a package's __init__.py and its modules alike
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``.`` is the module's own package, each further dot one up
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _module_file(repo_root, name):
    """The file that runs for module ``name`` (its ``__init__.py`` for a package), or None."""
    base = repo_root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _files_run_by(repo_root, name):
    """Importing ``pipeline.a.b`` runs ``pipeline/__init__.py``, ``pipeline/a/__init__.py`` and ``b``."""
    parts = name.split(".")
    found = (_module_file(repo_root, ".".join(parts[:end])) for end in range(1, len(parts) + 1))
    return [path for path in found if path is not None]


def script_of(stage) -> str:
    """The stage script its command runs (``python stages/x.py ...``)."""
    return stage["cmd"].split()[1]


def import_closure(repo_root, script):
    """The ``pipeline/`` files (posix paths from the repo root) that running ``script`` may
    execute, and the top-level names of the other packages they and the script import."""
    seen, external, todo = set(), set(), [repo_root / script]
    while todo:
        for name in _imported_modules(repo_root, todo.pop()):
            if name.split(".")[0] != "pipeline":
                external.add(name.split(".")[0])
                continue
            for path in _files_run_by(repo_root, name):
                if path not in seen:
                    seen.add(path)
                    todo.append(path)
    return {path.relative_to(repo_root).as_posix() for path in seen}, external - set(sys.stdlib_module_names)


def _covers(dep, module):
    return module == dep or module.startswith(dep.rstrip("/") + "/")


def missing_code_deps(stages, repo_root):
    """(stage, module) for every module a stage's script may run that none of its deps covers,
    minus :data:`EXCLUDED`."""
    missing = []
    for name, stage in stages.items():
        closure, _ = import_closure(repo_root, script_of(stages[name]))
        deps = [_path(dep) for dep in stage["deps"]]
        missing += [
            (name, module)
            for module in sorted(closure - set(EXCLUDED))
            if not any(_covers(dep, module) for dep in deps)
        ]
    return missing


def _stages_depending_on(stages, path):
    return {name for name, stage in stages.items() if any(_covers(_path(dep), path) for dep in stage["deps"])}


def test_every_module_a_stage_script_imports_is_a_dep_of_that_stage(stages, repo_root):
    missing = missing_code_deps(stages, repo_root)
    lines = [
        f"{stage}: its script imports {module}, which is not a dep; add `      - {module}` to the deps of "
        f"stage {stage} in dvc.yaml (or to EXCLUDED in this file, with why it cannot change the outputs)"
        for stage, module in missing
    ]
    assert not missing, "\n".join(lines)


def test_removing_one_code_dep_is_reported_as_exactly_that_stage_and_module(stages, repo_root):
    mutated = copy.deepcopy(stages)
    mutated["train_cnn_focal"]["deps"].remove("pipeline/training/backend.py")
    assert missing_code_deps(mutated, repo_root) == [("train_cnn_focal", "pipeline/training/backend.py")]


def test_a_folder_dep_covers_the_modules_under_it(stages, repo_root):
    mutated = copy.deepcopy(stages)
    deps = mutated["train_cnn_focal"]["deps"]
    deps[:] = [dep for dep in deps if not dep.startswith("pipeline/training/")] + ["pipeline/training"]
    assert missing_code_deps(mutated, repo_root) == []


def test_no_stage_depends_on_pipeline_code_its_script_does_not_import(stages, repo_root):
    for name, stage in stages.items():
        closure, _ = import_closure(repo_root, script_of(stages[name]))
        for dep in (_path(dep) for dep in stage["deps"]):
            if not dep.startswith("pipeline/"):
                continue
            assert (repo_root / dep).exists(), f"{name}: dep {dep} does not exist (stale)"
            files = (
                [path.relative_to(repo_root).as_posix() for path in sorted((repo_root / dep).rglob("*.py"))]
                if (repo_root / dep).is_dir()
                else [dep]
            )
            outside = [path for path in files if path not in closure or path in EXCLUDED]
            assert not outside, (
                f"{name}: dep {dep} holds {outside}, which {script_of(stages[name])} never runs (or EXCLUDED lists)"
            )


def test_editing_pipeline_team_benchmarks_or_docs_reruns_no_stage(stages, repo_root):
    for name, stage in stages.items():
        for dep in map(_path, stage["deps"]):
            assert not any(_covers(folder, dep) or _covers(dep, folder) for folder in NEVER_DEPS), f"{name}: dep {dep}"
    for folder in NEVER_DEPS:
        files = [path for path in (repo_root / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts]
        assert files, folder
        for path in files:
            assert not _stages_depending_on(stages, path.relative_to(repo_root).as_posix()), path


def test_editing_the_report_module_reruns_evaluate_only(stages):
    assert _stages_depending_on(stages, "pipeline/evaluation/report.py") == {"evaluate"}


def test_every_excluded_module_exists_and_some_stage_script_runs_it(stages, repo_root):
    run = set().union(*(import_closure(repo_root, script_of(stages[name]))[0] for name in stages))
    for module, reason in EXCLUDED.items():
        assert (repo_root / module).is_file(), f"EXCLUDED lists {module}, which does not exist"
        assert module in run, f"EXCLUDED lists {module}, which no stage runs: drop it"
        assert reason.strip()


def test_every_stage_running_numerical_packages_depends_on_the_lock_file(stages, repo_root):
    for name, stage in stages.items():
        _, external = import_closure(repo_root, script_of(stages[name]))
        if external & NUMERICAL:
            assert LOCK_FILE in stage["deps"], (
                f"{name} imports {sorted(external & NUMERICAL)}: add `      - {LOCK_FILE}` to its deps"
            )


def test_the_closure_follows_function_level_relative_and_submodule_imports(repo_root, tmp_path):
    """The closure itself, on a small tree: a function-level relative import of a sibling
    package's submodule, through ``from pkg import submodule``, runs every ``__init__.py`` on the way."""
    files = {
        "pipeline/__init__.py": "",
        "pipeline/a/__init__.py": "",
        "pipeline/a/one.py": "def f():\n    from ..b import two\n",
        "pipeline/b/__init__.py": "",
        "pipeline/b/two.py": "from pipeline.c import three, helper\nimport numpy\n",
        "pipeline/c/__init__.py": "helper = 1\n",
        "pipeline/c/three.py": "import os\n",
        "pipeline/c/unused.py": "",
        "stages/s.py": "import pipeline.a.one\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    closure, external = import_closure(tmp_path, "stages/s.py")
    assert closure == set(files) - {"pipeline/c/unused.py", "stages/s.py"}
    assert external == {"numpy"}
