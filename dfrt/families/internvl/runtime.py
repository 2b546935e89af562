"""InternVL3.5's run side (torch-free): which frames the VLM sees, at how many tokens, in which prompt.

The plan, key frames, pooling and encoding are shared by frame VLMs (:mod:`dfrt.families.frame_runtime`);
InternVL adds its markers and numbers the frames shown as its processor does (:mod:`.prompt`). Its pixel
shuffle keeps the token grid in row-major order, so the pooled frames' rows are averaged over the grid
exactly as SmolVLM's are.
"""

from __future__ import annotations

from typing import Any

from dfrt.families.frame_runtime import FrameVLMVisual
from dfrt.families.internvl.prompt import SPECIAL_TOKENS, frame_layout
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.loader import GraphSet


class InternVLVisual(FrameVLMVisual):
    """An InternVL bundle's visual side; used through :class:`~dfrt.runtime.pipeline.Pipeline` (one lock)."""

    MARKERS = SPECIAL_TOKENS

    def layout(
        self, timestamps: list[float], rows: list[int], duration: float
    ) -> tuple[tuple[str, int], ...]:
        return frame_layout(rows)  # InternVL numbers its frames; it writes no timestamps


def open_visual(bundle: Bundle, graphs: GraphSet | dict[str, Any], **options: Any) -> InternVLVisual:
    return InternVLVisual(bundle, graphs, options.get("selection"))
