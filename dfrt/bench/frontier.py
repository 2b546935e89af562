"""The accuracy/cost frontier record (:mod:`dfrt.demo.frontier`) as text and as a two-panel PNG (OpenCV)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import cv2
import numpy as np

TOKEN_RATIO_GOAL = 1.6  # the quoted 37% fewer tokens at the same accuracy
SPEEDUP_GOAL = 2.1  # the quoted 2.1x faster inference
W, H, LEFT, RIGHT, TOP, BOTTOM = 620, 420, 70, 20, 50, 60
COLOURS = {"dynfocus": (40, 40, 220), "uniform": (90, 90, 90), "random": (200, 120, 30)}  # BGR
MAX_RECORD_BYTES = 1 << 20
TEXT, GRID, FONT = (30, 30, 30), (225, 225, 225), cv2.FONT_HERSHEY_SIMPLEX


def _setting(point: dict[str, Any]) -> str:
    if point["method"] == "dynfocus":
        return "default" if point["setting"] is None else f"budget {point['setting']}"
    return f"{point['setting']} frames"


def read_frontier(path: Path) -> dict[str, Any]:
    """A frontier record written by ``benchmarks/frontier.py``; a file that is not one is a ConfigError."""
    import json

    from dfrt.errors import ConfigError

    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise ConfigError(f"{path}: over {MAX_RECORD_BYTES} bytes, not a frontier record")
        record = json.loads(path.read_text(encoding="utf-8"))
        points, equal = record["points"], record["equal_accuracy"]
        for point in points:
            for key in ("method", "setting", "accuracy", "brief_accuracy", "tokens", "seconds"):
                point[key]
        for key in ("dynfocus_accuracy", "token_ratio", "speedup", "reached"):
            equal[key]
        record["questions"], record["clips"]
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a frontier record ({type(e).__name__}: {e})") from e
    return record


def format_frontier(record: dict[str, Any]) -> str:
    """The points as a table, then the equal-accuracy token ratio and speed-up against their goals."""
    lines = [
        f"accuracy/cost frontier on {record['questions']} {record['clips']} clips"
        + (f" ({record['date']}, {record['machine']})" if "date" in record else ""),
        f"{'method':<9} {'setting':<12} {'accuracy':>8} {'brief':>6} {'tokens':>7} {'s/question':>10}",
    ]
    for p in record["points"]:
        lines.append(
            f"{p['method']:<9} {_setting(p):<12} {p['accuracy']:>8.3f} {p['brief_accuracy']:>6.3f} "
            f"{p['tokens']:>7.1f} {p['seconds']:>10.3f}"
        )
    eq = record["equal_accuracy"]
    bound = (
        ""
        if eq["reached"]
        else " (uniform never reached it: more than its most tokens; ratios are lower bounds)"
    )
    ratio_met = "met" if eq["token_ratio"] >= TOKEN_RATIO_GOAL else "missed" if eq["reached"] else "not shown"
    speed_met = "met" if eq["speedup"] >= SPEEDUP_GOAL else "missed" if eq["reached"] else "not shown"
    prefix = "" if eq["reached"] else "> "
    lines += [
        f"DynFocus default: accuracy {eq['dynfocus_accuracy']:.3f} with {eq['dynfocus_tokens']:.1f} tokens, "
        f"{eq['dynfocus_seconds']:.3f} s/question; uniform: {eq['uniform_tokens']:.1f} tokens, "
        f"{eq['uniform_seconds']:.3f} s{bound}",
        f"equal-accuracy token ratio {prefix}{eq['token_ratio']:.2f}x "
        f"(goal {TOKEN_RATIO_GOAL}x: {ratio_met}), "
        f"speed-up {prefix}{eq['speedup']:.2f}x (goal {SPEEDUP_GOAL}x: {speed_met})",
    ]
    return "\n".join(lines)


def _panel(record: dict[str, Any], x_key: str, title: str, x_label: str) -> np.ndarray:
    canvas = np.full((H, W, 3), 255, dtype=np.uint8)
    points = record["points"]
    xs = [p[x_key] for p in points]
    x_max = max(xs) * 1.05 or 1.0
    left, right, top, bottom = LEFT, W - RIGHT, TOP, H - BOTTOM

    def at(x: float, y: float) -> tuple[int, int]:
        return int(left + x / x_max * (right - left)), int(bottom - y * (bottom - top))

    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = at(0, level)[1]
        cv2.line(canvas, (left, y), (right, y), GRID, 1)
        cv2.putText(canvas, f"{level:.2f}", (8, y + 5), FONT, 0.45, TEXT, 1)
    cv2.putText(canvas, title, (left, 28), FONT, 0.55, TEXT, 1)
    cv2.putText(canvas, x_label, (left + 150, H - 12), FONT, 0.5, TEXT, 1)
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = at(share * x_max, 0)[0]
        cv2.line(canvas, (x, bottom), (x, bottom + 5), TEXT, 1)
        cv2.putText(canvas, f"{share * x_max:.3g}", (x - 14, bottom + 20), FONT, 0.42, TEXT, 1)
    for row, (method, colour) in enumerate(COLOURS.items()):
        curve = sorted((p[x_key], p["accuracy"]) for p in points if p["method"] == method)
        pixels = [at(x, y) for x, y in curve]
        for a, b in itertools.pairwise(pixels):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        for xy in pixels:
            cv2.circle(canvas, xy, 4, colour, -1, cv2.LINE_AA)
        legend = (right - 130, top + 20 + 20 * row)
        cv2.circle(canvas, legend, 5, colour, -1)
        cv2.putText(canvas, method, (legend[0] + 12, legend[1] + 5), FONT, 0.5, TEXT, 1)
    return canvas


def save_frontier_plot(record: dict[str, Any], path: Path) -> None:
    """Accuracy against visual tokens and against seconds per question, side by side."""
    from dfrt.runtime.timeline import save_png

    image = np.concatenate(
        [
            _panel(record, "tokens", "accuracy vs visual tokens", "visual tokens per question"),
            _panel(record, "seconds", "accuracy vs time", "seconds per question (end to end)"),
        ],
        axis=1,
    )
    save_png(image, path)
