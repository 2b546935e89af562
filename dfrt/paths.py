"""Where dfrt keeps things: the cache dir; files users put beside their videos. stdlib only."""

from __future__ import annotations

import os
from pathlib import Path

QUESTIONS_FILE = "questions.txt"  # beside calibration videos: the questions users will ask, one a line


def cache_dir() -> Path:
    """``DFRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dfrt``, else ``~/.cache/dfrt``."""
    if explicit := os.environ.get("DFRT_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dfrt"
