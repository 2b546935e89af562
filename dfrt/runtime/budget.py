"""Visual-token budget: how many frames to keep and how many key frames to select so that N_vis <= N.

Token count (what :func:`dfrt.runtime.selection.tokens_per_frame` emits): a key frame gives ``cone`` tokens,
every other frame ``rod`` tokens, and when every frame is key each also gets its rod: ``T = 1`` costs
cone + rod = 40 tokens, like two frames with one key frame. (Every frame is key at T > 1 only with
key_ratio > 0.5; there :meth:`dfrt.config.DynFocusConfig.visual_token_count` leaves the rods out.)

Rule, for T sampled frames and a budget of N visual tokens:

1. no budget, or the default fits: T frames, k = ceil(key_ratio * min(T, max_prototypes)) key frames (today's
   behaviour, :meth:`dfrt.config.DynFocusConfig.key_frame_count`);
2. otherwise fewer key frames: all T frames, the most key frames (at least one) that fit;
3. if one key frame among T frames does not fit either, fewer frames (resampled uniformly from the T): the
   most frames that fit with one key frame, then the most key frames that still fit (one, for the paper's
   38 / 2 tokens);
4. a budget below one frame's cone + rod tokens raises :class:`ConfigError`.

The plan is maximal in that order: one more frame (with one key frame) would not fit, and one more key frame
would not fit unless the key frames are at their default. Beyond ``max_prototypes`` frames the key frames
are chosen among the k-means prototypes, so ``key_frames <= min(frames, max_prototypes)`` always holds.
numpy only: this ships in the torch-free runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dfrt.config import ROD_TOKENS, DynFocusConfig, key_frame_count
from dfrt.errors import ConfigError


@dataclass(frozen=True)
class TokenPlan:
    """Keep ``frames`` frames (uniformly resampled from those decoded), select ``key_frames`` of them (of
    their prototypes beyond 80) as cones: ``tokens`` visual tokens, within ``budget`` (None: no budget)."""

    frames: int
    key_frames: int
    tokens: int
    budget: int | None
    unused: str = field(default="", compare=False)  # why fewer than ``budget`` tokens are used (for users)


def token_count(frames: int, key_frames: int, cone_tokens: int, rod_tokens: int = ROD_TOKENS) -> int:
    """Visual tokens of ``frames`` frames with ``key_frames`` cones; all-key frames carry a rod too."""
    if not 1 <= key_frames <= frames:
        raise ConfigError(f"need 1 <= key frames <= frames, got {key_frames} key frames of {frames}")
    if key_frames == frames:
        return (cone_tokens + rod_tokens) * frames
    return cone_tokens * key_frames + rod_tokens * (frames - key_frames)


def default_key_frames(frames: int, key_ratio: float, max_prototypes: int) -> int:
    """Today's k: ceil(key_ratio * T') over T' = min(frames, max_prototypes) prototypes."""
    return key_frame_count(min(frames, max_prototypes), key_ratio)


def plan_visual_tokens(
    frames: int,
    budget: int | None,
    *,
    key_ratio: float,
    max_prototypes: int,
    cone_tokens: int,
    rod_tokens: int = ROD_TOKENS,
) -> TokenPlan:
    """The frames and key frames to use for ``frames`` sampled frames under ``budget`` (module docstring)."""
    if frames < 1:
        raise ConfigError(f"a video needs at least one frame, got {frames}")
    if not 0 < rod_tokens < cone_tokens:
        raise ConfigError(f"need 0 < rod tokens < cone tokens, got {rod_tokens} and {cone_tokens}")

    def tokens(t: int, k: int) -> int:
        return token_count(t, k, cone_tokens, rod_tokens)

    default_k = default_key_frames(frames, key_ratio, max_prototypes)
    default_tokens = tokens(frames, default_k)
    if budget is None or budget >= default_tokens:
        why = "" if budget in (None, default_tokens) else (
            f"{frames} frames with the model's {default_k} key frames need only {default_tokens}"
        )  # fmt: skip
        return TokenPlan(frames, default_k, default_tokens, budget, why)
    smallest = cone_tokens + rod_tokens  # one frame, or two with one key frame
    if budget < smallest:
        raise ConfigError(
            f"a visual-token budget of {budget} is below the {smallest} tokens of one frame "
            f"({cone_tokens} cone + {rod_tokens} rod tokens)"
        )
    # here frames >= 2 (one frame costs the smallest budget). The most frames that fit with one key frame:
    # cone + rod (t - 1) <= budget, at least 2 (t = 2 costs what t = 1 does)
    kept = min(frames, (budget - cone_tokens) // rod_tokens + 1)
    # then the most key frames, up to today's default for that many frames (never all key: rods are cheaper)
    cap = default_key_frames(kept, key_ratio, max_prototypes)
    keys = min(cap, kept - 1, (budget - rod_tokens * kept) // (cone_tokens - rod_tokens))
    used = tokens(kept, keys)
    why = ""
    if used < budget:
        extra = "one more frame" if keys == 1 and kept < frames else "one more key frame"
        cost = rod_tokens if extra == "one more frame" else cone_tokens - rod_tokens
        why = f"{extra} would cost {cost} tokens, {budget - used} are left"
        if keys == cap and kept == frames:
            why = f"the key frames are at the model's default ({keys} of {kept}) and every frame is kept"
    plan = TokenPlan(kept, keys, used, budget, why)
    assert plan.tokens <= budget, plan
    return plan


def plan_for_config(config: DynFocusConfig, frames: int, budget: int | None = None) -> TokenPlan:
    """:func:`plan_visual_tokens` with the key ratio, prototype count and cone size of ``config``."""
    return plan_visual_tokens(
        frames,
        budget,
        key_ratio=config.dpe.key_ratio,
        max_prototypes=config.dpe.max_prototypes,
        cone_tokens=config.cone_tokens,
    )


def kept_frames(total: int, plan: TokenPlan) -> np.ndarray:
    """The indices of the ``plan.frames`` frames kept of ``total`` sampled ones: all of them, or spread
    uniformly with the first and the last kept (the decoder's frame-cap rule)."""
    if plan.frames >= total:
        return np.arange(total, dtype=np.int64)
    return np.linspace(0, total - 1, plan.frames).round().astype(np.int64)  # distinct: step >= 1
