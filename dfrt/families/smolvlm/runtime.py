"""SmolVLM2's run side (torch-free): which frames the VLM sees, at how many tokens, in which prompt.

The plan, key frames, pooling and encoding are shared by frame VLMs (:mod:`dfrt.families.frame_runtime`);
SmolVLM2 adds its markers and lays the frames out with their timestamps as its processor does
(:mod:`.prompt`).
"""

from __future__ import annotations

from typing import Any

from dfrt.families.frame_runtime import (
    SELECTIONS,
    FrameFeatures,
    FrameVLMVisual,
    LiveFrame,
    adaptive_pool,
    plan_frames,
)
from dfrt.families.smolvlm.prompt import END_OF_UTTERANCE, FAKE_IMAGE, GLOBAL_IMAGE, frame_layout
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.loader import GraphSet

__all__ = [
    "SELECTIONS",
    "LiveFrame",
    "SmolVLMFeatures",
    "SmolVLMVisual",
    "adaptive_pool",
    "open_visual",
    "plan_frames",
]

SmolVLMFeatures = FrameFeatures  # one video's question-independent state


class SmolVLMVisual(FrameVLMVisual):
    """A SmolVLM bundle's visual side; used through :class:`~dfrt.runtime.pipeline.Pipeline` (one lock)."""

    MARKERS = (FAKE_IMAGE, GLOBAL_IMAGE, END_OF_UTTERANCE)

    def layout(
        self, timestamps: list[float], rows: list[int], duration: float
    ) -> tuple[tuple[str, int], ...]:
        return frame_layout(timestamps, rows, duration)


def open_visual(bundle: Bundle, graphs: GraphSet | dict[str, Any], **options: Any) -> SmolVLMVisual:
    return SmolVLMVisual(bundle, graphs, options.get("selection"))
