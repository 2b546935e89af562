"""Several sources in one ``dfrt watch``: stream names, and one loop serving every stream's due work fairly.

Each source is ``SRC`` or ``NAME=SRC`` (:func:`parse_streams`); an unnamed source is named after itself (a
file's stem, a URL's host and port, ``camera0``), made unique with ``-2``, ``-3``. All streams share one
pipeline (one model in memory); each has its own watcher, standing questions' schedule and alert state.

Scheduling (:func:`serve_streams`): one thread runs every model call, so work is served one item at a time.
Each turn of the loop gathers what is due on every stream (standing questions, alert checks, stdin
questions) and serves it oldest-due-first; ties go round-robin, starting one stream further each turn, so no
stream starves however many are due. Alert checks are spread over their period (of N streams, stream i is
first checked i/N of a period after the start), so N streams' checks do not all fall due at once. A late
item runs once (its next time is one period after it ran, never a burst to catch up), and how late it ran,
its *lag*, is counted per stream (:class:`Lag`): status lines and the final summary report it. A stream
whose source ends (or fails) leaves the schedule; the others go on.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dfrt.errors import ConfigError, DfrtError

if TYPE_CHECKING:
    from dfrt.live.alerts import Alerts
    from dfrt.live.events import Dispatcher
    from dfrt.live.options import WatchOptions
    from dfrt.live.watcher import Watcher

MAX_SOURCES = 64  # sources one `dfrt watch` takes (what the demo holds on 2 cores: benchmarks/RESULTS.md)
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.*)$", re.ASCII | re.DOTALL)
FIRST_FRAME_WAIT = 30.0  # seconds a stdin question waits for its stream's first frame
LAG_KEPT = 1000  # recent lags kept per stream for percentiles


def parse_streams(values: Sequence[object]) -> tuple[tuple[str, str], ...]:
    """``SRC`` or ``NAME=SRC`` values -> unique (name, source) pairs; one :class:`ConfigError` line if bad.
    Sources are checked (:func:`~dfrt.live.sources.parse_source`) for their default names."""
    from dfrt.live.sources import parse_source

    if not values:
        raise ConfigError("give at least one source")
    if len(values) > MAX_SOURCES:
        raise ConfigError(
            f"{len(values)} sources: one dfrt watch takes at most {MAX_SOURCES} (run another process)"
        )
    given: list[tuple[str | None, str]] = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(f"a source must be text (SRC or NAME=SRC), got {type(value).__name__}")
        match = _NAMED.match(value)
        if value.startswith("="):
            raise ConfigError(f"source {value[:80]!r}: no name before '=' (NAME=SRC)")
        if match is None:
            given.append((None, value))
            continue
        name, source = match.groups()
        if not source.strip():
            raise ConfigError(f"source {name}=: no source after '=' (NAME=SRC)")
        given.append((name, source))
    explicit = [name for name, _ in given if name is not None]
    for name in explicit:
        if explicit.count(name) > 1:
            raise ConfigError(f"stream name {name!r} is given twice")
    taken = set(explicit)
    streams = []
    for name, source in given:
        parsed = parse_source(source)  # a refused source: one InputError line
        if name is None:
            name = _unique(default_name(parsed.kind, parsed.target), taken)
            taken.add(name)
        streams.append((name, source))
    return tuple(streams)


def default_name(kind: str, target: str | int) -> str:
    """A stream's name from its source: ``camera0``, a file's stem, a URL's ``host-port``."""
    if kind == "camera":
        return f"camera{target}"
    if kind == "file":
        base = Path(str(target)).stem
    else:
        from urllib.parse import urlsplit

        parts = urlsplit(str(target))
        port = parts.port if parts.port else None
        base = (parts.hostname or "stream") + (f"-{port}" if port else "")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._")[:60]
    return name if STREAM_NAME.fullmatch(name) else "stream"


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


