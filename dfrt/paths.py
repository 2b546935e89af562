"""Where dfrt keeps things: the cache directory and the default bundle. stdlib only."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``DFRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dfrt``, else ``~/.cache/dfrt``."""
    if explicit := os.environ.get("DFRT_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dfrt"


def default_bundle() -> Path:
    """``DFRT_BUNDLE``, else the bundle in the cache directory."""
    if explicit := os.environ.get("DFRT_BUNDLE"):
        return Path(explicit)
    return cache_dir() / "bundle"
