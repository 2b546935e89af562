"""One module per ``dfrt`` verb: each has ``register(subparsers)``."""

from __future__ import annotations

import sys


def progress(message: str) -> None:
    """A progress or status line for the user: stderr, prefixed, flushed (stdout is for results)."""
    print(f"dfrt: {message}", file=sys.stderr, flush=True)
