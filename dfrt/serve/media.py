"""Turning a request's video reference into bytes on this machine, safely.

A reference is a ``data:`` URL or base64 data (decoded in memory, bounded by the request-size limit; the
scheme, media type and ``base64`` are case-insensitive), a local file (``file://`` URL or path) inside one of
the ``--media-path`` roots, or an ``http(s)`` URL, fetched only with ``--allow-remote-media`` and then within
a size and a time limit. Each becomes a :class:`Source` named by the sha256 of its bytes, the key of the
video cache; its bytes reach the decoder through a temporary file that is removed afterwards. An image is a
one-frame video, its size read from its header before any pixel is decoded; a video's size, frame count and
duration are read from its container before the pipeline decodes it (:mod:`dfrt.serve.media_headers`).

Every read is bounded before it is done: a local file by ``--max-media-mb`` (its size from ``fstat``, and
never more bytes than that read) and by the request's deadline (checked between chunks); a remote one by
``--max-body-mb`` and one deadline for the whole fetch, never to a private address unless
``--allow-private-media`` (:mod:`dfrt.serve.remote_media`).

Local files are opened, not resolved: each root is opened as a directory descriptor when the server starts,
and a path is walked from it one component at a time (``openat`` with ``O_NOFOLLOW``), so no ``..`` and no
symbolic link is ever followed, and a folder swapped for a link while a request waits changes nothing: the
decoder reads the very file that was checked and hashed (through ``/proc/self/fd``, or a copy where there is
no ``/proc``).

The cache is keyed by the bytes that are decoded: a local file is copied, while it is hashed, from its one
descriptor into a private, unlinked temporary file, and the decoder reads that copy; rewriting the file in
place after the check cannot plant one video's features under another's hash. Temporary folders carry the
server's pid (``dfrt-serve-<pid>-*``): a killed server's are removed when the next one starts
(:func:`remove_dead_leftovers`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfrt.serve.errors import ApiError, shown
from dfrt.serve.media_headers import check_video_header, image_size
from dfrt.serve.remote_media import fetch
from dfrt.serve.schema import MediaRef

VIDEO_FORMATS = {  # format or MIME subtype -> file suffix the decoder recognises
    "mp4": ".mp4", "m4v": ".mp4", "quicktime": ".mov", "mov": ".mov", "webm": ".webm", "x-matroska": ".mkv",
    "mkv": ".mkv", "avi": ".avi", "x-msvideo": ".avi", "mpeg": ".mpg", "mp2t": ".ts", "ts": ".ts",
    "ogg": ".ogv", "3gpp": ".3gp", "gif": ".gif",
}  # fmt: skip
IMAGE_FORMATS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "gif": ".gif"}
# data:TYPE/SUBTYPE[;param]...[;base64], : RFC 2397; the scheme, type and "base64" are case-insensitive
_DATA_URL = re.compile(r"data:([\w.+-]+)/([\w.+-]+)((?:;[^;,]*)*),", re.ASCII | re.IGNORECASE)
_CHUNK = 1 << 20
TEMP_PREFIX = "dfrt-serve-"  # + "<pid>-<random>": a server's temporary folders
_LEFTOVER = re.compile(r"dfrt-serve-(?P<pid>\d+)-[a-z0-9_]{8}")
MIN_IMAGE_SIDE = 2  # an image's smaller side is scaled up to this (the video encoder needs even sides)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_WALK_FLAGS = _DIR_FLAGS | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class OpenFile:
    """A descriptor of a checked media file, held from the check to the decoder; closed once."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # a request dropped before its work ran
        with contextlib.suppress(OSError):
            self.close()


@dataclass(frozen=True)
class _Root:
    """A media root: its descriptor (opened at start), its resolved path and the path as given."""

    fd: int
    path: Path
    given: Path


