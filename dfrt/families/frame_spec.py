"""What frame VLM families' configs share (SmolVLM2, InternVL3.5): token-grid properties, the dict round
trip and the checks. stdlib only."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from dfrt.config import dataclass_from_dict
from dfrt.errors import ConfigError

C = TypeVar("C", bound="FrameConfig")


class FrameVision:
    """Mixed into a family's vision-tower dataclass with ``image_size`` and ``patch_size``: the square patch
    grid a frame makes (a remainder of pixels is dropped, as SigLIP does)."""

    image_size: int
    patch_size: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


def pooled_grid_for(token_grid: int) -> int:
    """The pooled grid of a frame exported from a checkpoint: a quarter of the token grid on a side, a
    sixteenth of its tokens (SmolVLM2: 2 x 2 of 8 x 8; InternVL3.5: 4 x 4 of 16 x 16), at least 2 x 2 and
    never more than the grid. Each pooled frame costs a full encoder pass, so the share stays the same
    across families (benchmarks/RESULTS.md: InternVL3.5 at 2 x 2 bought so many that the encoder ran 4x
    longer)."""
    return min(token_grid, max(2, token_grid // 4))


class FrameConfig:
    """Mixed into a family's frozen config dataclass with ``vision.grid``, ``scale_factor``, ``pooled_grid``,
    ``llm_width``: a frame is a ``token_grid`` x ``token_grid`` block of rows, pooled to ``pooled_grid``."""

    vision: Any
    scale_factor: int
    pooled_grid: int
    llm_width: int

    @property
    def token_grid(self) -> int:
        return int(self.vision.grid // self.scale_factor)

    @property
    def tokens_per_frame(self) -> int:
        return self.token_grid**2

    @property
    def pooled_tokens(self) -> int:
        return self.pooled_grid**2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls: type[C], data: Any) -> C:
        return dataclass_from_dict(cls, data, "config")


def frame_sizes(config: FrameConfig) -> dict[str, Any]:
    """The sizes every frame VLM config has, keyed as its limits are."""
    v = config.vision
    names = ("image_size", "patch_size", "width", "depth", "heads", "intermediate")
    sizes = {f"vision.{name}": getattr(v, name) for name in names}
    return {**sizes, "scale_factor": config.scale_factor, "llm_width": config.llm_width,
            "pooled_grid": config.pooled_grid}  # fmt: skip


def check_frame_config(
    config: Any, limits: Mapping[str, int], extra: Sequence[tuple[bool, str]] = ()
) -> None:
    """What every frame VLM config must satisfy (sizes within ``limits``, fractions, normalisation, the token
    grid's shapes, a default budget holding one key frame), then the family's ``extra`` checks; the first
    failure is one :class:`ConfigError`."""
    v = config.vision
    check_limits(frame_sizes(config), limits)
    check_fraction("vision.ln_eps", v.ln_eps)
    check_fraction("key_share", config.key_share, closed=True)
    check_normalisation(config.image_mean, config.image_std)
    check_all(
        [
            *extra,
            (v.num_patches <= limits["max_patches"], f"at most {limits['max_patches']} patches a frame"),
            (v.width % v.heads == 0, "vision.width must be divisible by vision.heads"),
            (v.grid % config.scale_factor == 0, "the patch grid must be divisible by scale_factor"),
            (config.pooled_grid <= config.token_grid, "pooled_grid must be at most the token grid"),
            (
                config.tokens_per_frame <= config.default_visual_tokens <= 1 << 20,
                "default_visual_tokens must hold at least one key frame",
            ),
            (len(config.name) <= 255, "config.name too long"),
        ]
    )


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
