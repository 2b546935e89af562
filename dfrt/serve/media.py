"""Turning a request's video reference into bytes on this machine, safely.

A reference is a ``data:`` URL or base64 data (decoded in memory, bounded by the request-size limit), a
local file (``file://`` URL or path) that must resolve inside one of the ``--media-path`` roots (no ``..``,
no symlink out: the resolved path is checked for containment), or an ``http(s)`` URL, fetched only with
``--allow-remote-media`` and then within a size and a time limit. Each becomes a :class:`Source` named by
the sha256 of its bytes, the key of the video cache; its bytes reach the decoder through a temporary file
that is removed afterwards. An image is a one-frame video.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfrt.serve.errors import ApiError
from dfrt.serve.schema import MediaRef

VIDEO_FORMATS = {  # format or MIME subtype -> file suffix the decoder recognises
    "mp4": ".mp4", "m4v": ".mp4", "quicktime": ".mov", "mov": ".mov", "webm": ".webm", "x-matroska": ".mkv",
    "mkv": ".mkv", "avi": ".avi", "x-msvideo": ".avi", "mpeg": ".mpg", "mp2t": ".ts", "ts": ".ts",
    "ogg": ".ogv", "3gpp": ".3gp", "gif": ".gif",
}  # fmt: skip
IMAGE_FORMATS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "gif": ".gif"}
_DATA_URL = re.compile(r"data:([\w.+-]+)/([\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.ASCII)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """A video's bytes (in memory, or a checked local file) and their sha256; ``image``: a one-frame video."""

    sha256: str
    suffix: str
    data: bytes | None = None
    path: Path | None = None
    image: bool = False

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else (self.path.stat().st_size if self.path else 0)


class MediaResolver:
    """Resolves :class:`MediaRef` s under the server's rules (media roots, remote policy, limits)."""

    def __init__(
        self,
        roots: Sequence[Path] = (),
        allow_remote: bool = False,
        max_bytes: int = 64 << 20,
        remote_timeout: float = 30.0,
        temp_dir: Path | None = None,
    ) -> None:
        self.roots = tuple(Path(r).resolve(strict=True) for r in roots)
        self.allow_remote = allow_remote
        self.max_bytes = max_bytes
        self.remote_timeout = remote_timeout
        self.temp_dir = temp_dir

    def resolve(self, ref: MediaRef) -> Source:
        """The bytes behind ``ref``; one :class:`ApiError` (400/403/404/413/415/422/504) if refused."""
        if ref.kind == "data":
            suffix = _suffix(ref.format or "mp4", ref.image, ref.param)
            return _memory(_b64(ref.value, ref.param), suffix, ref.image)
        url = ref.value
        if url.startswith("data:"):
            return self._data_url(url, ref)
        scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
        if scheme in ("http", "https"):
            return self._remote(url, ref)
        if scheme == "file":
            parts = urllib.parse.urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise ApiError(400, "a file:// URL must name a local path (file:///...)", ref.param)
            return self._local(urllib.parse.unquote(parts.path), ref)
        if scheme:
            raise ApiError(
                400,
                f"unsupported URL scheme {scheme[:20]!r}: use data:, file:, http(s): or a path",
                ref.param,
            )
        return self._local(url, ref)

    def _data_url(self, url: str, ref: MediaRef) -> Source:
        match = _DATA_URL.match(url[:256])
        if not match:
            raise ApiError(400, "malformed data URL: expected data:video/<format>;base64,<data>", ref.param)
        major, minor, _params, b64 = match.groups()
        if not b64:
            raise ApiError(400, "a data URL must be base64-encoded (data:video/mp4;base64,...)", ref.param)
        image = major.lower() == "image"
        if major.lower() not in ("video", "image") and (major.lower(), minor.lower()) != (
            "application",
            "octet-stream",
        ):
            raise ApiError(
                415,
                f"unsupported media type {major}/{minor}: send a video/* or image/*",
                ref.param,
                "unsupported_media_type",
            )
        suffix = ".mp4" if minor.lower() == "octet-stream" else _suffix(minor, image, ref.param)
        return _memory(_b64(url[match.end() :], ref.param), suffix, image)

    def _local(self, name: str, ref: MediaRef) -> Source:
        if not self.roots:
            raise ApiError(
                403,
                "local files are not served: start the server with --media-path DIR",
                ref.param,
                "media_path_disabled",
            )
        if "\0" in name or not name.strip():
            raise ApiError(400, "not a usable path", ref.param)
        candidate = Path(name)
        if ".." in candidate.parts:
            raise ApiError(403, "a media path may not contain '..'", ref.param, "outside_media_path")
        tries = [candidate] if candidate.is_absolute() else [root / candidate for root in self.roots]
        for path in tries:
            try:
                resolved = path.resolve(strict=True)
            except (OSError, RuntimeError):  # missing, a loop of links, unreadable
                continue
            root = next((r for r in self.roots if resolved.is_relative_to(r)), None)
            if root is None:
                raise ApiError(
                    403, "the path is outside the server's media roots", ref.param, "outside_media_path"
                )
            return _file(resolved, ref)
        raise ApiError(404, f"no such file under the media roots: {name[:200]}", ref.param, "media_not_found")

    def _remote(self, url: str, ref: MediaRef) -> Source:
        if not self.allow_remote:
            raise ApiError(
                403,
                "remote URLs are disabled on this server (start it with --allow-remote-media)",
                ref.param,
                "remote_media_disabled",
            )
        deadline = time.monotonic() + self.remote_timeout
        request = urllib.request.Request(url, headers={"User-Agent": "dfrt-serve"})
        try:
            with urllib.request.urlopen(request, timeout=self.remote_timeout) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise ApiError(
                        413,
                        f"the remote video is {int(length)} bytes, the limit is {self.max_bytes}",
                        ref.param,
                    )
                chunks, size = [], 0
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ApiError(
                            413, f"the remote video is over the limit of {self.max_bytes} bytes", ref.param
                        )
                    if time.monotonic() > deadline:
                        raise ApiError(
                            504, f"fetching the remote video took over {self.remote_timeout:g} s", ref.param
                        )
                    chunks.append(chunk)
                kind = (response.headers.get_content_type() or "").split("/")
        except ApiError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ApiError(400, f"the remote video could not be fetched ({_reason(e)})", ref.param) from None
        image = kind[0] == "image"
        suffix = IMAGE_FORMATS.get(kind[-1], ".jpg") if image else VIDEO_FORMATS.get(kind[-1], ".mp4")
        return _memory(b"".join(chunks), suffix, image)

    @contextlib.contextmanager
    def materialized(self, source: Source) -> Iterator[Path]:
        """A file the decoder can open holding ``source`` (a temporary one, removed afterwards)."""
        if source.path is not None and not source.image:
            yield source.path
            return
        with tempfile.TemporaryDirectory(prefix="dfrt-serve-", dir=self.temp_dir) as folder:
            data = source.data if source.data is not None else source.path.read_bytes()  # type: ignore[union-attr]
            path = Path(folder) / f"video{source.suffix}"
            if source.image:
                path = _image_video(data, Path(folder))
            else:
                path.write_bytes(data)
            yield path