class Lag:
    """How late a stream's scheduled work ran: count, mean, percentiles of the recent ones, max, and how
    many ran later than their own period (``late``)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.late = 0
        self.recent: deque[float] = deque(maxlen=LAG_KEPT)

    def add(self, lag: float, period: float) -> None:
        lag = max(0.0, lag)
        self.count += 1
        self.total += lag
        self.max = max(self.max, lag)
        self.late += lag > period
        self.recent.append(lag)

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.recent)

        def at(q: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None

        return {
            "checks": self.count,
            "mean": round(self.total / self.count, 3) if self.count else None,
            "p50": at(0.5),
            "p95": at(0.95),
            "max": round(self.max, 3),
            "late": self.late,
        }

    def merge(self, other: Lag) -> None:
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        self.late += other.late
        self.recent.extend(other.recent)


@dataclass
class Stream:
    """One watched source: its name, watcher, alert state and standing questions' next times."""

    name: str
    watcher: Watcher
    alerts: Alerts | None = None
    due: list[float] = field(default_factory=list)  # per --every question, monotonic
    lag: Lag = field(default_factory=Lag)
    first_check: float = 0.0  # monotonic time of the first alert check (spread across streams)
    left: bool = False  # ended and announced


@dataclass(order=True)
class _Task:
    due: float
    turn: int  # round-robin position among equal due times
    stream: int = field(compare=False)
    kind: str = field(compare=False)  # "every", "alert" or "stdin"
    index: int = field(compare=False, default=0)  # the --every question
    question: str = field(compare=False, default="")


def serve_streams(
    opts: WatchOptions,
    streams: list[Stream],
    stdin: IO[str],
    stdout: IO[str],
    progress: Callable[[str], None],
    dispatcher: Dispatcher | None = None,
    status_wanted: dict[int, object] | None = None,
) -> int:
    """Answer and check every stream until the run is over (``dfrt watch``'s rules, the module doc)."""
    start = time.monotonic()
    pending: list[tuple[float, str]] = []  # stdin lines and when they came
    stdin_open = threading.Event()
    lock = threading.Lock()
    if opts.read_stdin:
        stdin_open.set()
        args = (stdin, pending, lock, stdin_open)
        threading.Thread(target=_read_lines, args=args, name="dfrt-watch-stdin", daemon=True).start()
    for i, stream in enumerate(streams):
        stream.due = [start + period for period, _ in opts.every]
        if stream.alerts is not None:  # streams' checks spread over a period, not all due at once
            stream.first_check = start + stream.alerts.every * i / len(streams)
    status_due = start + opts.status_every if opts.status_every else None
    wanted = {} if status_wanted is None else status_wanted
    wanted.clear()
    names = {s.name: i for i, s in enumerate(streams)}
    turn = 0
    held: list[_Task] = []  # stdin questions waiting for their stream's first frame
    try:
        while True:
            now = time.monotonic()
            if opts.duration is not None and now - start >= opts.duration:
                break
            with lock:
                lines, pending[:] = list(pending), []
            tasks = sorted(_due(opts, streams, lines, names, now, turn) + held)
            turn += 1
            held = [t for t in tasks if not _serve_one(opts, streams, t, stdout, progress, dispatcher)]
            for stream in streams:
                if stream.watcher.ended and not stream.left:
                    stream.left = True
                    error = stream.watcher.status()["error"]
                    if len(streams) > 1:
                        progress(f"{stream.name}: source ended" + (f" ({error})" if error else ""))
            if wanted or (status_due is not None and now >= status_due):
                wanted.clear()
                status_due = now + opts.status_every if opts.status_every else None
                for stream in streams:
                    progress(f"status {json.dumps(_status(stream, len(streams)))}")
            with lock:
                idle = not stdin_open.is_set() and not pending and not held
            standing = opts.every or opts.alerts
            if idle and ((not standing and opts.duration is None) or all(s.watcher.ended for s in streams)):
                break
            time.sleep(0.05 if len(held) == len(tasks) else 0.0)  # nothing served: nothing was due
    finally:
        wanted.clear()
    _summary(streams, opts, progress)
    return 0


