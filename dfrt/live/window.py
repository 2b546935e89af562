"""The rolling window: each sampled frame's question-independent features, bounded by a span of stream time.

A frame enters with its time (seconds on the watcher's clock) and its own features (vision tokens, pooled
grid, structure tokens: :meth:`~dfrt.runtime.visual.VisualPipeline.frame_features`); frames older than
``span`` seconds before the newest are evicted with their features, and a hard cap on the frame count bounds
memory even if the clock misbehaves. The decoded frames themselves are not kept.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from dfrt.errors import InputError
from dfrt.runtime.visual import VideoFeatures, VisualPipeline


@dataclass(frozen=True)
class FrameEntry:
    """One sampled frame's features and when it was shown."""

    time: float  # seconds on the watcher's clock
    wall_time: float  # time.time() when it arrived
    tokens: np.ndarray  # (1+P*P, W)
    pooled: np.ndarray  # (G*G, W)
    structure: np.ndarray  # (22, W)

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.pooled.nbytes + self.structure.nbytes)


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

    def features(self, visual: VisualPipeline, key_count: int | None = None) -> VideoFeatures:
        """:class:`VideoFeatures` of these frames: prototypes (k-means beyond the config's maximum), scores
        and key frames are computed now, over exactly this window."""
        if not self.entries:
            raise InputError("the window holds no frames yet: wait for the stream")
        tokens = np.stack([e.tokens for e in self.entries])
        pooled = np.stack([e.pooled for e in self.entries])
        structure = np.stack([e.structure for e in self.entries])
        return visual.features_from_frames(tokens, pooled, structure, key_count)


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
