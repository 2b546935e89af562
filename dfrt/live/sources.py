"""Live sources through OpenCV's FFmpeg backend: validated source strings, a reconnecting reader, a clock.

Source strings are untrusted. Accepted: a camera index (``0``) or ``/dev/videoN``; ``rtsp://``, ``rtsps://``,
``udp://``, ``rtp://``, ``http://``, ``https://`` URLs (MJPEG, HLS, MPEG-TS); a plain file path. Refused,
one :class:`~dfrt.errors.InputError` line each: any other scheme (``file:``, FFmpeg's ``concat:``,
``subfile:``, ``pipe:``, ``data:``, ...), control characters, URLs without a host, over-long strings, and
``%d``-style patterns in file paths (FFmpeg's image-sequence reader would expand them). File paths are
resolved to absolute paths, so a name like ``a:b.mp4`` never reaches FFmpeg as a protocol.

Timestamps come from the stream clock (``CAP_PROP_POS_MSEC``) while it is sane: finite, increasing and, for
live sources, within :data:`MAX_DRIFT` seconds of the arrival clock; otherwise the clock re-anchors on the
arrival time (:class:`StreamClock`). Times are seconds since the watcher started, monotonic across
reconnects.
"""

from __future__ import annotations

import math
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from dfrt.errors import InputError
from dfrt.runtime import options
from dfrt.runtime.native_log import silenced_native_stderr

NETWORK_SCHEMES = ("rtsp", "rtsps", "udp", "rtp", "http", "https")
MAX_SOURCE_LENGTH = 2048
MAX_CAMERA_INDEX = 63
RATE_CHECK = 3.0  # seconds of arrival before the stream clock's rate is checked
MAX_DRIFT = 5.0  # seconds the stream clock may run ahead of or behind the arrival clock (live sources)
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
FALLBACK_FPS = 25.0
# FFmpeg probes a network stream for 5 s by default before the first frame (and OpenCV's open timeout then
# fires): half a second is enough for MPEG-TS, RTSP and MJPEG. Set only while opening, and only when the
# user has not set OpenCV's variable.
CAPTURE_OPTIONS_VARIABLE = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
NETWORK_CAPTURE_OPTIONS = "analyzeduration;500000"
_environment = threading.Lock()

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_PATTERN = re.compile(r"%0*\d*d")
_DEVICE = re.compile(r"^/dev/video(\d{1,2})$")


@dataclass(frozen=True)
class Source:
    """A validated source: ``kind`` is ``camera``, ``network`` or ``file``; ``target`` what OpenCV opens."""

    kind: str
    target: str | int
    display: str  # printable, credentials hidden

    @property
    def live(self) -> bool:
        """Frames arrive in real time (not a file read as fast as it is encoded)."""
        return self.kind != "file"


