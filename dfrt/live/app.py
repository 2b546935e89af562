"""``dfrt watch SRC [SRC ...]``: questions typed on stdin and standing questions and alert rules on a
schedule, over one or several sources sharing one pipeline, one JSON line each.

Every answer is one JSON object on its own line on stdout (:meth:`LiveAnswer.to_dict` plus ``"kind"``:
``stdin`` or ``every``, and ``"stream"``: the source's name); progress, warnings and status lines go to
stderr. The run ends at ``--duration``, on Ctrl-C, when stdin ends and no standing question is set, or when
every source is over (a file played to its end, reconnecting given up) and every question asked so far is
answered. Scheduling across sources: :mod:`dfrt.live.multi`.

Signals are taken so that a flood of them (thousands a second) changes nothing: SIGUSR1's handler is a
builtin (``dict.__setitem__``: no Python frame, so it cannot recurse, block on a lock or raise), read by
the main loop; the first SIGINT or SIGTERM ends the run through ``KeyboardInterrupt`` and later ones are
ignored, so the cleanup (watcher threads, pipeline) is never interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from dfrt.errors import ConfigError
from dfrt.live.options import WatchOptions
from dfrt.live.watcher import Reconnect, Watcher
from dfrt.runtime import options

if TYPE_CHECKING:
    from dfrt.live.alerts import Alerts
    from dfrt.live.events import Dispatcher

STATUS_EVERY = 10.0  # seconds between status lines with -v


def run_watch(
    opts: WatchOptions,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> int:
    """Open the pipeline and a watcher per source, answer until done (module doc); returns the exit code."""
    from dfrt.live.multi import Stream, parse_streams, serve_streams
    from dfrt.runtime.default_bundle import resolve_bundle
    from dfrt.runtime.pipeline import Pipeline

    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    for period, question in opts.every:
        options.real("--every", period, 0.0, 1e7, low_open=True)
        options.question(question)
    if opts.duration is not None:
        options.real("--duration", opts.duration, 0.0, 1e7, low_open=True)
    reconnect = Reconnect(attempts=opts.max_reconnects)
    named = parse_streams(opts.sources or (opts.source,))  # refused sources: one line before the bundle loads
    alerts = _check_alerts(opts)  # so are malformed rules, hooks and an events directory
    bundle = resolve_bundle(opts.bundle, progress)
    progress(f"loading bundle {bundle}")
    interrupts = _Interrupts()
    previous = interrupts.install()
    status = _on_sigusr1(_STATUS_WANTED.__setitem__)  # before the bundle loads: a status request never kills
    try:
        with (
            _stderr_kept(),
            Pipeline(
                bundle,
                opts.llm,
                opts.backend,
                threads=opts.threads,
                precision=opts.precision,
                progress=progress,
                selection=opts.selection,
            ) as pipe,
            contextlib.ExitStack() as watchers,
        ):
            streams = []
            for i, (name, source) in enumerate(named):
                watcher = Watcher(
                    pipe,
                    source,
                    opts.window,
                    opts.fps,
                    opts.realtime,
                    opts.loop,
                    reconnect=reconnect,
                    visual_tokens=opts.visual_tokens,
                )
                watchers.enter_context(watcher)
                rules = alerts if i == 0 or alerts is None else _alerts(opts)  # each stream its own state
                streams.append(Stream(name, watcher, rules))
                shown = f"{name} ({watcher.source.display})" if len(named) > 1 else watcher.source.display
                progress(f"watching {shown}: {opts.window:g} s window at {opts.fps:g} fps")
            with _dispatcher(opts, alerts, stdout, progress) as dispatcher:
                return serve_streams(opts, streams, stdin, stdout, progress, dispatcher, _STATUS_WANTED)
    finally:
        if not interrupts.seen:  # interrupted: the process is on its way out; more signals stay ignored
            interrupts.restore(previous)
            _on_sigusr1(status)


def _check_alerts(opts: WatchOptions) -> Alerts | None:
    """The rules, hooks and events directory checked (one error line each) before anything opens."""
    from dfrt.live.events import check_events_dir, parse_size
    from dfrt.live.hooks import check_url, split_command

    if not opts.alerts:
        for given, flag in (
            (opts.events_dir, "--events"),
            (opts.on_event, "--on-event"),
            (opts.webhooks, "--webhook"),
        ):
            if given:
                raise ConfigError(f"{flag} needs at least one --alert rule")
        return None
    alerts = _alerts(opts)
    for command in opts.on_event:
        split_command(command)
    options.real("--hook-timeout", opts.hook_timeout, 0.0, 3600.0, low_open=True)
    for url in opts.webhooks:
        check_url(url)
    if opts.events_dir is not None:
        check_events_dir(opts.events_dir)
        parse_size(opts.events_size)
    return alerts


@contextlib.contextmanager
def _stderr_kept() -> Iterator[None]:
    """``sys.stderr`` written through a duplicate of fd 2 for the run: a watcher thread that points fd 2 at
    /dev/null while FFmpeg opens a stream (:mod:`dfrt.runtime.native_log`; 5 s at a time for a source that
    is down) cannot swallow dfrt's own progress, status and summary lines meanwhile."""
    try:
        ours = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # not the process's stderr (captured): nothing to keep
        ours = False
    if not ours:
        yield
        return
    previous = sys.stderr
    previous.flush()
    kept = os.fdopen(os.dup(2), "w", buffering=1, encoding=previous.encoding, errors=previous.errors)
    sys.stderr = kept
    try:
        yield
    finally:
        sys.stderr = previous
        with contextlib.suppress(OSError):
            kept.close()


