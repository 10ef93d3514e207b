"""The plots page renders with the network switched off, checked in a real headless browser.

Needs Chromium (skipped with the reason where none is installed) and the offline template
that `make plots` builds from the npm packages (skipped likewise where npm was unavailable).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation.plots import build_template

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _offline_dom(browser: str, page) -> str:
    """The page's DOM after its scripts ran, in a browser without any network: a fresh network
    namespace (loopback only) where possible, else every request sent to a closed proxy."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000", "--dump-dom", page.as_uri()]
    isolated = ["unshare", "--net", "--map-root-user", browser, *flags]
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "--net", "--map-root-user", "true"], capture_output=True).returncode == 0
    ):
        command = isolated
    else:
        command = [browser, "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def confusion_renderer():
    from dvc_render import VegaRenderer

    pairs = [("mel", "mel"), ("mel", "nv"), ("nv", "nv"), ("nv", "nv"), ("bcc", "bcc"), ("bcc", "mel")]
    datapoints = [{"actual": actual, "predicted": predicted} for actual, predicted in pairs]
    return VegaRenderer(
        datapoints, "confusion_test", template="confusion", x="predicted", y="actual", title="confusion matrix"
    )


def test_the_confusion_matrix_renders_offline_in_a_real_browser(repo_root, tmp_path, confusion_renderer):
    from dvc_render import render_html

    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome installed (apt-get install chromium)")
    template = repo_root / "vendor" / "vega" / "offline.html"
    if not template.is_file():
        pytest.skip("no offline plots template: run `make plots` (needs npm once)")
    offline = render_html([confusion_renderer], tmp_path / "offline" / "index.html", html_template=template)
    dom = _offline_dom(browser, tmp_path / "offline" / "index.html")
    assert 'class="marks"' in dom and ("<canvas" in dom or "<svg" in dom), dom[-2000:]
    assert "cdn.jsdelivr" not in (tmp_path / "offline" / "index.html").read_text()
    # The check can fail: DVC's default page (scripts from the CDN) stays blank offline.
    render_html([confusion_renderer], tmp_path / "default" / "index.html")
    assert "cdn.jsdelivr" in (tmp_path / "default" / "index.html").read_text()
    assert 'class="marks"' not in _offline_dom(browser, tmp_path / "default" / "index.html")
    assert offline


def test_a_missing_package_is_one_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="vega is not installed .* run `make plots`"):
        build_template(tmp_path)