def _b64(text: str, param: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the video data is not valid base64", param, "invalid_base64") from None


def _memory(data: bytes, suffix: str, image: bool) -> Source:
    if not data:
        raise ApiError(400, "the video is empty (0 bytes)")
    return Source(hashlib.sha256(data).hexdigest(), suffix, data=data, image=image)


def _file(path: Path, ref: MediaRef) -> Source:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ApiError(400, "the media path is not a regular file", ref.param)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise ApiError(404, f"the media file cannot be read ({e.strerror or e})", ref.param) from None
    suffix = path.suffix.lower() or ".mp4"
    image = ref.image or (suffix.lstrip(".") in IMAGE_FORMATS and suffix != ".gif")
    return Source(digest.hexdigest(), suffix, path=path, image=image)


def _suffix(fmt: str, image: bool, param: str) -> str:
    key = fmt.lower().rsplit("/", 1)[-1]
    table = IMAGE_FORMATS if image else VIDEO_FORMATS
    if key not in table:
        what = "image" if image else "video"
        known = ", ".join(sorted(table))
        raise ApiError(
            415, f"unsupported {what} format {fmt[:20]!r} (known: {known})", param, "unsupported_media_type"
        )
    return table[key]


def _image_video(data: bytes, folder: Path) -> Path:
    """An image as a one-frame mp4 (the decoder reads videos)."""
    import cv2
    import numpy as np

    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise ApiError(422, "the image cannot be decoded", "messages", "invalid_image")
    height, width = frame.shape[:2]
    if width * height > 1 << 26 or max(width, height) > 16384:
        raise ApiError(422, f"the image is {width}x{height} pixels: too large", "messages", "invalid_image")
    frame = frame[: height - height % 2, : width - width % 2] if min(width, height) > 1 else frame
    path = folder / "image.mp4"
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1.0, (frame.shape[1], frame.shape[0])
    )
    try:
        writer.write(frame)
    finally:
        writer.release()
    return path


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split())[:200]
