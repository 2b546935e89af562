"""Frames (T, H, W, 3) uint8 RGB -> CLIP-normalised pixels (T, 3, S, S) float32, with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

from dfrt.errors import InputError
from dfrt.manifest import Preprocess
from dfrt.runtime import options


def preprocess_frames(frames: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Resize to S x S, scale to [0, 1], normalise per channel. ``shortest_edge_bicubic`` (CLIP): the shortest
    edge to S, then a centre crop; ``square_lanczos`` (SmolVLM's video frames) and ``square_bicubic``
    (InternVL's): the whole frame to S x S.

    The references use anti-aliased PIL/torchvision filters; OpenCV's area filter is the closest match when
    shrinking, bicubic or Lanczos when enlarging.
    """
    if not isinstance(frames, np.ndarray):
        raise InputError(f"expected frames as a numpy array (T, H, W, 3) uint8, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape[:3]:
        raise InputError(f"expected frames (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    options.frame_size(frames.shape[2], frames.shape[1], "frames")  # before any resize
    size = spec.image_size
    resize = _RESIZES.get(spec.resize)
    if resize is None or spec.crop not in ("center", "none"):
        raise InputError(f"unknown preprocessing {spec.resize!r} / crop {spec.crop!r}")
    out = np.empty((frames.shape[0], size, size, 3), dtype=np.float32)
    for i, frame in enumerate(frames):
        out[i] = resize(frame, size)
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    out -= mean
    out *= inv_std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _square(frame: np.ndarray, size: int, enlarge: int = cv2.INTER_LANCZOS4) -> np.ndarray:
    h, w = frame.shape[:2]
    interpolation = cv2.INTER_AREA if size < min(h, w) else enlarge
    return cv2.resize(frame, (size, size), interpolation=interpolation)


def _square_bicubic(frame: np.ndarray, size: int) -> np.ndarray:
    return _square(frame, size, cv2.INTER_CUBIC)


def _resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


_RESIZES = {
    "shortest_edge_bicubic": _resize_crop,
    "square_lanczos": _square,
    "square_bicubic": _square_bicubic,
}
