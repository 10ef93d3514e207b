"""Errors a user can act on, and the one place that turns them into an exit status."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

#: ``scheme://user:password@host`` in a URI: the password part is never printed.
_URI_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+):\S+@", re.IGNORECASE)


class PipelineError(Exception):
    """A problem with the user's input or environment (not a bug in the pipeline).

    Stages report it as one line on stderr and exit non-zero; a traceback is kept for bugs.
    """


class ParamsError(PipelineError):
    """``params.yaml`` has an unknown key, a missing key or a bad value."""


class DataValidationError(PipelineError):
    """The input data set is malformed: every problem is listed, one per line."""

    def __init__(self, problems: Sequence[str], source: str):
        self.problems = list(problems)
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        summary = f"{len(self.problems)} problem(s) in {source}: " + "; ".join(shown)
        if more:
            summary += f"; ... and {more} more"
        super().__init__(summary)


class TrackingError(PipelineError):
    """The MLflow tracking server cannot be reached or refused a request."""


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URI replaced by ``***``."""
    return _URI_PASSWORD.sub(r"\1:***@", text)


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``, turning a :class:`PipelineError` into one stderr line and exit 1."""
    try:
        main(argv)
    except PipelineError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
