"""The rolling window: each sampled frame's question-independent state, bounded by a span of stream time.

A frame enters with its time (seconds on the watcher's clock) and its state, whatever the bundle's family
keeps of a frame (``live_frames`` of its visual side: DynFocus's vision tokens, pooled grid and structure
tokens; SmolVLM's frame at the encoder's size, its scorer embedding and, once shown, its rows); frames older
than ``span`` seconds before the newest are evicted with their state, and a hard cap on the frame count bounds
memory even if the clock misbehaves.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrameEntry:
    """One sampled frame's state (its family's, with ``nbytes``) and when it was shown."""

    time: float  # seconds on the watcher's clock
    wall_time: float  # time.time() when it arrived
    state: Any
    thumbnail: bytes = b""  # a small JPEG of the frame (:func:`thumbnail`), the evidence an alert shows

    @property
    def nbytes(self) -> int:
        return int(self.state.nbytes) + len(self.thumbnail)


@dataclass(frozen=True)
class WindowSnapshot:
    """The window's contents at one moment, in time order (never changed afterwards)."""

    entries: tuple[FrameEntry, ...]

    @property
    def num_frames(self) -> int:
        return len(self.entries)

    @property
    def times(self) -> np.ndarray:
        return np.array([e.time for e in self.entries], dtype=np.float64)

    @property
    def start(self) -> float | None:
        return self.entries[0].time if self.entries else None

    @property
    def end(self) -> float | None:
        return self.entries[-1].time if self.entries else None


THUMBNAIL_SIDE = 160  # pixels, the longest side of a frame's thumbnail
THUMBNAIL_QUALITY = 80  # JPEG quality


def thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """An RGB frame as a JPEG whose longest side is at most ``side`` pixels (a few KB); b"" if it cannot be
    encoded (a thumbnail is evidence, never a reason to drop the frame)."""
    import cv2

    try:
        h, w = rgb.shape[:2]
        scale = side / max(h, w)
        if scale < 1:
            rgb = cv2.resize(
                rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        ok, data = cv2.imencode(
            ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
    except (cv2.error, ValueError, IndexError, ZeroDivisionError):
        return b""
    return data.tobytes() if ok else b""


class FeatureWindow:
    """A thread-safe deque of :class:`FrameEntry` holding at most ``span`` seconds and ``max_frames``."""

    def __init__(self, span: float, max_frames: int) -> None:
        self.span = span
        self.max_frames = max_frames
        self._entries: deque[FrameEntry] = deque(maxlen=max_frames)
        self._lock = threading.Lock()
        self.evicted = 0

    def add(self, entry: FrameEntry) -> None:
        """Append a frame (times must increase) and evict what fell out of the span."""
        with self._lock:
            if self._entries and entry.time <= self._entries[-1].time:
                return  # a clock glitch: never reorder the window
            if len(self._entries) == self.max_frames:
                self.evicted += 1
            self._entries.append(entry)
            horizon = entry.time - self.span
            while self._entries and self._entries[0].time <= horizon:
                self._entries.popleft()
                self.evicted += 1

    def snapshot(self) -> WindowSnapshot:
        with self._lock:
            return WindowSnapshot(tuple(self._entries))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries)
