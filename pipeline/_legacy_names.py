"""The command names from before ``pipeline/`` was grouped by concern, still accepted.

Scripts, notebooks and muscle memory out there call ``python -m pipeline.predict`` or
``python -m pipeline.bundle import ...``. Those modules now live in subpackages (the README and
``docs/`` use the new names), and this finder answers for exactly the old names: ``python -m
pipeline.predict`` runs ``pipeline.serving.predict``, and ``import pipeline.predict`` returns the
very same module object, so nothing is loaded twice.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

#: old name -> new name, for the modules people ran with ``python -m``.
OLD_NAMES = {
    "pipeline.predict": "pipeline.serving.predict",
    "pipeline.bundle": "pipeline.tracking.bundle",
    "pipeline.server": "pipeline.services.mlflow_server",
    "pipeline.evaluate": "pipeline.evaluation.evaluate",
    "pipeline.plots": "pipeline.evaluation.plots",
    "pipeline.reproduce": "pipeline.reproduction.reproduce",
    "pipeline.seeds": "pipeline.reproduction.seeds",
    "pipeline.pack": "pipeline.data.pack",
    "pipeline.demo_data": "pipeline.data.demo_data",
    "pipeline.stage_runner": "pipeline.training.stage_runner",
}


class _OldNameFinder(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in OLD_NAMES:
            return None
        new = importlib.util.find_spec(OLD_NAMES[fullname])
        return importlib.util.spec_from_loader(fullname, self, origin=new.origin if new else None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(OLD_NAMES[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing: the module already ran under its new name."""

    def is_package(self, fullname: str) -> bool:
        return False

    def get_source(self, fullname: str) -> str | None:
        new = importlib.util.find_spec(OLD_NAMES[fullname])
        return new.loader.get_source(OLD_NAMES[fullname])

    def get_code(self, fullname: str) -> CodeType | None:
        # runpy (``python -m <old name>``) runs this code as __main__.
        new = importlib.util.find_spec(OLD_NAMES[fullname])
        return new.loader.get_code(OLD_NAMES[fullname])


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (it answers only for :data:`OLD_NAMES`)."""
    if not any(isinstance(finder, _OldNameFinder) for finder in sys.meta_path):
        sys.meta_path.append(_OldNameFinder())
