"""``--timeline out.png``: frame scores over time, key frames marked, their thumbnails below. OpenCV only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from dfrt.errors import InputError
from dfrt.fileio import atomic_write_bytes, check_output_path

if TYPE_CHECKING:
    from dfrt.runtime.pipeline import InferenceResult

WIDTH, PLOT_H, THUMB_H, MARGIN = 1200, 260, 120, 50
KEY, LINE, GRID, TEXT = (40, 40, 220), (200, 120, 30), (225, 225, 225), (30, 30, 30)  # BGR


def render_timeline(
    frames: np.ndarray, timestamps: np.ndarray, scores: np.ndarray, key_frames: np.ndarray, title: str
) -> np.ndarray:
    """A BGR image (H, W, 3): the score curve with key frames in red, and up to 8 key-frame thumbnails."""
    canvas = np.full((PLOT_H + THUMB_H + 2 * MARGIN, WIDTH, 3), 255, dtype=np.uint8)
    left, right, top, bottom = MARGIN + 20, WIDTH - MARGIN, MARGIN, MARGIN + PLOT_H
    span = max(float(timestamps[-1] - timestamps[0]), 1e-6)
    xs = left + (timestamps - timestamps[0]) / span * (right - left)
    ys = bottom - np.clip(scores, 0, 1) * (bottom - top)
    for level in (0.0, 0.5, 1.0):
        y = int(bottom - level * (bottom - top))
        cv2.line(canvas, (left, y), (right, y), GRID, 1)
        cv2.putText(canvas, f"{level:.1f}", (left - 40, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1)
    for k in key_frames:
        cv2.line(canvas, (int(xs[k]), top), (int(xs[k]), bottom), KEY, 1)
    points = np.stack([xs, ys], axis=1).round().astype(np.int32)
    cv2.polylines(canvas, [points], False, LINE, 2, cv2.LINE_AA)
    keys = set(key_frames.tolist())
    for i, (x, y) in enumerate(points):
        cv2.circle(canvas, (int(x), int(y)), 4 if i in keys else 2, KEY if i in keys else LINE, -1)
    cv2.putText(
        canvas, _fit(title, 110), (left, MARGIN - 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, TEXT, 1, cv2.LINE_AA
    )
    cv2.putText(canvas, f"{timestamps[0]:.0f}s", (left, bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1)
    cv2.putText(
        canvas, f"{timestamps[-1]:.0f}s", (right - 30, bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1
    )
    _thumbnails(canvas, frames, timestamps, key_frames, bottom + 30)
    return canvas


def _thumbnails(
    canvas: np.ndarray, frames: np.ndarray, stamps: np.ndarray, keys: np.ndarray, y0: int
) -> None:
    shown = keys if keys.size <= 8 else keys[np.linspace(0, keys.size - 1, 8).round().astype(int)]
    slot = (WIDTH - 2 * MARGIN) // max(len(shown), 1)
    for i, k in enumerate(shown):
        frame = cv2.cvtColor(frames[k], cv2.COLOR_RGB2BGR)
        h, w = frame.shape[:2]
        scale = min((slot - 10) / w, (THUMB_H - 20) / h)
        thumb = cv2.resize(
            frame, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA
        )
        x0 = MARGIN + i * slot
        canvas[y0 : y0 + thumb.shape[0], x0 : x0 + thumb.shape[1]] = thumb
        label = f"{stamps[k]:.1f}s"
        cv2.putText(canvas, label, (x0, y0 + thumb.shape[0] + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, KEY, 1)


def _fit(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_png(image: np.ndarray, path: Path) -> None:
    """Encode ``image`` and write it atomically (never over a link, device, FIFO or directory)."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise InputError(f"could not encode the timeline picture for {path}")
    atomic_write_bytes(path, encoded.tobytes())


def check_timeline(path: Path, video: Path, protected: Sequence[Path] = ()) -> Path:
    """``path`` if the ``--timeline`` PNG may be written there (see :func:`dfrt.fileio.check_output_path`):
    never over ``video``, a file of ``protected`` (the ``--llm`` GGUF, say) or inside a directory of it (the
    bundle); callable before any work."""
    protected = [Path(p) for p in protected]
    files = [p for p in protected if not p.is_dir()]
    directories = [p for p in protected if p.is_dir()]
    return check_output_path(path, what="--timeline", inputs=[video, *files], protected_dirs=directories)


def write_timeline(
    result: InferenceResult, question: str, path: Path, protected: Sequence[Path] = ()
) -> None:
    """The ``--timeline`` PNG of one answer: this question's frame scores and key frames.

    ``protected``: the bundle directory and the LLM file of the pipeline, never written over or into; the
    input video is protected always. Checked before anything is drawn.
    """
    sampled = result.video.sampled
    check_timeline(path, sampled.path, protected)
    scores = result.frame_scores()
    if scores is None:
        scores = np.zeros(sampled.num_frames, dtype=np.float32)
    image = render_timeline(
        sampled.frames, sampled.timestamps, scores, result.visual.selection.key_frames, question
    )
    save_png(image, path)
