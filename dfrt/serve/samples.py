"""The demo's sample clips for the page: one per question kind, with a question the demo answers, written
once into the cache dir (deterministic, from :mod:`dfrt.demo.samples`) and served read-only by name."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from dfrt.fileio import file_lock
from dfrt.paths import cache_dir

SAMPLES_DIR = "demo-samples"
_NAME = re.compile(r"0[1-9]-[a-z-]{1,40}\.mp4")  # what write_samples names its clips
_lock = threading.Lock()


def sample_dir(root: Path | None = None) -> Path:
    """The sample clips and their ``questions.json``, written on first use (under a file lock)."""
    directory = (root or cache_dir()) / SAMPLES_DIR
    with _lock:
        if not (directory / "questions.json").is_file():
            from dfrt.demo.samples import write_samples

            directory.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(directory.parent / f".{SAMPLES_DIR}.lock"):
                if not (directory / "questions.json").is_file():
                    write_samples(directory)
    return directory


def list_samples(root: Path | None = None) -> list[dict[str, Any]]:
    """``[{name, question, kind}]`` of the sample clips (the answers stay out: the page asks)."""
    entries = json.loads((sample_dir(root) / "questions.json").read_text())
    return [{"name": e["video"], "question": e["question"], "kind": e["kind"]} for e in entries]


def sample_path(name: str, root: Path | None = None) -> Path | None:
    """The clip called ``name`` (one of :func:`list_samples`' names), None for anything else."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None
    path = sample_dir(root) / name
    return path if path.is_file() and not path.is_symlink() else None
