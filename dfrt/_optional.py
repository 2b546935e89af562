"""Import optional dependencies with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from dfrt.errors import MissingDependencyError


def require(module: str, pip: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming what to ``pip install``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{module} is not installed: pip install '{pip}'") from e