@dataclass(frozen=True)
class Source:
    """A video's bytes (in memory, or an open local file) and their sha256; ``image``: a one-frame video.
    :meth:`close` releases the file (the engine does, when the request's work is over)."""

    sha256: str
    suffix: str
    data: bytes | None = None
    file: OpenFile | None = None
    image: bool = False

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        return os.fstat(self.file.fd).st_size if self.file and self.file.fd is not None else 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class MediaResolver:
    """Resolves :class:`MediaRef` s under the server's rules (media roots, remote policy, limits)."""

    def __init__(
        self,
        roots: Sequence[Path] = (),
        allow_remote: bool = False,
        max_bytes: int = 64 << 20,
        remote_timeout: float = 30.0,
        temp_dir: Path | None = None,
        max_local_bytes: int = 2 << 30,
        allow_private: bool = False,
    ) -> None:
        """``max_bytes``: the most a remote video may be; ``max_local_bytes``: a local one;
        ``allow_private``: remote URLs may reach loopback, link-local and private addresses."""
        self.roots: tuple[_Root, ...] = ()
        for root in roots:  # opened now: what a root is cannot change under a queued request
            path = Path(root).resolve(strict=True)
            self.roots += (_Root(os.open(path, _DIR_FLAGS), path, Path(os.path.abspath(root))),)
        self.allow_remote = allow_remote
        self.max_bytes = max_bytes
        self.remote_timeout = remote_timeout
        self.temp_dir = temp_dir
        self.max_local_bytes = max_local_bytes
        self.allow_private = allow_private

    def close(self) -> None:
        """Close the roots' descriptors (idempotent)."""
        roots, self.roots = self.roots, ()
        for root in roots:
            with contextlib.suppress(OSError):
                os.close(root.fd)

    def resolve(self, ref: MediaRef, deadline: float | None = None) -> Source:
        """The bytes behind ``ref``, read by ``deadline`` (``time.monotonic()``; None: no limit but the
        remote timeout); one :class:`ApiError` (400/403/404/413/415/422/504) if refused."""
        if ref.kind == "data":
            suffix = _suffix(ref.format or "mp4", ref.image, ref.param)
            return _memory(_b64(ref.value, ref.param), suffix, ref.image)
        url = ref.value
        if url[:5].lower() == "data:":
            return self._data_url(url, ref)
        scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
        if scheme in ("http", "https"):
            return self._remote(url, ref, deadline)
        if scheme == "file":
            parts = urllib.parse.urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise ApiError(400, "a file:// URL must name a local path (file:///...)", ref.param)
            return self._local(urllib.parse.unquote(parts.path), ref, deadline)
        if scheme:
            raise ApiError(
                400,
                f"unsupported URL scheme {scheme[:20]!r}: use data:, file:, http(s): or a path",
                ref.param,
            )
        return self._local(url, ref, deadline)

    def _data_url(self, url: str, ref: MediaRef) -> Source:
        match = _DATA_URL.match(url[:512])
        if not match:
            raise ApiError(400, "malformed data URL: expected data:video/<format>;base64,<data>", ref.param)
        major, minor, params = match.group(1).lower(), match.group(2).lower(), match.group(3)
        if params.rsplit(";", 1)[-1].strip().lower() != "base64":
            raise ApiError(400, "a data URL must be base64-encoded (data:video/mp4;base64,...)", ref.param)
        image = major == "image"
        if major not in ("video", "image") and (major, minor) != ("application", "octet-stream"):
            raise ApiError(
                415,
                f"unsupported media type {major}/{minor}: send a video/* or image/*",
                ref.param,
                "unsupported_media_type",
            )
        suffix = ".mp4" if minor == "octet-stream" else _suffix(minor, image, ref.param)
        return _memory(_b64(url[match.end() :], ref.param), suffix, image)

    def _local(self, name: str, ref: MediaRef, deadline: float | None) -> Source:
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
        if candidate.is_absolute():  # inside a root as written: links are never resolved to get there
            tries = [
                (root, candidate.relative_to(base))
                for root in self.roots
                for base in dict.fromkeys((root.path, root.given))
                if candidate.is_relative_to(base) and candidate != base
            ]
            if not tries:
                raise ApiError(
                    403, "the path is outside the server's media roots", ref.param, "outside_media_path"
                )
        else:
            tries = [(root, candidate) for root in self.roots]
        for root, relative in tries:
            fd = _open_under(root.fd, relative.parts, ref)
            if fd is not None:
                return self._copy(fd, relative.suffix.lower() or ".mp4", ref, deadline)
        message = f"no such file under the media roots: {shown(name)}"
        raise ApiError(404, message, ref.param, "media_not_found")

    def _remote(self, url: str, ref: MediaRef, deadline: float | None) -> Source:
        if not self.allow_remote:
            raise ApiError(
                403,
                "remote URLs are disabled on this server (start it with --allow-remote-media)",
                ref.param,
                "remote_media_disabled",
            )
        end = time.monotonic() + self.remote_timeout
        end = end if deadline is None else min(end, deadline)
        data, kind = fetch(url, ref, end, self.max_bytes, self.allow_private, self.remote_timeout)
        image = kind[0] == "image"
        suffix = IMAGE_FORMATS.get(kind[-1], ".jpg") if image else VIDEO_FORMATS.get(kind[-1], ".mp4")
        return _memory(data, suffix, image)

    def _copy(self, fd: int, suffix: str, ref: MediaRef, deadline: float | None) -> Source:
        """A :class:`Source` of the regular file ``fd`` (closed here): at most ``max_local_bytes`` copied by
        ``deadline`` into a private unlinked file while hashed; the decoder reads the copy."""
        try:
            size = os.fstat(fd).st_size
            if size > self.max_local_bytes:
                message = (
                    f"the media file is {size} bytes, the limit is {self.max_local_bytes} (--max-media-mb)"
                )
                raise ApiError(413, message, ref.param, "media_too_large")
            copy = _private_file(self.temp_dir)
        except OSError as e:
            os.close(fd)
            raise ApiError(404, f"the media file cannot be read ({e.strerror or e})", ref.param) from None
        except BaseException:
            os.close(fd)
            raise
        handle = OpenFile(copy)
        try:
            digest, copied = hashlib.sha256(), 0
            for chunk in _chunks(fd, self.max_local_bytes + 1):
                copied += len(chunk)
                if copied > self.max_local_bytes:  # grown since fstat
                    message = (
                        f"the media file is over the limit of {self.max_local_bytes} bytes (--max-media-mb)"
                    )
                    raise ApiError(413, message, ref.param, "media_too_large")
                if deadline is not None and time.monotonic() > deadline:
                    raise ApiError(504, "reading the media file took longer than the request's --timeout",
                                   ref.param, "timeout")  # fmt: skip
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(copy, view) :]
        except OSError as e:
            handle.close()
            raise ApiError(404, f"the media file cannot be read ({e.strerror or e})", ref.param) from None
        except BaseException:
            handle.close()
            raise
        finally:
            os.close(fd)
        if copied == 0:
            handle.close()
            raise ApiError(400, "the video is empty (0 bytes)", ref.param)
        image = ref.image or (suffix.lstrip(".") in IMAGE_FORMATS and suffix != ".gif")
        return Source(digest.hexdigest(), suffix, file=handle, image=image)

    @contextlib.contextmanager
    def materialized(self, source: Source) -> Iterator[Path]:
        """A path the decoder can open holding ``source``'s bytes, in a temporary folder removed afterwards:
        the bytes written there, or for a local file a link to its open descriptor (``/proc/self/fd/N``:
        the file that was checked, wherever its name now points)."""
        with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=self.temp_dir) as folder:
            path = Path(folder) / f"video{source.suffix}"
            fd = source.file.fd if source.file is not None else None
            if source.data is None and fd is None:
                raise ApiError(500, "the media file was closed before it was decoded", code="internal_error")
            if source.image:
                if fd is not None and os.fstat(fd).st_size > self.max_bytes:
                    raise ApiError(413, f"the image is over the limit of {self.max_bytes} bytes", "messages")
                path = _image_video(source.data if fd is None else _read_all(fd), Path(folder))
            elif fd is None:
                path.write_bytes(source.data)  # type: ignore[arg-type]
            elif _same_file(Path(f"/proc/self/fd/{fd}"), fd):
                path.symlink_to(f"/proc/self/fd/{fd}")
            else:  # no /proc: a copy of the open file
                with open(path, "wb") as out:
                    for chunk in _chunks(fd):
                        out.write(chunk)
            if not source.image:
                check_video_header(path)
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


