"""Where alert events go: stdout (JSON lines), an append-only event log with the key frames' thumbnails,
and hooks (:mod:`dfrt.live.hooks`), in that order, through one :class:`Dispatcher`.

The log (``dfrt watch --events DIR``)::

    DIR/.dfrt-events            marker: {"format": "dfrt-events", "version": 1} (dfrt's directory)
    DIR/.dfrt-events.lock       held (flock) by the one process writing the log
    DIR/events.jsonl            the current file: one JSON line per event, appended and fsync'd
    DIR/events-000001.jsonl     rotated files, oldest first (the current file is renamed at its size)
    DIR/thumbs/00000042-0.jpg   event 42's key frames, written (temp file, fsync, rename) before its line
    DIR/delivery.json           per webhook, the id of the last event it acknowledged

An event's line is written after its thumbnails and fsync'd before it is printed or handed to a hook, so
a logged event's thumbnails exist and an event a hook saw is in the log. A line cut by a crash (only the
last one can be) is removed when the log is opened again, with thumbnails no line names. The log never
writes over a user's file: DIR must be a new directory, an empty one or one this module made; a symbolic
link, a device, a file or a directory holding anything else is refused with one line. Its size is bounded
(``max_bytes``, log files and thumbnails together): the current file is rotated at an eighth of it and the
oldest rotated file goes (with its thumbnails) when the total is over, unless a webhook has not yet
acknowledged its events: those stay until twice the bound, then go with a warning (counted in ``dropped``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from dfrt.errors import ConfigError
from dfrt.fileio import (
    UnsafeOutputError,
    atomic_write_bytes,
    check_output_dir,
    leftover_pid,
    remove_dead_leftovers,
)

MARKER = ".dfrt-events"
LOCK = ".dfrt-events.lock"
CURRENT = "events.jsonl"
DELIVERY = "delivery.json"
THUMBS = "thumbs"
ROTATED = re.compile(r"events-(\d{6,})\.jsonl")
THUMB = re.compile(r"(\d{8,})-(\d+)\.jpg")
MARKER_TEXT = json.dumps({"format": "dfrt-events", "version": 1}) + "\n"
DEFAULT_MAX_BYTES = 64 << 20
SIZE_RANGE = (1 << 20, 1 << 40)  # 1 MiB .. 1 TiB
MAX_LINE = 1 << 20  # bytes of one event line read back (larger ones are not ours)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: object, name: str = "--events-size") -> int:
    """``"64MB"``, ``"1.5G"``, ``"512KiB"`` or a number of bytes -> bytes within :data:`SIZE_RANGE`."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigError(f"{name} must be a size like 64MB or 1GB, got {text!r}")
        value = int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " "))
    low, high = SIZE_RANGE
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from 1MB to 1TB, got {text!r}")
    return value


def _mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


def check_events_dir(path: str | Path) -> Path:
    """``path`` if an event log may live there (the module doc); else one-line :class:`UnsafeOutputError`.
    Creates nothing."""
    path = check_output_dir(Path(path), what="--events")
    mode = _mode(path)
    if mode is None:
        return path
    label = f"--events {path}"
    names = sorted(os.listdir(path))
    if not names:
        return path
    marker = path / MARKER
    marker_mode = _mode(marker)
    if marker_mode is None or not stat.S_ISREG(marker_mode):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UnsafeOutputError(
            f"{label} holds files dfrt did not write ({shown}): give a new or empty directory"
        )
    if marker.read_bytes()[:200] != MARKER_TEXT.encode():
        raise UnsafeOutputError(f"{label}: {MARKER} is not dfrt's marker: refusing to write into it")
    for name in names:
        kind = _mode(path / name)
        if name == THUMBS:
            if kind is None or not stat.S_ISDIR(kind):
                raise UnsafeOutputError(f"{label}: {THUMBS} is not a directory dfrt made")
            for thumb in os.listdir(path / THUMBS):
                thumb_mode = _mode(path / THUMBS / thumb)
                ours = THUMB.fullmatch(thumb) or leftover_pid(thumb) is not None
                if not ours or thumb_mode is None or not stat.S_ISREG(thumb_mode):
                    raise UnsafeOutputError(f"{label}: {THUMBS}/{thumb} is not a thumbnail dfrt wrote")
            continue
        ours = name in (MARKER, LOCK, CURRENT, DELIVERY) or ROTATED.fullmatch(name) or leftover_pid(name)
        if not ours:
            raise UnsafeOutputError(
                f"{label} holds {name}, which dfrt did not write: refusing to write into it"
            )
        if kind is None or not stat.S_ISREG(kind):
            raise UnsafeOutputError(f"{label}: {name} is not a regular file")
    return path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The events of one log file in order (a line that is not a JSON object is skipped)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if not line.endswith(b"\n") or len(line) > MAX_LINE:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    yield record


