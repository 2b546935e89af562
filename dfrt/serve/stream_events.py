"""Live alerts in ``dfrt serve``: ``--alert NAME=RULE`` rules on watched streams, checked by one scheduler
thread through the shared pipeline, their events kept per stream in a bounded ring.

Each stream with rules has an :class:`~dfrt.live.alerts.Alerts` (confirm, cool-down and the full-window
check as in ``dfrt watch``). The scheduler thread picks the due stream that has waited longest (round-robin:
a stream just checked goes behind every other due one, so a stream with many rules cannot starve the
rest) and hands its check to the engine's executor, where it queues with requests in order (the pipeline
serialises). Events go through :class:`~dfrt.live.events.Dispatcher` (``--events DIR``: the log gives the
ids, which then continue across restarts; ``--webhook``) and into :class:`EventStore`, which keeps each
stream's last ``events_kept`` events with their thumbnails (at most :data:`STREAM_BYTES` per stream) for
``GET /v1/streams/NAME/events`` (:mod:`dfrt.serve.event_routes`). Ids rise across all streams.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dfrt.errors import ConfigError
from dfrt.serve.metrics import Sample

if TYPE_CHECKING:
    from dfrt.live.alerts import Alerts
    from dfrt.live.events import Dispatcher
    from dfrt.serve.engine import Engine, ServeOptions

log = logging.getLogger(__name__)
STREAM_BYTES = 16 << 20  # thumbnails and records one stream keeps in memory
IDLE_SECONDS = 0.05  # how often the scheduler looks for a due stream
EVENTS_KEPT_RANGE = (1, 100_000)
EVENT_CLIENTS_RANGE = (0, 10_000)


def parse_alert(pair: object) -> tuple[str, str]:
    """``"NAME=RULE"`` -> (NAME, RULE); one-line :class:`ConfigError` otherwise (the rule is checked by
    :func:`check_alerts`)."""
    if not isinstance(pair, str):
        raise ConfigError(f"--alert must be NAME=RULE, got {type(pair).__name__}")
    name, sep, rule = pair.partition("=")
    if not sep or not name.strip() or rule.startswith(">"):
        example = "door='Is someone at the door?'"
        raise ConfigError(f"--alert must be NAME=RULE (e.g. {example}), got {pair[:80]!r}")
    return name.strip(), rule


def check_alerts(options: ServeOptions) -> dict[str, Alerts]:
    """Each watched stream's rules as :class:`Alerts`, and the alert options, checked before anything loads
    (one :class:`ConfigError` naming the flag)."""
    from dfrt.live.alerts import AlertRule, Alerts
    from dfrt.live.events import check_events_dir, parse_size
    from dfrt.live.hooks import check_url
    from dfrt.runtime import options as check

    check.integer("--events-kept", options.events_kept, *EVENTS_KEPT_RANGE)
    check.integer("--max-event-clients", options.max_event_clients, *EVENT_CLIENTS_RANGE)
    streams = {name for name, _ in options.watch}
    rules: dict[str, list[AlertRule]] = {}
    for pair in options.alerts:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ConfigError(f"--alert must be NAME=RULE, got {pair!r:.80}")
        name, text = pair
        if name not in streams:
            known = ", ".join(sorted(streams)) or "none: add --watch NAME=SRC"
            raise ConfigError(f"--alert {name[:40]!r}: no such --watch stream (streams: {known})")
        rules.setdefault(name, []).append(AlertRule.parse(text))
    if not rules:
        for given, flag in ((options.events_dir, "--events"), (options.webhooks, "--webhook")):
            if given:
                raise ConfigError(f"{flag} needs at least one --alert NAME=RULE")
    alerts = {
        name: Alerts(parsed, options.alert_every, options.confirm, options.cooldown)
        for name, parsed in rules.items()
    }
    for url in options.webhooks:
        check_url(url)
    if options.events_dir is not None:
        check_events_dir(options.events_dir)
        parse_size(options.events_size)
    return alerts


@dataclass(frozen=True)
class StoredEvent:
    """One event as served: its JSON record (thumbnail URLs in its key frames) and the JPEGs."""

    id: int
    record: dict[str, Any]
    thumbnails: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.thumbnails) + 2048  # the record: about 1-2 KB


class EventStore:
    """The last events of each stream, bounded by count (``keep``) and bytes (:data:`STREAM_BYTES`), with the
    counts ``/metrics`` shows; thread-safe (the scheduler adds, the event loop reads)."""

    def __init__(self, streams: list[str], keep: int, max_clients: int) -> None:
        self.keep = keep
        self.max_clients = max_clients
        self.clients = 0  # SSE clients connected (changed on the event loop only)
        self.closed = False
        self.newest = 0  # the highest id given out by this server
        self._lock = threading.Lock()
        self._rings: dict[str, collections.deque[StoredEvent]] = {s: collections.deque() for s in streams}
        self._bytes = dict.fromkeys(streams, 0)
        self._evicted = dict.fromkeys(streams, 0)  # the highest id a stream's ring let go
        self.counts: dict[tuple[str, str, str], int] = {}  # (stream, rule, kind) -> events
        self.firing: dict[str, set[str]] = {s: set() for s in streams}  # rules firing now
        self.alerts: dict[str, Alerts] = {}  # each stream's rules (set by attach)

    def __contains__(self, stream: str) -> bool:
        return stream in self._rings

    def add(self, stream: str, record: dict[str, Any], thumbnails: list[bytes]) -> StoredEvent:
        """Keep ``record`` (its ``id`` given by the dispatcher); the oldest go beyond the bounds."""
        event_id = int(record["id"])
        frames = []
        for k, frame in enumerate(record.get("key_frames", [])):
            has = k < len(thumbnails) and bool(thumbnails[k])
            url = f"/v1/streams/{stream}/events/{event_id}/thumbnails/{k}" if has else None
            frames.append(dict(frame, thumbnail=url))
        stored = StoredEvent(event_id, dict(record, stream=stream, key_frames=frames), tuple(thumbnails))
        rule, kind = str(record["rule"]["name"]), str(record["kind"])
        with self._lock:
            ring = self._rings[stream]
            ring.append(stored)
            self._bytes[stream] += stored.size
            while len(ring) > self.keep or (len(ring) > 1 and self._bytes[stream] > STREAM_BYTES):
                gone = ring.popleft()
                self._bytes[stream] -= gone.size
                self._evicted[stream] = max(self._evicted[stream], gone.id)
            self.newest = max(self.newest, event_id)
            key = (stream, rule, kind)
            self.counts[key] = self.counts.get(key, 0) + 1
            (self.firing[stream].add if kind == "alert" else self.firing[stream].discard)(rule)
        return stored

    def after(self, stream: str, since: int) -> tuple[list[StoredEvent], bool]:
        """The kept events of ``stream`` with ids above ``since``, oldest first, and whether any after it
        were let go (or ``since`` is beyond this server's ids: a restarted server without ``--events``
        starts again, and everything kept is returned)."""
        with self._lock:
            if since > self.newest:
                since = 0
            events = [e for e in self._rings[stream] if e.id > since]
            return events, self._evicted[stream] > since

    def get(self, stream: str, event_id: int) -> StoredEvent | None:
        with self._lock:
            return next((e for e in self._rings[stream] if e.id == event_id), None)

    def samples(self) -> list[Sample]:
        """``/metrics`` series: events per stream, rule and kind; rules firing per stream; SSE clients."""
        with self._lock:
            counts = sorted(self.counts.items())
            firing = {s: len(r) for s, r in sorted(self.firing.items())}
        out: list[Sample] = [
            ("dfrt_stream_events_total", "alert events raised (kind: alert or clear)",
             (("kind", kind), ("rule", rule), ("stream", stream)), float(n))
            for (stream, rule, kind), n in counts
        ]  # fmt: skip
        out += [
            ("dfrt_stream_alerts_active", "alert rules firing now", (("stream", s),), float(n))
            for s, n in firing.items()
        ]
        out.append(("dfrt_stream_event_clients", "clients following stream events", (), float(self.clients)))
        return out


class _Named:
    """An alert event as the dispatcher sees it, with the stream's name in its JSON."""

    def __init__(self, event: Any, stream: str) -> None:
        self.event, self.stream, self.id = event, stream, None

    def to_dict(self) -> dict[str, Any]:
        return {**self.event.to_dict(), "stream": self.stream}

    @property
    def thumbnails(self) -> list[bytes]:
        return list(self.event.thumbnails)


