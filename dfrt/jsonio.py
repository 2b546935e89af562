"""The one bounded JSON reader for files dfrt did not write itself (a bundle's manifest, stamp, tokenizer).

A bundle is untrusted input, and ``json.loads`` has no net: 100,000 nested brackets raise ``RecursionError``,
``NaN``/``Infinity``/``1e400`` parse to non-finite floats, a 4,000-digit integer parses slowly, duplicate keys
silently keep the last value, and a 2 GB file is read whole. :func:`read_json` and :func:`parse_json` refuse
each of these with one :class:`ConfigError` line naming the file. stdlib only.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from dfrt.errors import ConfigError

MAX_DEPTH = 32  # a dfrt manifest nests 6 deep, a tokenizer 5
MAX_INT_DIGITS = 19  # anything wider than a signed 64-bit integer is not a size, id or count
MAX_NUMBER_CHARS = 40  # the longest float literal we parse ("-1.2345678901234567e-308" is 24)

# strings (possibly unterminated: the rest of the text then) and brackets; linear, no backtracking
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def read_json(path: Path, max_bytes: int, what: str = "JSON file") -> Any:
    """Parse ``path``, reading at most ``max_bytes + 1`` bytes of it; only regular files (a FIFO would hang).

    Anything that is not a bounded, finite, UTF-8 JSON document is one :class:`ConfigError` naming ``path``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ConfigError(f"{path}: unreadable ({e.strerror or e})") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise ConfigError(f"{path}: {info.st_size} bytes, not a {what} (the limit is {max_bytes})")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)  # the file may have grown since fstat: never read past the cap
    except OSError as e:
        raise ConfigError(f"{path}: unreadable ({e.strerror or e})") from e
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: over {max_bytes} bytes, not a {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: unreadable, not UTF-8 text ({e.reason} at byte {e.start})") from e
    return parse_json(text, str(path))


def parse_json(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` with limits: nesting depth, finite numbers, integer width, no duplicate keys."""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise ConfigError(f"{where}: JSON nested deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1
    try:
        value = json.loads(
            text,
            parse_float=_float,
            parse_int=_int,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
        _check_strings(value)
    except (ValueError, RecursionError) as e:  # RecursionError: cannot happen under the depth limit
        raise ConfigError(f"{where}: not valid JSON ({_one_line(e)})") from e
    return value


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise ValueError(f"number literal of {len(literal)} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:20]} is out of range")
    return value


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(literal)} digits")
    return int(literal)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {duplicate[:40]!r}")
    return result


def _check_strings(value: Any) -> None:
    """Every key and string must be encodable text: ``"\\ud800"`` (a lone surrogate) is valid JSON, but no
    file name, template or token can hold it."""
    if isinstance(value, str):
        if not value.isascii():
            value.encode("utf-8")  # UnicodeEncodeError is a ValueError
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]
