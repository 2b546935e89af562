"""The batch's files: the untrusted questions file, video paths kept inside VIDEOS, the append-only output.

Questions: UTF-8 JSON Lines, at most :data:`MAX_LINES` lines of at most :data:`MAX_LINE_BYTES` bytes, each
an object ``{"video": PATH, "question": TEXT}`` with an optional ``"id"`` (text or integer), parsed by the
bounded reader (:func:`dfrt.jsonio.parse_json`); other keys are ignored, blank lines skipped. A line that
cannot be used becomes an error :class:`Job`; only an unreadable file or too many lines refuse the whole file.
``PATH`` is relative to VIDEOS and must stay inside it: no absolute path, no ``..``, no symbolic link out.

Output: JSON Lines appended under an exclusive lock, each row written whole then ``fsync``-ed, so a killed
run leaves whole rows and at most one torn last line, which :func:`open_output` drops. A row's key
(:func:`row_key`) is its id, else its (video, question), else its line number: rows already in the output are
not answered again. stdlib only.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dfrt.errors import ConfigError, DfrtError, InputError
from dfrt.fileio import check_output_path
from dfrt.jsonio import parse_json
from dfrt.runtime import options

log = logging.getLogger(__name__)

MAX_LINES = 100_000  # questions per file
MAX_FILE_BYTES = 256 << 20  # the questions file (100,000 lines of a few hundred bytes are ~50 MiB)
READ_SECONDS = 60.0  # reading the questions file (a slow or stalled file system ends it)
MAX_LINE_BYTES = 16 * 1024  # one question line; a question is a sentence, not a document
MAX_ID_CHARS = 200
MAX_ROW_BYTES = 1 << 20  # one output row read back on resume (rows are a few KiB)

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Job:
    """One input line: its row's input fields (``line``, and ``id``/``video``/``question`` when usable), the
    video inside VIDEOS it asks about, or why it cannot be answered."""

    fields: dict[str, Any]
    path: Path | None = None
    error: str | None = None

    @property
    def key(self) -> Key:
        return row_key(self.fields)

    @property
    def question(self) -> str:
        return str(self.fields["question"])


def row_key(row: Mapping[str, Any]) -> Key:
    """What makes a row the answer to an input line: ``id``, else (``video``, ``question``), else ``line``.
    A line whose id was unusable (``bad_id``) is its line: a later valid line of the same pair is another."""
    if "duplicate_of" in row or row.get("bad_id") is True:
        return ("line", row.get("line"))
    if "id" in row:
        return ("id", row["id"])
    video, question = row.get("video"), row.get("question")
    if isinstance(video, str) and isinstance(question, str):
        return ("pair", video, question)
    return ("line", row.get("line"))


def videos_root(videos: Path) -> Path:
    """VIDEOS resolved: an existing directory (:class:`InputError` otherwise)."""
    videos = options.path("VIDEOS", videos)
    if not videos.is_dir():
        raise InputError(f"VIDEOS {options.display(videos)}: not a directory")
    return videos.resolve(strict=True)


def read_jobs(questions: Path, root: Path) -> list[Job]:
    """Every non-blank line of ``questions`` as a :class:`Job` (videos resolved inside ``root``)."""
    jobs: list[Job] = []
    seen: dict[Key, int] = {}
    for number, raw in numbered_lines(questions):
        if raw is not None and not raw.strip():
            continue
        job = parse_job(number, raw, root)
        if job.error is None and job.key in seen:
            fields = {**job.fields, "duplicate_of": seen[job.key]}
            job = Job(fields, error=f"duplicate of line {seen[job.key]}")
        seen.setdefault(job.key, number)
        jobs.append(job)
    return jobs


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of an untrusted JSON Lines file, read bounded; None for a line over
    :data:`MAX_LINE_BYTES` (its rest is skipped). Also ``dfrt eval --dataset``'s reader."""
    path = options.path("QUESTIONS", path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(f"QUESTIONS {path}: unreadable ({e.strerror or e})") from e
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"QUESTIONS {path}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:  # a 64 GiB sparse file is refused unread
            raise InputError(f"QUESTIONS {path}: {info.st_size} bytes, over the limit of {MAX_FILE_BYTES}")
        number, read, deadline = 0, 0, time.monotonic() + READ_SECONDS
        while line := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            read += len(line)
            if number > MAX_LINES:
                raise InputError(f"QUESTIONS {path}: more than {MAX_LINES} lines; split the file")
            if len(line) > MAX_LINE_BYTES:
                while line and not line.endswith(b"\n"):
                    line = handle.readline(1 << 16)
                    read += len(line)
                    _check_reading(path, read, deadline)
                yield number, None
            else:
                _check_reading(path, read, deadline)
                yield number, line


def _check_reading(path: Path, read: int, deadline: float) -> None:
    if read > MAX_FILE_BYTES:  # grown since it was opened
        raise InputError(f"QUESTIONS {path}: over the limit of {MAX_FILE_BYTES} bytes")
    if time.monotonic() > deadline:
        raise InputError(f"QUESTIONS {path}: not read within {READ_SECONDS:g} s")


def parse_job(number: int, raw: bytes | None, root: Path) -> Job:
    """One line of a questions file as a :class:`Job` (its fields, the video inside ``root``), or an error
    job naming what is wrong with it."""
    fields: dict[str, Any] = {"line": number}
    if raw is None:
        return Job(fields, error=f"line {number}: longer than {MAX_LINE_BYTES} bytes")
    try:
        item = parse_json(raw.decode("utf-8"), f"line {number}")
    except UnicodeDecodeError as e:
        return Job(fields, error=f"line {number}: not UTF-8 text ({e.reason} at byte {e.start})")
    except ConfigError as e:
        return Job(fields, error=str(e))
    if not isinstance(item, dict):
        return Job(fields, error=f"line {number}: not a JSON object")
    ident, video, question = item.get("id"), item.get("video"), item.get("question")
    errors = []
    if "id" in item:
        if (isinstance(ident, str) and 0 < len(ident) <= MAX_ID_CHARS) or (
            isinstance(ident, int) and not isinstance(ident, bool)
        ):
            fields["id"] = ident
        else:
            fields["bad_id"] = True  # keyed by its line, never by its (video, question)
            errors.append(f"id must be text of 1 to {MAX_ID_CHARS} characters or an integer")
    if isinstance(video, str) and video:
        fields["video"] = video
    else:
        errors.append('"video" must be a path relative to VIDEOS')
    if isinstance(question, str):
        fields["question"] = question
        if not question.strip():
            errors.append("the question is empty")
    else:
        errors.append('"question" must be text')
    if errors:
        return Job(fields, error=f"line {number}: " + "; ".join(errors))
    try:
        return Job(fields, path=resolve_video(root, video))
    except InputError as e:
        return Job(fields, error=f"line {number}: {e}")


def resolve_video(root: Path, name: str) -> Path:
    """``root / name`` resolved, if it is a regular file inside ``root``; else :class:`InputError`."""
    shown = options.display(name)
    options.path("video", name)  # NUL bytes
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise InputError(f"video {shown}: absolute paths are refused; give a path relative to VIDEOS")
    if ".." in parts:
        raise InputError(f"video {shown}: '..' is refused; the video must be inside VIDEOS")
    try:
        resolved = (root / name).resolve(strict=True)
    except FileNotFoundError:
        raise InputError(f"video {shown}: no such file in VIDEOS") from None
    except (OSError, RuntimeError) as e:  # a symbolic link loop
        raise InputError(f"video {shown}: cannot be resolved ({e})") from None
    if not resolved.is_relative_to(root):
        raise InputError(f"video {shown}: a symbolic link out of VIDEOS is refused")
    if not resolved.is_file():
        raise InputError(f"video {shown}: not a regular file")
    return resolved


@dataclass
class Output:
    """The output file, open for appending under an exclusive lock, and the keys of the rows it holds."""

    path: Path
    fd: int
    done: set[Key] = field(default_factory=set)
    rows: int = 0
    torn: bool = False  # a torn last line was dropped

    def append(self, row: Mapping[str, Any]) -> None:
        """Write ``row`` as one whole line and ``fsync`` it (``ValueError`` for a non-finite number)."""
        text = json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(self.fd, data) :]
        os.fsync(self.fd)
        self.done.add(row_key(row))
        self.rows += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


