"""Sizes from headers before any pixel is decoded: an image's format and size, a video container's frame
size, frame count and duration (limits a request's media must keep)."""

from __future__ import annotations

import struct
from pathlib import Path

from dfrt.serve.errors import ApiError

MAX_VIDEO_SECONDS = 6 * 3600.0  # a container declaring more is refused before decoding
MAX_VIDEO_FRAMES = 2_000_000  # frames a container may declare (6 h at 90 fps)


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from an image's header (PNG, JPEG, GIF, BMP, WebP), None if it is none of them
    or its header is damaged; no pixel is decoded."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return ("png", *struct.unpack(">II", data[16:24]))
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return ("gif", *struct.unpack("<HH", data[6:10]))
        if data[:2] == b"BM":
            header = struct.unpack("<I", data[14:18])[0]
            if header == 12:
                return ("bmp", *struct.unpack("<HH", data[18:22]))
            width, height = struct.unpack("<ii", data[18:26])
            return ("bmp", abs(width), abs(height))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                width, height = struct.unpack("<HH", data[26:30])
                return ("webp", width & 0x3FFF, height & 0x3FFF)
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return ("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            if chunk == b"VP8X":
                return (
                    "webp",
                    int.from_bytes(data[24:27], "little") + 1,
                    int.from_bytes(data[27:30], "little") + 1,
                )
            return None
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return ("jpeg", width, height)
        if length < 2:
            return None
        i += 2 + length
    return None


def check_video_header(path: Path) -> None:
    """A video's frame size, frame count and duration from its container, before the pipeline decodes a
    frame: over the limits (:func:`dfrt.runtime.options.frame_size`, :data:`MAX_VIDEO_FRAMES`,
    :data:`MAX_VIDEO_SECONDS`) is a 422. Values the container does not give are checked while decoding."""
    import math

    import cv2

    from dfrt.errors import InputError
    from dfrt.runtime import options
    from dfrt.runtime.native_log import silenced_native_stderr

    with silenced_native_stderr():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            return  # the pipeline's own decode gives the error
        width, height = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
        frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    try:
        options.frame_size(width, height, "the video")
    except InputError as e:
        raise ApiError(422, str(e), "messages", "invalid_video") from None
    if math.isfinite(frames) and frames > MAX_VIDEO_FRAMES:
        message = f"the video declares {int(frames)} frames, at most {MAX_VIDEO_FRAMES} are decoded"
        raise ApiError(422, message, "messages", "invalid_video")
    if math.isfinite(frames) and math.isfinite(fps) and 0 < fps <= 1000 and frames / fps > MAX_VIDEO_SECONDS:
        message = f"the video lasts {frames / fps:.0f} s, at most {MAX_VIDEO_SECONDS:.0f} s are decoded"
        raise ApiError(422, message, "messages", "invalid_video")