def _alerts(opts: WatchOptions) -> Alerts:
    from dfrt.live.alerts import Alerts

    return Alerts(opts.alerts, opts.alert_every, opts.confirm, opts.cooldown)


@contextlib.contextmanager
def _dispatcher(
    opts: WatchOptions, alerts: Alerts | None, stdout: IO[str], progress: Callable[[str], None]
) -> Iterator[Dispatcher | None]:
    """The event log, hooks and webhooks of ``opts`` (closed, bounded, when the run ends)."""
    if alerts is None:
        yield None
        return
    from dfrt.live.events import Dispatcher, EventLog
    from dfrt.live.hooks import CommandHook, Webhook

    with contextlib.ExitStack() as stack:
        log = None
        if opts.events_dir is not None:
            log = stack.enter_context(EventLog(opts.events_dir, opts.events_size))
            progress(f"event log {log.dir} (last event {log.last_id})")
        hooks: list[CommandHook | Webhook] = [CommandHook(c, opts.hook_timeout) for c in opts.on_event]
        hooks += [Webhook(url, log) for url in opts.webhooks]
        dispatcher = Dispatcher(log, stdout, tuple(hooks), progress)
        stack.callback(dispatcher.close)
        rules = "; ".join(f"{r.name}: {r.question!r} => {'|'.join(r.fires_on)}" for r in alerts.rules)
        progress(
            f"alert rules every {alerts.every:g} s (confirm {alerts.confirm}, "
            f"cooldown {alerts.cooldown:g} s): {rules}"
        )
        yield dispatcher


# SIGUSR1 seen since the main loop last looked: filled by the builtin ``__setitem__`` as the handler
_STATUS_WANTED: dict[int, object] = {}


def keep_status_signal(ending: bool = False) -> None:
    """For the ``dfrt watch`` process: SIGUSR1 never terminates it, before or after :func:`run_watch`
    (a builtin handler that only records it; no Python frame, so a flood cannot recurse); ``ending``:
    ignored while the process exits (Python resets its handlers to the default, terminate, at exit)."""
    _on_sigusr1(signal.SIG_IGN if ending else _STATUS_WANTED.__setitem__)


def _on_sigusr1(handler: object) -> object:
    """Install ``handler(signum, frame)`` for SIGUSR1 (main thread, POSIX only); returns the previous one."""
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        return None
    if handler is None:  # installed from C (nothing to restore)
        return None
    return signal.signal(signal.SIGUSR1, handler)  # type: ignore[arg-type]


def _quiet_ignored_signals(previous: Any) -> Any:
    """An unraisable hook that drops CPython's reports of pending signals now ignored, passing on the rest."""

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, OSError) and "ignored due to race condition" in str(value):
            return
        previous(unraisable)

    return hook


class _Interrupts:
    """SIGINT and SIGTERM while watching: the first raises ``KeyboardInterrupt`` (the run ends and cleans
    up); later ones return at once, so a flood can neither interrupt the cleanup nor nest handlers."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.seen:
            self.seen = True
            # signals already pending when the handler becomes SIG_IGN are reported by CPython as unraisable
            # "Signal N ignored due to race condition" tracebacks on stderr: they are exactly what is meant
            sys.unraisablehook = _quiet_ignored_signals(sys.unraisablehook)
            for name in self.SIGNALS:  # ignored from now on, through the interpreter's own shutdown too
                with contextlib.suppress(AttributeError, ValueError, OSError):
                    signal.signal(getattr(signal, name), signal.SIG_IGN)
            raise KeyboardInterrupt

    def install(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                previous[number] = signal.signal(number, self)
        return previous

    def restore(self, previous: dict[int, object]) -> None:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)  # type: ignore[arg-type]
