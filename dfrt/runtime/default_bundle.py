"""The default bundle: the trained demo model shipped as package data, assembled on first use.

The package carries the whole demo bundle (``dfrt/data/demo``: ONNX graphs, question tokenizer, the demo
LM's GGUF, manifest). The first ``dfrt infer`` without ``--bundle`` copies it into ``<cache>/demo`` (staged,
then renamed into place, under a lock): the runtime may write TensorRT engines beside a bundle, and package
directories can be read-only. What a killed copy left (``.demo-staging-<pid>``, ``.demo-retired-<pid>`` of a
process that no longer exists) is removed on the next use. stdlib only: no torch needed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from dfrt.errors import ConfigError
from dfrt.fileio import file_lock, remove_dead_leftovers
from dfrt.manifest import MANIFEST_NAME
from dfrt.paths import cache_dir


def shipped_demo() -> Path:
    """The package-data directory of the demo bundle."""
    return Path(str(resources.files("dfrt") / "data" / "demo"))


def demo_bundle(progress: Callable[[str], None] = lambda message: None, root: Path | None = None) -> Path:
    """``<cache>/demo``, copied from the package data when missing or out of date."""
    source = shipped_demo()
    manifest = source / MANIFEST_NAME
    if not manifest.is_file():
        raise ConfigError("this dfrt installation carries no demo bundle: pass --bundle DIR")
    target = root or cache_dir() / "demo"
    remove_dead_leftovers(target.parent)  # of killed copies: only dfrt's names, only dead pids
    if _current(target, manifest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / ".demo.lock"):
        if _current(target, manifest):  # another process assembled it while we waited
            return target
        progress(f"setting up the demo bundle in {target} (first use)")
        staging = target.parent / f".demo-staging-{os.getpid()}"
        retired = target.parent / f".demo-retired-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)  # our own pid: a folder we made, or one of a dead process
        shutil.rmtree(retired, ignore_errors=True)
        try:
            staging.mkdir()
            for name in json.loads(manifest.read_text())["files"]:
                shutil.copyfile(source / name, staging / name)
            shutil.copyfile(manifest, staging / MANIFEST_NAME)  # last: a complete bundle or none
            if target.exists():
                os.replace(target, retired)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(retired, ignore_errors=True)
    return target


def _current(target: Path, manifest: Path) -> bool:
    installed = target / MANIFEST_NAME
    return installed.is_file() and installed.read_bytes() == manifest.read_bytes()


def resolve_bundle(
    explicit: Path | None, progress: Callable[[str], None] = lambda message: None, assemble: bool = True
) -> Path:
    """``--bundle``, else ``$DFRT_BUNDLE``, else a bundle exported to ``<cache>/bundle``, else the demo
    (assembled on first use unless ``assemble`` is false: then its path, which may not exist yet)."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("DFRT_BUNDLE"):
        return Path(env)
    exported = cache_dir() / "bundle"
    if (exported / MANIFEST_NAME).is_file():
        return exported
    return demo_bundle(progress) if assemble else cache_dir() / "demo"