def _open_under(root: int, parts: tuple[str, ...], ref: MediaRef) -> int | None:
    """The descriptor of ``parts`` under the directory ``root``, walked one component at a time without
    following links; None when it does not exist there; :class:`ApiError` for a link or what is not a
    regular file."""
    if not parts:
        return None
    where, opened = root, []
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                info = os.stat(part, dir_fd=where, follow_symlinks=False)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                    return None
                raise ApiError(404, f"the media file cannot be read ({e.strerror or e})", ref.param) from None
            if stat.S_ISLNK(info.st_mode):
                raise ApiError(
                    403, "the media path goes through a symbolic link: links are not followed", ref.param,
                    "outside_media_path",
                )  # fmt: skip
            if last and not stat.S_ISREG(info.st_mode):
                raise ApiError(400, "the media path is not a regular file", ref.param)
            if not last and not stat.S_ISDIR(info.st_mode):
                return None
            try:
                fd = os.open(part, _FILE_FLAGS if last else _WALK_FLAGS, dir_fd=where)
            except OSError as e:  # replaced by a link (ELOOP) or removed since the stat
                if e.errno == errno.ELOOP:
                    raise ApiError(
                        403, "the media path goes through a symbolic link: links are not followed",
                        ref.param, "outside_media_path",
                    ) from None  # fmt: skip
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    return None
                raise ApiError(404, f"the media file cannot be read ({e.strerror or e})", ref.param) from None
            if last:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise ApiError(400, "the media path is not a regular file", ref.param)
                return fd
            opened.append(fd)
            where = fd
    finally:
        for fd in opened:
            os.close(fd)
    return None