def open_output(path: Path, inputs: Iterable[Path] = (), protected: Iterable[Path] = ()) -> Output:
    """Open (or create) ``path`` for appending, locked against a second batch; read the rows it holds.

    A torn last line (no newline: a killed run) is cut off. Anything else that is not a batch row refuses the
    file (:class:`ConfigError`): dfrt appends only to its own output.
    """
    path = check_output_path(path, what="--out", inputs=inputs, protected_dirs=protected)
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)
    output = Output(path, fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"--out {path}: not a regular file")
        _lock(fd, path)
        _read_rows(output)
    except BaseException:
        output.close()
        raise
    return output


def _lock(fd: int, path: Path) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise ConfigError(f"--out {path}: another dfrt batch is writing it") from e
        raise


def _read_rows(output: Output) -> None:
    path, end = output.path, 0  # end: the offset after the last whole line
    with os.fdopen(os.dup(output.fd), "rb") as handle:
        handle.seek(0)
        number = 0
        while line := handle.readline(MAX_ROW_BYTES + 1):
            number += 1
            if not line.endswith(b"\n"):
                if len(line) > MAX_ROW_BYTES:
                    raise ConfigError(f"--out {path} line {number}: over {MAX_ROW_BYTES} bytes, not a row")
                output.torn = True
                log.warning("%s: dropping the torn last line %d (a killed run)", path, number)
                break
            end += len(line)
            output.done.add(row_key(_row(line, path, number)))
            output.rows += 1
    if output.torn:
        os.ftruncate(output.fd, end)
        os.fsync(output.fd)


def _row(line: bytes, path: Path, number: int) -> dict[str, Any]:
    refuse = f"--out {path} line {number} is not a dfrt batch row"
    try:
        row = parse_json(line.decode("utf-8"), f"--out {path} line {number}")
    except (UnicodeDecodeError, DfrtError) as e:
        raise ConfigError(f"{refuse} ({e}): refusing to append; give a new file") from e
    if not (isinstance(row, dict) and isinstance(row.get("line"), int)):
        raise ConfigError(f"{refuse}: refusing to append; give a new file")
    return row
