"""Checks shared by frame VLM families' configs (SmolVLM2, InternVL3.5). stdlib only."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dfrt.errors import ConfigError


def check_limits(values: Mapping[str, Any], limits: Mapping[str, int]) -> None:
    """Every value an int in [1, its limit]; one :class:`ConfigError` naming the first that is not."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits[key]:
            raise ConfigError(f"config.{key} = {value!r}: outside [1, {limits[key]}]")


def check_fraction(key: str, value: Any, closed: bool = False) -> None:
    """A float in (0, 1), or (0, 1] with ``closed``."""
    finite = isinstance(value, float) and math.isfinite(value)
    if not (finite and value > 0 and (value <= 1 if closed else value < 1)):
        raise ConfigError(f"config.{key} = {value!r}: outside (0, 1{']' if closed else ')'}")


def check_normalisation(mean: Sequence[float], std: Sequence[float]) -> None:
    """Three finite channel means in (-10, 10] and three standard deviations in (0, 10]."""
    for key, values3 in (("image_mean", mean), ("image_std", std)):
        low = 0.0 if key == "image_std" else -10.0
        if len(values3) != 3 or not all(
            isinstance(x, float | int) and math.isfinite(x) and low < x <= 10.0 for x in values3
        ):
            raise ConfigError(f"config.{key} = {list(values3)!r}: three numbers in ({low}, 10]")


def check_all(checks: Sequence[tuple[bool, str]]) -> None:
    """``(ok, message)`` pairs: the first not ok is one :class:`ConfigError`."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
