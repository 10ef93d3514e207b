"""The README and docs/: short where a newcomer starts, links that resolve, commands that exist."""

import importlib.util
import re

import pytest

DOCS = [
    "README.md",
    *[
        f"docs/{name}"
        for name in (
            "running.md",
            "pipeline.md",
            "tracking.md",
            "reproduction.md",
            "team.md",
            "gpu.md",
            "serving.md",
            "performance.md",
            "testing.md",
            "layout.md",
        )
    ],
]


@pytest.fixture(scope="module")
def texts(repo_root):
    return {name: (repo_root / name).read_text(encoding="utf-8") for name in DOCS}


def test_readme_is_short_and_leads_with_results(texts):
    readme = texts["README.md"].splitlines()
    assert len(readme) <= 200
    headings = [line for line in readme if line.startswith("## ")]
    assert headings[:3] == ["## Results", "## Two commands", "## The pipeline"]


def test_every_page_says_what_it_is_for(texts):
    for name, text in texts.items():
        title, blank, purpose = text.splitlines()[:3]
        assert title.startswith("# ") and blank == "" and len(purpose) > 30, name


def test_relative_links_resolve(texts, repo_root):
    for name, text in texts.items():
        base = (repo_root / name).parent
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (base / target).exists(), f"{name}: link to {target}"


def _makefile_targets(repo_root):
    return set(re.findall(r"^([a-z][\w-]*):", (repo_root / "Makefile").read_text(), flags=re.M))


def test_every_make_command_is_a_target(texts, repo_root):
    targets = _makefile_targets(repo_root)
    for name, text in texts.items():
        for target in re.findall(r"(?<![\w/-])make ([a-z][\w-]*)", text):
            assert target in targets, f"{name}: `make {target}` is not a Makefile target"


def test_every_python_module_command_exists(texts):
    for name, text in texts.items():
        for module in set(re.findall(r"python -m ((?:pipeline|benchmarks)(?:\.\w+)*)", text)):
            assert importlib.util.find_spec(module) is not None, f"{name}: python -m {module}"
