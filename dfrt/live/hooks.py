"""Hooks that receive alert events, each on its own thread so the watcher never waits for them.

:class:`CommandHook` (``--on-event CMD``) runs ``CMD`` (split with :func:`shlex.split`, never through a
shell) once per event with the event's JSON on stdin, in event order, one at a time: it gets
``hook_timeout`` seconds, after which its whole process group is killed; its output is read and discarded
(the first 2 KB are kept for a warning when it fails); at most :data:`QUEUE` events wait, more are dropped
and counted. :class:`Webhook` (``--webhook URL``) POSTs each event's JSON, in order, retrying with
exponential backoff (0.5 s doubling to 30 s) until the server answers 2xx; it never drops an event: with
an event log the log is the queue (what the server has acknowledged is marked in ``delivery.json``, and
what it has not is re-sent in order after a restart); without one, up to :data:`MEMORY_QUEUE` events wait in
memory. Delivery is at least once: the ``id`` field (also the ``X-Dfrt-Event-Id`` header) tells repeats.

The JSON a hook receives is the logged event plus each key frame's thumbnail as ``jpeg_base64``.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from dfrt.errors import ConfigError
from dfrt.runtime import options

if TYPE_CHECKING:
    from dfrt.live.events import EventLog

log = logging.getLogger(__name__)

QUEUE = 100  # events waiting for a command hook
MEMORY_QUEUE = 10000  # events waiting for a webhook without an event log
OUTPUT_KEPT = 2048  # bytes of a command's output kept for a warning
DEFAULT_HOOK_TIMEOUT = 10.0
DEFAULT_WEBHOOK_TIMEOUT = 5.0
BACKOFF = (0.5, 30.0)  # seconds: first retry, longest wait
MAX_COMMAND = 4096
MAX_URL = 2048


def payload(record: dict[str, Any], thumbnails: list[bytes]) -> bytes:
    """The JSON a hook gets: the record with each key frame's thumbnail inline (base64)."""
    frames = []
    for i, frame in enumerate(record.get("key_frames", [])):
        data = thumbnails[i] if i < len(thumbnails) else b""
        frames.append(dict(frame, jpeg_base64=base64.b64encode(data).decode("ascii") if data else None))
    return json.dumps(dict(record, key_frames=frames)).encode()


def split_command(command: object) -> list[str]:
    """``--on-event`` as argv (shlex), its program found; one-line :class:`ConfigError` otherwise."""
    if not isinstance(command, str):
        raise ConfigError(f"--on-event must be text, got {type(command).__name__}")
    if len(command) > MAX_COMMAND:
        raise ConfigError(f"--on-event is over {MAX_COMMAND} characters")
    if any(unicodedata.category(c) == "Cc" and c not in " \t" for c in command):
        raise ConfigError("--on-event: control characters (a newline, say) in the command")
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ConfigError(f"--on-event {command[:60]!r}: {e} (quote it as a shell would)") from None
    if not argv:
        raise ConfigError("--on-event: empty command")
    program = argv[0]
    found = shutil.which(program) if "/" not in program else program
    if found is None:
        raise ConfigError(f"--on-event: {program!r} not found on PATH")
    if not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise ConfigError(f"--on-event: {program!r} is not an executable file")
    return [found, *argv[1:]]


