"""Import optional dependencies with an error that says which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from dfrt.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{module} is not installed: pip install 'dfrt[{extra}]'") from e