def _due(
    opts: WatchOptions,
    streams: list[Stream],
    lines: list[tuple[float, str]],
    names: dict[str, int],
    now: float,
    turn: int,
) -> list[_Task]:
    """What is due now on every stream; ``rank`` puts equal due times round-robin from stream ``turn``."""
    count = len(streams)
    tasks = []
    for i, stream in enumerate(streams):
        rank = (i - turn) % count
        if stream.watcher.ended:  # its window is answerable, but nothing new comes: stdin questions only
            continue
        for q, due in enumerate(stream.due):
            if now >= due:
                tasks.append(_Task(due, rank, i, "every", q, opts.every[q][1]))
        if stream.alerts is not None:
            due = stream.alerts.next_check
            due = stream.first_check if due is None else due
            if now >= due:
                tasks.append(_Task(due, rank, i, "alert"))
    for arrived, line in lines:
        name, _, rest = line.partition(":")
        if count > 1 and name.strip() in names and rest.strip():  # "NAME: question" asks that stream
            index = names[name.strip()]
            tasks.append(_Task(arrived, (index - turn) % count, index, "stdin", 0, rest.strip()))
        else:
            tasks += [_Task(arrived, (i - turn) % count, i, "stdin", 0, line) for i in range(count)]
    return tasks


def _serve_one(
    opts: WatchOptions,
    streams: list[Stream],
    task: _Task,
    stdout: IO[str],
    progress: Callable[[str], None],
    dispatcher: Dispatcher | None,
) -> bool:
    """Run one task; False when it is a stdin question that should wait for its stream's first frame."""
    stream = streams[task.stream]
    now = time.monotonic()
    if task.kind == "every":
        period = opts.every[task.index][0]
        stream.due[task.index] = max(task.due + period, now)  # late answers never pile up
        stream.lag.add(now - task.due, period)
        _answer(stream, task.question, "every", opts, stdout, progress)
    elif task.kind == "alert":
        assert stream.alerts is not None and dispatcher is not None
        stream.lag.add(now - task.due, stream.alerts.every)
        for event in stream.alerts.run_due(stream.watcher, opts.sampling, now):
            event.stream = stream.name
            dispatcher.emit(event)
    else:
        empty = not len(stream.watcher.window) and not stream.watcher.ended
        if empty and now - task.due < FIRST_FRAME_WAIT:
            return False
        _answer(stream, task.question, "stdin", opts, stdout, progress)
    return True


def _answer(
    stream: Stream,
    question: str,
    kind: str,
    opts: WatchOptions,
    stdout: IO[str],
    progress: Callable[[str], None],
) -> None:
    try:
        answer = stream.watcher.ask(question, opts.sampling)
    except DfrtError as e:
        progress(f"warning: {stream.name}: {question!r} not answered: {e}")
        return
    stdout.write(json.dumps({"kind": kind, "stream": stream.name, **answer.to_dict()}) + "\n")
    stdout.flush()


def _status(stream: Stream, count: int) -> dict[str, Any]:
    status: dict[str, Any] = {"stream": stream.name, **stream.watcher.status(), "lag": stream.lag.to_dict()}
    if stream.alerts is not None:
        status["alerts"] = stream.alerts.status()
    return status


def _summary(streams: list[Stream], opts: WatchOptions, progress: Callable[[str], None]) -> None:
    total = Lag()
    for stream in streams:
        status = stream.watcher.status()
        lag = stream.lag.to_dict()
        line = (
            f"{status['frames_encoded']} frames encoded, {status['frames_dropped']} dropped, "
            f"{status['reconnects']} reconnects"
        )
        if lag["checks"]:
            line += f"; {lag['checks']} scheduled, lag p95 {lag['p95']:g} s, max {lag['max']:g} s"
        progress(f"{stream.name}: {line}" if len(streams) > 1 else line)
        total.merge(stream.lag)
    if len(streams) > 1 and total.count:
        lag = total.to_dict()
        progress(
            f"{len(streams)} streams: {lag['checks']} scheduled, lag p50 {lag['p50']:g} s, "
            f"p95 {lag['p95']:g} s, max {lag['max']:g} s, {lag['late']} later than their period"
        )


def _read_lines(
    stdin: IO[str], out: list[tuple[float, str]], lock: threading.Lock, running: threading.Event
) -> None:
    try:
        for line in stdin:
            if line.strip():
                with lock:
                    out.append((time.monotonic(), line.strip()))
    except (OSError, ValueError):  # stdin closed under us
        pass
    finally:
        running.clear()
