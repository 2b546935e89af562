"""`dfrt bench --plot out.png`: visual tokens and latency against video length, drawn with OpenCV.

Two log-log panels from one ``dfrt bench`` record: the visual tokens of DynFocus and of the two baselines,
and the llama.cpp prefill time of those tokens (or, without ``--llm``, the host-side DPE time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PANEL_W, PANEL_H, MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 640, 440, 70, 20, 50, 60
COLOURS = {  # BGR
    "dynfocus": (40, 40, 220),
    "uniform_8_frame": (90, 90, 90),
    "llamavid": (200, 120, 30),
    "host": (40, 40, 220),
}
LABELS = {
    "dynfocus": "DynFocus",
    "uniform_8_frame": "8 frames x patches",
    "llamavid": "2 tokens/frame",
    "host": "DynFocus host DPE",
}
TEXT, GRID = (30, 30, 30), (225, 225, 225)
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Panel:
    title: str
    y_label: str
    x: list[float]  # video seconds
    series: dict[str, list[float | None]]  # key of COLOURS -> y per x (None: no point)


def panels_from_record(record: dict[str, Any]) -> list[Panel]:
    """The tokens panel, and the prefill panel (or host DPE time without an LLM) from a bench record."""
    budget = record["token_budget"]
    x = [float(r["seconds"]) for r in budget]
    tokens = Panel(
        "visual tokens fed to the LLM (1 fps)",
        "tokens",
        x,
        {
            "dynfocus": [r["dynfocus_tokens"] for r in budget],
            "uniform_8_frame": [r["uniform_8_frame_tokens"] for r in budget],
            "llamavid": [r["llamavid_tokens"] for r in budget],
        },
    )
    prefill = record.get("llm_prefill")
    if not prefill:
        host = [r["host_seconds"] * 1e3 for r in budget]
        return [tokens, Panel("host-side DPE (k-means, top-k, interleave)", "ms", x, {"host": host})]
    lengths = sorted({r["video_seconds"] for r in prefill["rows"]})
    series: dict[str, list[float | None]] = {m: [] for m in ("dynfocus", "uniform_8_frame", "llamavid")}
    for seconds in lengths:
        for method in series:
            row = next(r for r in prefill["rows"] if r["video_seconds"] == seconds and r["method"] == method)
            series[method].append(row["prefill_seconds"])
    title = f"llama.cpp prefill ({prefill['model'].removesuffix('.gguf')}, {prefill['threads']} threads)"
    return [tokens, Panel(title, "seconds", [float(s) for s in lengths], series)]


def render_plot(panels: Sequence[Panel], caption: str) -> np.ndarray:
    """A BGR image with the panels side by side and a caption line below."""
    canvas = np.full((PANEL_H + 30, PANEL_W * len(panels), 3), 255, dtype=np.uint8)
    for i, panel in enumerate(panels):
        _draw_panel(canvas, panel, i * PANEL_W)
    cv2.putText(canvas, caption, (MARGIN_L, PANEL_H + 18), FONT, 0.45, TEXT, 1, cv2.LINE_AA)
    return canvas


def _draw_panel(canvas: np.ndarray, panel: Panel, x0: int) -> None:
    left, right = x0 + MARGIN_L, x0 + PANEL_W - MARGIN_R
    top, bottom = MARGIN_T, PANEL_H - MARGIN_B
    values = [v for ys in panel.series.values() for v in ys if v is not None and v > 0]
    x_lo, x_hi = _log_range(panel.x)
    y_lo, y_hi = _log_range(values or [1.0])

    def px(x: float, y: float) -> tuple[int, int]:
        fx = (math.log10(x) - x_lo) / (x_hi - x_lo)
        fy = (math.log10(y) - y_lo) / (y_hi - y_lo)
        return round(left + fx * (right - left)), round(bottom - fy * (bottom - top))

    for exp in range(math.floor(y_lo), math.ceil(y_hi) + 1):
        for mult in (1, 2, 5):
            y = mult * 10.0**exp
            if y_lo <= math.log10(y) <= y_hi:
                _, yy = px(10**x_lo, y)
                cv2.line(canvas, (left, yy), (right, yy), GRID, 1)
                cv2.putText(canvas, _short(y), (x0 + 8, yy + 4), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    last_label = -(10**6)
    for x in panel.x:
        xx, _ = px(x, 10**y_lo)
        cv2.line(canvas, (xx, top), (xx, bottom), GRID, 1)
        if xx - last_label >= 34:  # neighbours such as 80 s and 81 s share one label
            cv2.putText(canvas, _duration(x), (xx - 12, bottom + 18), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
            last_label = xx
    cv2.rectangle(canvas, (left, top), (right, bottom), TEXT, 1)
    cv2.putText(canvas, panel.title, (left, top - 22), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    cv2.putText(canvas, panel.y_label, (x0 + 8, top - 6), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    cv2.putText(canvas, "video length", (right - 90, bottom + 40), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    for n, (key, ys) in enumerate(panel.series.items()):
        points = [px(x, y) for x, y in zip(panel.x, ys, strict=True) if y is not None and y > 0]
        if len(points) > 1:
            cv2.polylines(canvas, [np.array(points, dtype=np.int32)], False, COLOURS[key], 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(canvas, p, 4, COLOURS[key], -1, cv2.LINE_AA)
        label = LABELS[key] + ("" if len(points) == len(ys) else " (rest beyond the context)")
        ly = top + 18 + 18 * n
        cv2.line(canvas, (left + 10, ly - 4), (left + 30, ly - 4), COLOURS[key], 2)
        cv2.putText(canvas, label, (left + 36, ly), FONT, 0.42, TEXT, 1, cv2.LINE_AA)


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = math.log10(min(values)), math.log10(max(values))
    pad = max(0.1, (hi - lo) * 0.06)
    return lo - pad, hi + pad


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g}s"
    if seconds < 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


def save_plot(record: dict[str, Any], path: Path, caption: str) -> None:
    """Render ``record`` and write the PNG atomically (never over a link, device, FIFO or bundle file)."""
    from dfrt.fileio import check_output_path
    from dfrt.runtime.timeline import save_png

    check_output_path(path, what="--plot")
    save_png(render_plot(panels_from_record(record), caption), path)
