"""The video cache: decoded frames and question-independent features, keyed by the video's content hash.

Follow-up questions about the same bytes (with the same fps, frame cap and token budget) skip decoding and
the visual encoder. Bounded in bytes (the arrays a :class:`~dfrt.runtime.pipeline.Video` holds), least
recently used out; a video larger than the whole budget is not kept. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from dfrt.runtime.pipeline import Video

CacheKey = tuple[str, float, int, "int | None", bool]  # sha256, fps, max_frames, visual_tokens, image


def video_bytes(value: Any, _depth: int = 0) -> int:
    """The bytes of every numpy array inside ``value`` (dataclasses, tuples, lists, dicts)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if _depth > 6:
        return 0
    if is_dataclass(value) and not isinstance(value, type):
        return sum(video_bytes(getattr(value, f.name), _depth + 1) for f in fields(value))
    if isinstance(value, (tuple, list)):
        return sum(video_bytes(v, _depth + 1) for v in value)
    if isinstance(value, dict):
        return sum(video_bytes(v, _depth + 1) for v in value.values())
    return 0


class VideoCache:
    """An LRU of :class:`Video` s bounded by ``max_bytes`` (0 turns caching off)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, tuple[Video, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: CacheKey) -> Video | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: CacheKey, video: Video) -> bool:
        """Keep ``video``; False when it alone is over the budget (then nothing is evicted for it)."""
        size = video_bytes(video)
        with self._lock:
            if size > self.max_bytes:
                return False
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            while self._items and self.bytes + size > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed
                self.evictions += 1
            self._items[key] = (video, size)
            self.bytes += size
            return True

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
