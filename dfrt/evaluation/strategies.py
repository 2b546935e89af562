"""Which frames each strategy of ``dfrt eval --dataset`` shows the LLM, for any model family.

- ``dfrt``: the bundle's own selection (DynFocus: DPE's key frames as cones, rods for the rest; SmolVLM2:
  the scorer's key frames at full tokens, pooled frames for coverage) at its default budget or
  ``--visual-tokens``.
- ``uniform``: frames at the centres of equal segments, each at the model's full tokens per frame and nothing
  else, as many as the ``dfrt`` strategy's visual tokens hold (equal visual tokens; at least one frame).
- ``uniform-full``: uniform frames at full tokens, as many as the LLM context holds with the prompt and the
  answer (``max_tokens``), at most the frames sampled.

Everything goes through the family-neutral :class:`~dfrt.runtime.pipeline.Pipeline` (``embed`` with a
:class:`~dfrt.runtime.selection.KeyFrameSelection` and ``rods=False`` shows those frames alone at full
tokens). What differs between families (a frame's full tokens, the selection's own tokens, how a chosen set
of frames is written, the text around each frame) is one small class per family here, in :data:`FAMILIES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from dfrt.errors import ConfigError, InputError
from dfrt.runtime.generate import VisualPrompt
from dfrt.runtime.selection import KeyFrameSelection, fixed_selection, uniform_frames

if TYPE_CHECKING:
    from dfrt.runtime.pipeline import Pipeline, Video

STRATEGIES = ("dfrt", "uniform", "uniform-full")


class FullFrames(Protocol):
    """How one family shows chosen frames at its full tokens per frame, and what that costs."""

    def full_tokens(self) -> int:
        """Visual tokens of one frame at full tokens."""
        ...

    def own_tokens(self, video: Video) -> int:
        """Visual tokens of the bundle's own selection (the ``dfrt`` strategy) for ``video``."""
        ...

    def limit(self) -> int | None:
        """The most frames one answer can show at full tokens (a graph's axis), None: no limit."""
        ...

    def selection(self, video: Video, frames: np.ndarray) -> KeyFrameSelection:
        """``frames`` (ascending indices into the sampled frames) as the frames to show."""
        ...

    def placeholder(self, video: Video, frames: np.ndarray) -> VisualPrompt:
        """What the LLM would receive for ``frames``, with empty rows: for counting the prompt's tokens."""
        ...


class DynFocusFrames:
    """DynFocus: a frame at full tokens is its cone (pooled prototype + structure tokens), no rods."""

    def __init__(self, pipe: Pipeline) -> None:
        self.config = pipe.config
        fusion = pipe.visual.runners.get("fusion")
        spec = getattr(fusion, "spec", None)
        self._limit = spec.axis_ranges["keys"][2] if spec is not None else None

    def full_tokens(self) -> int:
        return int(self.config.cone_tokens)

    def own_tokens(self, video: Video) -> int:
        from dfrt.runtime.budget import plan_for_config

        if video.plan is not None:
            return int(video.plan.tokens)
        return int(plan_for_config(self.config, video.features.num_frames, None).tokens)

    def limit(self) -> int | None:
        return self._limit

    def selection(self, video: Video, frames: np.ndarray) -> KeyFrameSelection:
        return fixed_selection(frames, video.features.prototypes)

    def placeholder(self, video: Video, frames: np.ndarray) -> VisualPrompt:
        return VisualPrompt.block(np.zeros((frames.size * self.full_tokens(), 1), np.float32))


class FrameVLMFrames:
    """Open VLMs whose frames are blocks of rows (SmolVLM2, InternVL3.5): a frame at full tokens is its
    ``tokens_per_frame`` rows, written with the family's own per-frame text (``pipe.visual.layout``)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.config = pipe.config
        self.visual = pipe.visual

    def full_tokens(self) -> int:
        return int(self.config.tokens_per_frame)

    def own_tokens(self, video: Video) -> int:
        return int(video.features.plan.tokens)

    def limit(self) -> int | None:
        return None  # the visual graph runs in chunks

    def selection(self, video: Video, frames: np.ndarray) -> KeyFrameSelection:
        total = video.features.num_frames
        frames = np.asarray(frames, dtype=np.int64)
        return KeyFrameSelection(
            total, np.arange(frames.size, dtype=np.int64), frames, np.zeros(0, dtype=np.int64)
        )

    def placeholder(self, video: Video, frames: np.ndarray) -> VisualPrompt:
        features, full = video.features, self.full_tokens()
        times = [float(features.timestamps[i]) for i in frames]
        layout = self.visual.layout(times, [full] * len(times), features.duration)
        return VisualPrompt(np.zeros((full * len(times), 1), np.float32), layout)


FAMILIES: dict[str, type] = {
    "dynfocus": DynFocusFrames,
    "smolvlm": FrameVLMFrames,
    "internvl": FrameVLMFrames,
}


def full_frames(pipe: Pipeline) -> FullFrames | None:
    """The family's :class:`FullFrames`, None for a family without one (only ``dfrt`` runs then)."""
    kind = FAMILIES.get(pipe.family)
    return None if kind is None else kind(pipe)


def check_strategies(strategies: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ConfigError(
            f"--strategies: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(STRATEGIES)}"
        )
    if len(set(strategies)) != len(strategies):
        raise ConfigError(f"--strategies: {','.join(strategies)} names one strategy twice")
    return strategies


def strategy_frames(
    strategy: str,
    pipe: Pipeline,
    frames: FullFrames | None,
    video: Video,
    prompt: str,
    answer_tokens: int,
) -> tuple[KeyFrameSelection | None, bool]:
    """``(frames, rods)`` for :meth:`Pipeline.embed`: None and True for the bundle's own selection."""
    if strategy == "dfrt":
        return None, True
    if frames is None:
        raise ConfigError(
            f"strategy {strategy}: dfrt eval cannot show uniform frames of a {pipe.family} bundle"
        )
    total = int(video.features.num_frames)
    cap = min(total, frames.limit() or total)
    if strategy == "uniform":
        count = max(1, min(cap, frames.own_tokens(video) // frames.full_tokens()))
    else:
        count = most_that_fit(pipe, frames, video, prompt, answer_tokens, cap)
    return frames.selection(video, uniform_frames(total, count)), False


def most_that_fit(
    pipe: Pipeline, frames: FullFrames, video: Video, prompt: str, answer_tokens: int, cap: int
) -> int:
    """The most uniform frames (at most ``cap``) at full tokens whose prompt leaves ``answer_tokens``
    positions of the LLM context free (binary search; the text around each frame is counted exactly)."""
    if pipe.generator is None or pipe.llm is None:
        raise ConfigError("uniform-full needs the pipeline's LLM")
    total = int(video.features.num_frames)

    def fits(count: int) -> bool:
        visual = frames.placeholder(video, uniform_frames(total, count))
        text = sum(len(ids) for ids in pipe.generator.visual_prompt_ids(prompt, visual))  # type: ignore[union-attr]
        return text + visual.num_rows + 1 + answer_tokens <= pipe.llm.n_ctx  # type: ignore[union-attr]

    if not fits(1):
        raise InputError(
            f"uniform-full: not even one frame at full tokens fits the LLM context ({pipe.llm.n_ctx}) with "
            f"this prompt and {answer_tokens} answer tokens; use a larger --ctx"
        )
    low, high = 1, cap  # fits(low); find the largest count that fits
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