def parse_source(value: object) -> Source:
    """Validate an untrusted source string (or camera index); one :class:`InputError` line if refused."""
    if isinstance(value, bool):
        raise InputError(f"source must be a camera index, URL or file path, got {value!r}")
    if isinstance(value, int):
        return _camera(value, str(value))
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"source must be a camera index, URL or file path, got {type(value).__name__}")
    text = value.strip()
    shown = options.display(text)[:200]
    if not text:
        raise InputError("source is empty")
    if len(text) > MAX_SOURCE_LENGTH:
        raise InputError(f"source {shown[:60]}...: longer than {MAX_SOURCE_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InputError(f"source {shown}: control characters are not allowed")
    if text.isdigit():
        return _camera(int(text), text)
    if match := _DEVICE.match(text):
        return _camera(int(match.group(1)), text)
    if match := _SCHEME.match(text):
        return _network(text, match.group(1).lower(), shown)
    return _file(text, shown)


def _camera(index: int, shown: str) -> Source:
    if not 0 <= index <= MAX_CAMERA_INDEX:
        raise InputError(f"camera {shown}: the index must be from 0 to {MAX_CAMERA_INDEX}")
    return Source("camera", index, f"camera {index}")


def _network(text: str, scheme: str, shown: str) -> Source:
    if scheme not in NETWORK_SCHEMES:
        raise InputError(
            f"source {shown}: scheme {scheme!r} is not allowed (use {', '.join(NETWORK_SCHEMES)}, a camera "
            "or a plain file path)"
        )
    if any(c.isspace() for c in text):
        raise InputError(f"source {shown}: a URL cannot contain spaces")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise InputError(f"source {shown}: not a valid URL ({e})") from None
    if not parts.hostname or not text[len(scheme) :].startswith("://"):
        raise InputError(f"source {shown}: a {scheme}:// URL needs a host")
    if port == 0:
        raise InputError(f"source {shown}: port 0 is not a port")
    netloc = parts.hostname + (f":{port}" if port else "")
    if parts.username or parts.password:
        netloc = "***@" + netloc  # never print credentials
    query = "?" + parts.query if parts.query else ""
    display = options.display(f"{scheme}://{netloc}{parts.path}{query}")[:200]
    return Source("network", text, display)


def _file(text: str, shown: str) -> Source:
    path = options.path("source", text)
    if _PATTERN.search(text):
        raise InputError(f"source {shown}: %d-style patterns are not allowed in file names")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"source not found: {shown}") from None
    except OSError as e:
        raise InputError(f"source {shown}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"source {shown} is not a file, a camera (/dev/videoN) or a URL")
    if info.st_size == 0:
        raise InputError(f"source {shown}: empty file (0 bytes)")
    return Source("file", str(path.resolve()), shown)


def open_capture(source: Source) -> cv2.VideoCapture | None:
    """Open ``source`` with bounded open and read timeouts; None when it cannot be opened (now)."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS]
    params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
    with silenced_native_stderr():
        if source.kind == "camera":
            capture = cv2.VideoCapture(int(source.target), cv2.CAP_ANY)
        elif source.kind == "file":
            capture = cv2.VideoCapture(str(source.target), cv2.CAP_FFMPEG, params)
        else:
            with _environment:
                ours = CAPTURE_OPTIONS_VARIABLE not in os.environ
                if ours:
                    os.environ[CAPTURE_OPTIONS_VARIABLE] = NETWORK_CAPTURE_OPTIONS
                try:
                    capture = cv2.VideoCapture(str(source.target), cv2.CAP_FFMPEG, params)
                finally:
                    if ours:
                        os.environ.pop(CAPTURE_OPTIONS_VARIABLE, None)
    if not capture.isOpened():
        capture.release()
        return None
    width, height = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
    try:
        options.frame_size(width, height, source.display)
    except InputError:
        capture.release()
        raise
    return capture


def reported_fps(capture: cv2.VideoCapture) -> float:
    """The stream's frame rate as its container reports it; 0 when missing or implausible."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    return fps if math.isfinite(fps) and 0 < fps <= 1000 else 0.0


def to_rgb(frame: np.ndarray, shortest_edge: int) -> np.ndarray:
    """A decoded BGR frame -> RGB with its shortest edge at most ``shortest_edge`` (area filter)."""
    h, w = frame.shape[:2]
    scale = shortest_edge / min(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class StreamClock:
    """Seconds since ``origin`` (a ``time.monotonic()`` value) for each frame, from the stream's own clock
    while it is sane, else from the arrival time; always increasing, also across reconnects.

    Live sources: the stream clock is dropped for the rest of a connection once it strays more than
    :data:`MAX_DRIFT` seconds from the arrival clock, or runs at under half or over twice its rate after
    :data:`RATE_CHECK` seconds (MJPEG over HTTP has no timestamps: FFmpeg counts frames at a guessed rate).
    Files read at the encoder's pace use the stream clock alone (frame counting where it is missing).
    """

    def __init__(self, origin: float, live: bool, fallback_fps: float = FALLBACK_FPS) -> None:
        self.origin = origin
        self.live = live
        self.fallback_fps = fallback_fps
        self.last = -math.inf
        self.stream_frames = 0  # frames timed by the stream clock
        self.arrival_frames = 0  # frames timed by arrival (or counting, for files)
        self._anchor: tuple[float, float] | None = None  # (stream seconds, our seconds) at the last anchor
        self._previous_pts = -math.inf
        self._trusted = True

    def reset(self) -> None:
        """A new connection: its stream clock starts over and is trusted again."""
        self._anchor = None
        self._previous_pts = -math.inf
        self._trusted = True

    def stamp(self, pos_msec: float, arrival: float) -> float:
        """The time of a frame whose stream position is ``pos_msec`` and that arrived at ``arrival``."""
        pts = pos_msec / 1000.0
        now = arrival - self.origin
        sane = self._trusted and math.isfinite(pts) and pts > self._previous_pts
        sane = sane and not (self._anchor is not None and pts == 0.0)
        t = now
        if sane and self._anchor is not None:
            t = self._anchor[1] + (pts - self._anchor[0])
            if self.live and self._strays(t, now, pts):
                self._trusted = sane = False
        if self.live and not self._trusted:
            t = now
        elif not sane or self._anchor is None:
            if self.live:
                t = max(now, self.last + 1e-3)
            elif self.last == -math.inf:
                t = 0.0
            else:
                t = self.last + 1.0 / self.fallback_fps  # a file without a usable clock: count frames
            self._anchor = (pts, t) if math.isfinite(pts) else None
        if sane:
            self.stream_frames += 1
            self._previous_pts = pts
        else:
            self.arrival_frames += 1
        t = max(t, self.last + 1e-6)
        self.last = t
        return t

    def _strays(self, t: float, now: float, pts: float) -> bool:
        assert self._anchor is not None
        if abs(t - now) > MAX_DRIFT:
            return True
        arrived = now - self._anchor[1]
        return arrived > RATE_CHECK and not 0.5 <= (pts - self._anchor[0]) / arrived <= 2.0
