"""One module per ``dfrt`` verb: each has ``register(subparsers)``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, TypeVar

T = TypeVar("T")


def progress(message: str) -> None:
    """A progress or status line for the user: stderr, prefixed, flushed (stdout is for results)."""
    print(f"dfrt: {message}", file=sys.stderr, flush=True)


def options(cls: type[T], args: argparse.Namespace, **renamed: Any) -> T:
    """The library's options dataclass ``cls`` from parsed arguments: each field from the argument of the
    same name, or from ``renamed`` (fields whose flag is spelled differently or needs converting)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {name: getattr(args, name) for name in fields - renamed.keys() if hasattr(args, name)}
    return cls(**given, **renamed)