class AlertScheduler:
    """One thread checking every stream's due rules in turn through the engine's executor (module doc)."""

    def __init__(self, engine: Engine, alerts: dict[str, Alerts], store: EventStore, dispatcher: Dispatcher):
        from dfrt.runtime.generate import SamplingConfig

        self.engine, self.alerts, self.store, self.dispatcher = engine, alerts, store, dispatcher
        self.sampling = SamplingConfig(temperature=0.0)  # a standing question answers the same way each time
        self.order = collections.deque(sorted(alerts))  # the next stream to check first
        self.failures = 0
        self._stop = threading.Event()
        self._running: concurrent.futures.Future[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="dfrt-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def next_due(self, now: float) -> str | None:
        """The due stream that has waited longest, moved to the back of the turn."""
        for name in list(self.order):
            if self.alerts[name].due(now):
                self.order.remove(name)
                self.order.append(name)
                return name
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            name = self.next_due(time.monotonic())
            if name is None:
                self._stop.wait(IDLE_SECONDS)
                continue
            self._check(name)

    def _check(self, name: str) -> None:
        watcher = self.engine.watchers[name]
        try:
            self._running = self.engine.executor.submit(self.alerts[name].run_due, watcher, self.sampling)
            events = self._running.result()
        except (concurrent.futures.CancelledError, RuntimeError):  # the engine is closing
            return
        except Exception:  # a backend failure: logged, the next check tries again
            self.failures += 1
            log.exception("checking the alert rules of stream %s failed", name)
            return
        for event in events:
            record = self.dispatcher.emit(_Named(event, name))
            self.store.add(name, record, event.thumbnails)
            log.info("stream %s: %s %s (event %s)", name, event.rule.name, event.kind, record["id"])

    def close(self) -> None:
        """Stop checking (a queued check is cancelled, a running one finishes), then close the hooks."""
        self._stop.set()
        running = self._running
        if running is not None:
            running.cancel()
        self._thread.join()
        self.dispatcher.close()
        if self.dispatcher.log is not None:
            self.dispatcher.log.close()


def attach(engine: Engine, progress: Callable[[str], None] = lambda message: None) -> None:
    """Give ``engine`` its event store (``engine.events``) and, with ``--alert`` rules, its scheduler,
    started now and stopped first when the engine closes."""
    from dfrt.live.events import Dispatcher, EventLog
    from dfrt.live.hooks import Webhook

    options = engine.options
    alerts = check_alerts(options)
    store = EventStore(list(engine.watchers), options.events_kept, options.max_event_clients)
    engine.events = store
    engine.metrics.collectors.append(store.samples)
    engine.closing.append(lambda: setattr(store, "closed", True))
    if not alerts:
        return
    with contextlib.ExitStack() as stack:
        event_log = None
        if options.events_dir is not None:
            event_log = stack.enter_context(EventLog(options.events_dir, options.events_size))
            progress(f"event log {event_log.dir} (last event {event_log.last_id})")
        hooks = tuple(Webhook(url, event_log) for url in options.webhooks)
        dispatcher = Dispatcher(event_log, None, hooks, progress)
        scheduler = AlertScheduler(engine, alerts, store, dispatcher)
        stack.pop_all()
    store.alerts = alerts
    engine.closing.append(scheduler.close)
    for name, rules in sorted(alerts.items()):
        shown = "; ".join(f"{r.name}: {r.question!r} => {'|'.join(r.fires_on)}" for r in rules.rules)
        progress(f"alerts on {name} every {rules.every:g} s (confirm {rules.confirm}): {shown}")
    scheduler.start()