def _chunks(fd: int, limit: int | None = None) -> Iterator[bytes]:
    """The file's bytes from offset 0 in chunks, at most ``limit`` of them."""
    offset = 0
    while chunk := os.pread(fd, _CHUNK if limit is None else min(_CHUNK, limit - offset), offset):
        offset += len(chunk)
        yield chunk
        if limit is not None and offset >= limit:
            return


def _read_all(fd: int) -> bytes:
    return b"".join(_chunks(fd))


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = path.stat(), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
    """An image as a one-frame mp4 (the decoder reads videos). A tiny one (1x1, 1xN) is scaled up to even
    sides of at least :data:`MIN_IMAGE_SIDE` (nearest neighbour: its pixels kept); one too large or too
    elongated for the model is refused with its size, before any resize."""
    import cv2
    import numpy as np

    from dfrt.errors import InputError
    from dfrt.runtime import options

    header = image_size(data)
    if header is None:
        raise ApiError(422, "the image cannot be decoded (not a JPEG, PNG, WebP, BMP or GIF)", "messages",
                       "invalid_image")  # fmt: skip
    try:  # from the header, before any pixel is decoded (a 3 MB PNG can declare 32000x32000)
        options.frame_size(max(header[1], 1), max(header[2], 1), "the image")
    except InputError as e:
        raise ApiError(422, str(e), "messages", "invalid_image") from None
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise ApiError(422, "the image cannot be decoded", "messages", "invalid_image")
    height, width = frame.shape[:2]
    try:
        options.frame_size(width, height, "the image")
    except InputError as e:
        raise ApiError(422, str(e), "messages", "invalid_image") from None
    if min(width, height) < MIN_IMAGE_SIDE:  # scaled up: the smaller side to MIN_IMAGE_SIDE
        scale = MIN_IMAGE_SIDE / min(width, height)
        size = (max(MIN_IMAGE_SIDE, round(width * scale)), max(MIN_IMAGE_SIDE, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST)
        height, width = frame.shape[:2]
    frame = frame[: height - height % 2, : width - width % 2]  # mp4v wants even sides
    path = folder / "image.mp4"
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1.0, (frame.shape[1], frame.shape[0])
    )
    try:
        if writer.isOpened():
            writer.write(np.ascontiguousarray(frame))
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise ApiError(
            422, f"the image ({width}x{height} pixels) cannot be made into a one-frame video", "messages",
            "invalid_image",
        )  # fmt: skip
    return path


def _private_file(folder: Path | None) -> int:
    """A new empty file no other process can name (unlinked at once; ``O_TMPFILE`` where there is one)."""
    with tempfile.TemporaryFile(dir=folder, prefix=TEMP_PREFIX) as handle:
        return os.dup(handle.fileno())


def remove_dead_leftovers(folder: Path | None = None) -> list[str]:
    """Remove the temporary folders (``dfrt-serve-<pid>-*``) of servers that no longer run (a killed one's
    copies of uploaded videos); returns their names. Live servers' folders and other names are kept."""
    from dfrt.fileio import pid_alive

    where = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        match = _LEFTOVER.fullmatch(entry.name)
        if match is None or int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or (uid is not None and info.st_uid != uid):
                continue
            shutil.rmtree(entry.path)
            removed.append(entry.name)
        except OSError:
            continue
    return removed