class CommandHook:
    """Runs a command per event (the module doc); :meth:`submit` never blocks."""

    def __init__(self, command: str, timeout: float = DEFAULT_HOOK_TIMEOUT) -> None:
        self.argv = split_command(command)
        self.timeout = options.real("--hook-timeout", timeout, 0.0, 3600.0, low_open=True)
        self._queue: collections.deque[tuple[dict[str, Any], list[bytes]]] = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._current: subprocess.Popen[bytes] | None = None  # the run in progress (killed by close)
        self.runs = self.failures = self.killed = self.dropped = 0
        self._thread = threading.Thread(target=self._work, name="dfrt-hook", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any], thumbnails: list[bytes]) -> None:
        with self._ready:
            if len(self._queue) >= QUEUE:
                self.dropped += 1
                log.warning("--on-event: %d events waiting, event %s dropped", QUEUE, record.get("id"))
                return
            self._queue.append((record, thumbnails))
            self._ready.notify()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                record, thumbnails = self._queue.popleft()
            self.run(record, thumbnails)

    def run(self, record: dict[str, Any], thumbnails: list[bytes]) -> dict[str, Any]:
        """Run the command once for ``record`` (bounded by the timeout); its exit status, time, output."""
        data = payload(record, thumbnails)
        env = dict(os.environ, DFRT_EVENT_ID=str(record.get("id")), DFRT_EVENT_KIND=str(record.get("kind")))
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole at the bound
                close_fds=True,
                env=env,
            )
        except OSError as e:
            self.failures += 1
            log.warning("--on-event: cannot run %s: %s", self.argv[0], e.strerror or e)
            return {"returncode": None, "killed": False, "output": b""}
        self._current = process
        kept = bytearray()
        reader = threading.Thread(target=_drain, args=(process.stdout, kept), daemon=True)
        writer = threading.Thread(target=_feed, args=(process.stdin, data), daemon=True)
        reader.start()
        writer.start()
        deadline = start + self.timeout
        killed = False
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = True
        reader.join(max(0.0, deadline - time.monotonic()))
        if killed or reader.is_alive():  # over its time, or its children still hold the output open
            killed = killed or process.poll() is None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join(5.0)
        writer.join(5.0)
        self._current = None
        killed = killed or process.returncode == -signal.SIGKILL  # also by close()
        self.runs += 1
        if killed:
            self.killed += 1
            log.warning("--on-event: killed after %.3g s (event %s)", self.timeout, record.get("id"))
        elif process.returncode != 0:
            self.failures += 1
            text = bytes(kept).decode("utf-8", "replace").strip().splitlines()
            log.warning("--on-event exited %s: %s", process.returncode, text[-1][:200] if text else "")
        return {"returncode": process.returncode, "killed": killed, "output": bytes(kept)}

    def close(self, wait: float | None = None) -> None:
        """Run what is queued for up to ``wait`` seconds (default: the timeout, plus 5 s), then drop the
        rest (counted) and kill the run in progress: the process never outlives its hooks' bound."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(self.timeout + 5.0 if wait is None else wait)
        if self._thread.is_alive():
            with self._ready:
                self.dropped += len(self._queue)
                self._queue.clear()
            process = self._current
            if process is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            self._thread.join(10.0)


def _drain(stream: Any, kept: bytearray) -> None:
    with contextlib.suppress(OSError, ValueError):
        while chunk := stream.read1(1 << 16):
            if len(kept) < OUTPUT_KEPT:
                kept += chunk[: OUTPUT_KEPT - len(kept)]
    with contextlib.suppress(OSError):
        stream.close()


def _feed(stream: Any, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):  # BrokenPipeError: it did not read its stdin
        stream.write(data)
    with contextlib.suppress(OSError, ValueError):
        stream.close()


def check_url(url: object) -> str:
    """``--webhook`` if it is an http(s) URL with a host; one-line :class:`ConfigError` otherwise."""
    if not isinstance(url, str):
        raise ConfigError(f"--webhook must be text, got {type(url).__name__}")
    if len(url) > MAX_URL:
        raise ConfigError(f"--webhook is over {MAX_URL} characters")
    if any(unicodedata.category(c) == "Cc" or c.isspace() for c in url):
        raise ConfigError("--webhook: spaces or control characters in the URL")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"--webhook {display_url(url)!r}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"--webhook {display_url(url)!r}: only http:// and https:// URLs")
    if not parts.hostname:
        raise ConfigError(f"--webhook {display_url(url)!r}: no host")
    if port == 0:
        raise ConfigError(f"--webhook {display_url(url)!r}: port 0")
    return url


def display_url(url: str) -> str:
    """``url`` without its credentials (never printed)."""
    with contextlib.suppress(ValueError):
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None or parts.password is not None:
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, ""))
    return url[:200]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer that is not 2xx: retried, never followed


class Webhook:
    """POSTs events in order with retries (the module doc); :meth:`submit` never blocks."""

    def __init__(
        self,
        url: str,
        log_: EventLog | None = None,
        timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
        backoff: tuple[float, float] = BACKOFF,
    ) -> None:
        self.url = check_url(url)
        self.display = display_url(url)
        self.timeout = options.real("webhook timeout", timeout, 0.0, 600.0, low_open=True)
        self.backoff = backoff
        self.log = log_
        self.key = hashlib.sha256(url.encode()).hexdigest()[:16]
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._pending: collections.deque[tuple[dict[str, Any], list[bytes]]] = collections.deque()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self.delivered = self.attempts = self.failures = self.dropped = 0
        self.last_error: str | None = None
        if log_ is not None:
            log_.active.add(self.key)
            mark = log_.delivered(self.key)
            if mark is None:  # a new webhook starts at the end of the log, not its history
                log_.mark_delivered(self.key, log_.last_id)
            self._acked = log_.delivered(self.key) or 0
        else:
            self._acked = 0
        self._thread = threading.Thread(target=self._work, name="dfrt-webhook", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        if self.log is not None:
            return max(0, self.log.last_id - self._acked)
        return len(self._pending)

    def submit(self, record: dict[str, Any], thumbnails: list[bytes]) -> None:
        with self._wake:
            if self.log is None:
                if len(self._pending) >= MEMORY_QUEUE:
                    self._pending.popleft()
                    self.dropped += 1
                self._pending.append((record, thumbnails))
            self._wake.notify()

    def _next_batch(self) -> list[tuple[dict[str, Any], list[bytes]]]:
        if self.log is None:
            with self._wake:
                return list(self._pending)[:16]
        records = self.log.read(after=self._acked, limit=16)
        return [
            (
                r,
                [
                    self.log.thumbnail(k.get("thumbnail"))
                    for k in r.get("key_frames", [])
                    if isinstance(k, dict)
                ],
            )
            for r in records
        ]

    def _work(self) -> None:
        failures = 0
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                with self._wake:
                    if self._stop.is_set():
                        return
                    self._wake.wait(1.0)
                continue
            for record, thumbnails in batch:
                while not self._stop.is_set():
                    if self._post(record, thumbnails):
                        failures = 0
                        break
                    failures += 1
                    delay = min(self.backoff[1], self.backoff[0] * 2.0 ** (failures - 1))
                    self._stop.wait(delay)
                else:
                    return
                self.delivered += 1
                if self.log is not None:
                    self._acked = int(record["id"])
                    self.log.mark_delivered(self.key, self._acked)
                else:
                    with self._wake:
                        if self._pending and self._pending[0][0] is record:
                            self._pending.popleft()

    def _post(self, record: dict[str, Any], thumbnails: list[bytes]) -> bool:
        self.attempts += 1
        request = urllib.request.Request(
            self.url,
            data=payload(record, thumbnails),
            headers={"Content-Type": "application/json", "X-Dfrt-Event-Id": str(record.get("id"))},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(1 << 16)
                ok = 200 <= response.status < 300
                self.last_error = None if ok else f"HTTP {response.status}"
        except urllib.error.HTTPError as e:
            ok, self.last_error = False, f"HTTP {e.code}"
            e.close()
        except (OSError, ValueError) as e:  # refused, timed out, reset, bad response
            ok, self.last_error = False, type(e).__name__
        if not ok:
            self.failures += 1
            if self.failures == 1 or self.failures % 10 == 0:
                log.warning(
                    "--webhook %s: %s (event %s kept, retrying)",
                    self.display,
                    self.last_error,
                    record.get("id"),
                )
        return ok

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every submitted event to be acknowledged."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.pending

    def close(self, wait: float = 2.0) -> None:
        """Give the queue ``wait`` seconds, then stop (what is left stays in the log for the next run)."""
        self.flush(wait)
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self._thread.join(self.timeout + 1.0)
