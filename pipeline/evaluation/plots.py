"""An HTML template for ``dvc plots show`` that renders without the internet.

DVC's default plots page loads Vega, Vega-Lite and Vega-Embed from a CDN, so the confusion
matrices are blank offline. ``make plots`` installs those three scripts from the npm registry
at the versions pinned in ``vendor/vega/package.json`` / ``package-lock.json`` (never committed
as minified blobs) and this module inlines them into a template for DVC's ``--html-template``:
the page then needs no network at all.

    python -m pipeline.evaluation.plots --vendor vendor/vega/node_modules --out vendor/vega/offline.html
    dvc plots show --html-template vendor/vega/offline.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import PipelineError, run_cli

SCRIPTS = (
    ("vega", "build/vega.min.js"),
    ("vega-lite", "build/vega-lite.min.js"),
    ("vega-embed", "build/vega-embed.min.js"),
)
#: What DVC replaces in an HTML template (``{scripts}`` is left out on purpose: it would add the CDN tags).
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def build_template(node_modules: Path) -> str:
    """The template with the three scripts inlined, each announced with its package version."""
    parts = []
    for package, script in SCRIPTS:
        folder = node_modules / package
        try:
            version = json.loads((folder / "package.json").read_text(encoding="utf-8"))["version"]
            code = (folder / script).read_text(encoding="utf-8")
        except (OSError, KeyError, json.JSONDecodeError) as error:
            raise PipelineError(
                f"{folder}: {package} is not installed ({error}); run `make plots` (npm ci in vendor/vega)"
            ) from error
        if "</script" in code or any(placeholder in code for placeholder in PLACEHOLDERS):
            raise PipelineError(f"{folder / script}: cannot be inlined (contains </script or a DVC placeholder)")
        parts.append(f"<!-- {package} {version} (npm) -->\n<script>\n{code}\n</script>")
    scripts = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
        "<title>HAM10000 pipeline: DVC plots (offline)</title>\n"
        f"{scripts}\n"
        "<style>table { border-spacing: 15px; } body { font-family: sans-serif; }</style>\n"
        "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vendor", required=True, help="node_modules with vega, vega-lite and vega-embed")
    parser.add_argument("--out", required=True, help="template file to write")
    args = parser.parse_args(argv)
    template = build_template(Path(args.vendor))
    Path(args.out).write_text(template, encoding="utf-8")
    print(f"offline plots template: {args.out} ({len(template) // 1024} KiB)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
