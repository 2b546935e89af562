"""Keep third-party native libraries (FFmpeg inside OpenCV, onnxruntime, llama.cpp) off the user's stderr.

They write to file descriptor 2 directly, below Python's logging; the only reliable switch is to point
fd 2 at /dev/null while they run. With ``dfrt -v`` (the ``dfrt`` logger at DEBUG) nothing is hidden.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None


def verbose() -> bool:
    return logging.getLogger("dfrt").isEnabledFor(logging.DEBUG)


@contextmanager
def silenced_native_stderr() -> Iterator[None]:
    """Silence fd 2 for the duration (re-entrant); Python's own ``sys.stderr`` writes are flushed first."""
    global _depth, _saved_fd
    if verbose():
        yield
        return
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            _saved_fd = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = None
