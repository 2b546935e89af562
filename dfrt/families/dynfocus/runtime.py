"""DynFocus's run side: the graphs, host-side DPE and the interleave of :mod:`dfrt.runtime.visual`."""

from __future__ import annotations

from typing import Any

from dfrt.runtime.bundle import Bundle
from dfrt.runtime.loader import GraphSet
from dfrt.runtime.visual import VisualPipeline


def open_visual(bundle: Bundle, graphs: GraphSet | dict[str, Any], **options: Any) -> VisualPipeline:
    """DynFocus selects its own key frames (DPE): it takes no frame-selection option."""
    selection = options.get("selection")
    if selection not in (None, "dpe"):
        from dfrt.errors import ConfigError

        raise ConfigError(
            f"--selection {selection}: a DynFocus bundle selects key frames with its own DPE scorer"
        )
    return VisualPipeline(bundle, graphs)