class EventLog:
    """The append-only event log in ``directory`` (the module doc); one writer at a time (a lock file)."""

    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.dir = check_events_dir(directory)
        self.max_bytes = parse_size(max_bytes)
        self.rotate_at = max(64 << 10, self.max_bytes // 8)
        self.dropped = 0  # undelivered events removed over twice the bound
        self._lock = threading.Lock()
        self.dir.mkdir(exist_ok=True)
        self.thumbs = self.dir / THUMBS
        self.thumbs.mkdir(exist_ok=True)
        self._lock_file = self._take_lock()
        try:
            if _mode(self.dir / MARKER) is None:
                atomic_write_bytes(self.dir / MARKER, MARKER_TEXT.encode())
            check_events_dir(self.dir)  # again, now that we hold the lock
            remove_dead_leftovers(self.dir)
            remove_dead_leftovers(self.thumbs)
            self._repair()
            self.last_id = self._last_id()
            self._remove_orphan_thumbnails()
            self._total = self._disk_bytes()
            self._current = self._current_bytes()
            self.delivered_marks: dict[str, int] = self._read_delivery()
            self.active: set[str] = set()  # webhooks of this run (an old URL's mark holds nothing back)
        except BaseException:
            self._lock_file.close()
            raise

    # -- opening ---------------------------------------------------------------------------------------
    def _take_lock(self) -> IO[bytes]:
        import fcntl

        path = self.dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UnsafeOutputError(
                f"--events {self.dir}: another dfrt process is writing this log"
            ) from None
        return handle

    def _repair(self) -> None:
        """Cut a last line a crash left without its newline."""
        path = self.dir / CURRENT
        if _mode(path) is None:
            return
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = size
            while keep > 0:
                step = min(keep, 1 << 16)
                f.seek(keep - step)
                chunk = f.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    keep = keep - step + cut + 1
                    break
                keep -= step
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def files(self) -> list[Path]:
        """The log's files, oldest first."""
        rotated = sorted(
            (int(m.group(1)), name) for name in os.listdir(self.dir) if (m := ROTATED.fullmatch(name))
        )
        return [self.dir / name for _, name in rotated] + [self.dir / CURRENT]

    def _last_id(self) -> int:
        for path in reversed(self.files()):
            ids = [r["id"] for r in read_lines(path) if isinstance(r.get("id"), int)]
            if ids:
                return max(ids)
        return 0

    def _remove_orphan_thumbnails(self) -> None:
        """Thumbnails written for an event whose line a crash cut (ids above the last logged one)."""
        for name in os.listdir(self.thumbs):
            match = THUMB.fullmatch(name)
            if match and int(match.group(1)) > self.last_id:
                (self.thumbs / name).unlink(missing_ok=True)

    def _disk_bytes(self) -> int:
        total = sum(p.stat().st_size for p in self.files() if p.exists())
        return total + sum(
            e.stat().st_size for e in os.scandir(self.thumbs) if e.is_file(follow_symlinks=False)
        )

    def _current_bytes(self) -> int:
        """The current file and the thumbnails of its events (what rotation moves out together)."""
        current = self.dir / CURRENT
        ids = [r["id"] for r in read_lines(current) if isinstance(r.get("id"), int)]
        if not ids:
            return current.stat().st_size if current.exists() else 0
        first = min(ids)
        thumbs = 0
        for entry in os.scandir(self.thumbs):
            match = THUMB.fullmatch(entry.name)
            if match and int(match.group(1)) >= first and entry.is_file(follow_symlinks=False):
                thumbs += entry.stat().st_size
        return current.stat().st_size + thumbs

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, record: dict[str, Any], thumbnails: list[bytes]) -> dict[str, Any]:
        """Give ``record`` the next id, write its thumbnails (``key_frames[i]["thumbnail"]``: a path relative
        to the directory) and its line, fsync'd; returns the record as logged."""
        with self._lock:
            record = dict(record, id=self.last_id + 1)
            frames = [dict(k) for k in record.get("key_frames", [])]
            for i, frame in enumerate(frames):
                data = thumbnails[i] if i < len(thumbnails) else b""
                frame["thumbnail"] = None
                if data:
                    name = f"{record['id']:08d}-{i}.jpg"
                    atomic_write_bytes(self.thumbs / name, data)
                    frame["thumbnail"] = f"{THUMBS}/{name}"
                    self._total += len(data)
                    self._current += len(data)
            record["key_frames"] = frames
            _fsync_dir(self.thumbs)
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
            current = self.dir / CURRENT
            if current.exists() and current.stat().st_size and self._current + len(line) > self.rotate_at:
                self._rotate()
                self._current = sum(len(t) for t in thumbnails)
            fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise UnsafeOutputError(f"{current} is not a regular file")
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.dir)
            self.last_id = record["id"]
            self._total += len(line)
            self._current += len(line)
            self._prune()
            return record

    def _rotate(self) -> None:
        rotated = [int(m.group(1)) for n in os.listdir(self.dir) if (m := ROTATED.fullmatch(n))]
        target = self.dir / f"events-{max(rotated, default=0) + 1:06d}.jsonl"
        if _mode(target) is not None:
            raise UnsafeOutputError(f"{target} exists: refusing to rotate over it")
        os.rename(self.dir / CURRENT, target)
        _fsync_dir(self.dir)

    def _prune(self) -> None:
        while self._total > self.max_bytes:
            rotated = self.files()[:-1]
            if not rotated:
                return
            oldest = rotated[0]
            ids = [r["id"] for r in read_lines(oldest) if isinstance(r.get("id"), int)]
            last = max(ids, default=0)
            marks = [v for k, v in self.delivered_marks.items() if k in self.active]
            undelivered = bool(marks) and min(marks) < last
            if undelivered and self._total <= 2 * self.max_bytes:
                return
            if undelivered:
                lost = sum(1 for i in ids if i > min(marks))
                self.dropped += lost
                print(
                    f"dfrt: warning: event log over twice --events-size: {lost} events a webhook has "
                    "not acknowledged were removed",
                    file=sys.stderr,
                )
            self._total -= oldest.stat().st_size
            oldest.unlink()
            for name in os.listdir(self.thumbs):
                match = THUMB.fullmatch(name)
                if match and int(match.group(1)) <= last:
                    with contextlib.suppress(OSError):
                        self._total -= (self.thumbs / name).stat().st_size
                        (self.thumbs / name).unlink()

    # -- reading and delivery marks ----------------------------------------------------------------------
    def read(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Logged events with ids above ``after``, oldest first (at most ``limit``)."""
        out: list[dict[str, Any]] = []
        for path in self.files():
            for record in read_lines(path):
                if isinstance(record.get("id"), int) and record["id"] > after:
                    out.append(record)
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    def thumbnail(self, relative: object) -> bytes:
        """A logged thumbnail's bytes (b"" when it is gone or the name is not one of ours)."""
        if not isinstance(relative, str) or not relative.startswith(f"{THUMBS}/"):
            return b""
        name = relative[len(THUMBS) + 1 :]
        if not THUMB.fullmatch(name):
            return b""
        try:
            fd = os.open(self.thumbs / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return b""
        with os.fdopen(fd, "rb") as f:
            return f.read(1 << 20)

    def _read_delivery(self) -> dict[str, int]:
        path = self.dir / DELIVERY
        if _mode(path) is None:
            return {}
        try:
            marks = json.loads(path.read_bytes()[: 1 << 20])
        except (OSError, ValueError):
            return {}
        if not isinstance(marks, dict):
            return {}
        return {str(k): v for k, v in marks.items() if isinstance(v, int) and not isinstance(v, bool)}

    def delivered(self, key: str) -> int | None:
        with self._lock:
            return self.delivered_marks.get(key)

    def mark_delivered(self, key: str, event_id: int) -> None:
        """Record (atomically, fsync'd) that webhook ``key`` acknowledged every event up to ``event_id``."""
        with self._lock:
            self.active.add(key)
            self.delivered_marks[key] = event_id
            atomic_write_bytes(self.dir / DELIVERY, json.dumps(self.delivered_marks).encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._lock_file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Dispatcher:
    """Sends each :class:`~dfrt.live.alerts.AlertEvent` to the log (first: it gives the id), stdout, then
    the hooks (``submit(record, thumbnails)`` each, never blocking)."""

    def __init__(
        self,
        log: EventLog | None = None,
        stdout: IO[str] | None = None,
        hooks: tuple[Any, ...] = (),
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.log = log
        self.stdout = stdout
        self.hooks = hooks
        self.progress = progress
        self._next_id = (log.last_id if log is not None else 0) + 1
        self.count = 0
        self.failures = 0  # events the log could not take

    def emit(self, event: Any) -> dict[str, Any]:
        record = event.to_dict()
        thumbnails = event.thumbnails
        logged = False
        if self.log is not None:
            try:
                record, logged = self.log.append(record, thumbnails), True
            except OSError as e:  # a full disk, say: the event still goes out, with a warning
                self.failures += 1
                self.progress(f"warning: event not logged in {self.log.dir}: {e.strerror or e}")
        if not logged:
            record["id"] = self._next_id
            record["key_frames"] = [dict(k, thumbnail=None) for k in record["key_frames"]]
        self._next_id = record["id"] + 1
        event.id = record["id"]
        self.count += 1
        if self.stdout is not None:
            self.stdout.write(json.dumps(record) + "\n")
            self.stdout.flush()
        for hook in self.hooks:
            hook.submit(record, thumbnails)
        return record

    def close(self) -> None:
        for hook in self.hooks:
            hook.close()
