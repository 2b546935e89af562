"""Video input with OpenCV: decode once, sample at a target fps, cap the frame count, keep timestamps.

Every input is untrusted: options are range-checked (:mod:`dfrt.runtime.options`), file names that are not
valid UTF-8 never reach OpenCV (its FFmpeg backend crashes on them), frame sizes are checked from the
metadata and on every decoded frame before any resize, and the sampling clock advances arithmetically, so
no timestamp or option can make a loop spin.

Decoding streams: frames are sampled as they are decoded, and when more than twice the cap would be kept,
every other kept frame is dropped and the sampling interval doubles, so memory stays bounded by the cap
whatever the video's length. Container metadata (fps, frame count) is used only as a fallback clock:
it is often wrong or zero on real files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dfrt.errors import InputError
from dfrt.runtime import options
from dfrt.runtime.native_log import silenced_native_stderr

log = logging.getLogger(__name__)

FALLBACK_FPS = 25.0  # assumed when the container reports no usable frame rate
MAX_PLAUSIBLE_FPS = 1000.0


@dataclass(frozen=True)
class SampledVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    timestamps: np.ndarray  # (T,) seconds from the start
    frame_indices: np.ndarray  # (T,) index of each frame in decode order
    path: Path
    decoded_frames: int  # frames decoded in total
    source_fps: float  # the container's frame rate as reported (0 if none)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def subset(self, indices: np.ndarray) -> SampledVideo:
        """The same video keeping only the sampled frames at ``indices`` (ascending)."""
        return dataclasses.replace(
            self,
            frames=self.frames[indices],
            timestamps=self.timestamps[indices],
            frame_indices=self.frame_indices[indices],
        )


SEQUENCE_PATTERN = re.compile(r"%0?\d*d")  # OpenCV reads "img%03d.jpg" as an image sequence
PLAYLIST_MAGIC = (b"#EXTM3U", b"#EXTINF", b"#EXT-X", b"ffconcat")  # HLS and concat lists FFmpeg would follow


def refuse_indirection(path: Path) -> None:
    """Refuse a file that would make OpenCV/FFmpeg read *other* files or URLs: an image-sequence pattern in
    its name, or a playlist (HLS, ffconcat) whatever its extension (FFmpeg probes the content)."""
    if pattern := SEQUENCE_PATTERN.search(path.name):
        raise InputError(
            f"{path}: the name holds an image-sequence pattern ({pattern.group()}), which OpenCV would "
            "expand into other files: rename the video"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    if head.startswith(PLAYLIST_MAGIC):
        raise InputError(f"{path} is a playlist, not a video: refusing (FFmpeg would open what it lists)")


def read_video(
    path: str | Path, fps: float = 1.0, max_frames: int = 128, shortest_edge: int | None = None
) -> SampledVideo:
    """Decode ``path`` and keep about ``fps`` frames per second, at most ``max_frames`` spread uniformly.

    ``shortest_edge`` resizes kept frames (area filter) so a 4K video does not fill memory.
    Raises :class:`InputError` (one line) for a missing, empty, unreadable, corrupt or frameless file.
    """
    fps, max_frames = options.fps(fps), options.max_frames(max_frames)
    shortest_edge = options.shortest_edge(shortest_edge)
    path = options.path("video", path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"video not found: {path}") from None
    except OSError as e:  # name too long, permission denied, a loop of links
        raise InputError(f"{path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a file")
    if info.st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    refuse_indirection(path)
    with silenced_native_stderr():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            if not capture.isOpened():
                raise InputError(
                    f"{path}: cannot be opened as a video (not a video, or an unsupported format)"
                )
            width, height = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
            options.frame_size(width, height, str(path))
            kept, decoded, source_fps = _sample(capture, 1.0 / fps, max_frames, shortest_edge, str(path))
        finally:
            capture.release()
    if not kept:
        raise InputError(f"{path}: no frame could be decoded (empty, truncated or corrupt video)")
    if len(kept) > max_frames:
        chosen = np.linspace(0, len(kept) - 1, max_frames).round().astype(int)
        kept = [kept[i] for i in chosen]
    return SampledVideo(
        frames=np.stack([frame for _, _, frame in kept]),
        timestamps=np.array([t for t, _, _ in kept], dtype=np.float64),
        frame_indices=np.array([i for _, i, _ in kept], dtype=np.int64),
        path=path,
        decoded_frames=decoded,
        source_fps=source_fps,
    )


def _sample(
    capture: cv2.VideoCapture,
    interval: float,
    max_frames: int,
    shortest_edge: int | None,
    source: str = "video",
) -> tuple[list[tuple[float, int, np.ndarray]], int, float]:
    reported = capture.get(cv2.CAP_PROP_FPS)
    source_fps = reported if math.isfinite(reported) and 0 < reported <= MAX_PLAUSIBLE_FPS else 0.0
    clock_fps = source_fps or FALLBACK_FPS
    kept: list[tuple[float, int, np.ndarray]] = []
    next_time, last_time, index = 0.0, -1.0, 0
    while capture.grab():
        stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if not math.isfinite(stamp) or stamp <= last_time or (index > 0 and stamp == 0.0):
            stamp = max(index / clock_fps, last_time + 1e-6)  # no usable pts: count frames instead
        last_time = stamp
        if stamp + 1e-6 >= next_time:
            ok, frame = capture.retrieve()
            if ok and frame is not None and frame.ndim == 3:
                options.frame_size(frame.shape[1], frame.shape[0], source)
                kept.append((stamp, index, _to_rgb(frame, shortest_edge)))
                next_time = _next_sample_time(next_time, stamp, interval)
                if len(kept) > 2 * max_frames:  # halve the rate: memory stays bounded by the cap
                    kept = kept[::2]
                    interval *= 2
                    next_time = kept[-1][0] + interval
        index += 1
    return kept, index, source_fps


def _next_sample_time(next_time: float, stamp: float, interval: float) -> float:
    """The first ``next_time + k * interval`` after ``stamp``, computed, never stepped: a timestamp jump or
    an interval too small to move the clock cannot make it spin."""
    target = stamp + 1e-6
    if next_time > target:
        return next_time
    steps = (target - next_time) / interval
    if not steps < 2.0**53:  # the interval is lost below the clock's precision (or inf, nan)
        return math.nextafter(target, math.inf)
    candidate = next_time + (math.floor(steps) + 1) * interval
    return candidate if candidate > target else math.nextafter(target, math.inf)


def _to_rgb(frame: np.ndarray, shortest_edge: int | None) -> np.ndarray:
    if shortest_edge is not None and min(frame.shape[:2]) > shortest_edge:
        h, w = frame.shape[:2]
        scale = shortest_edge / min(h, w)
        frame = cv2.resize(
            frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
