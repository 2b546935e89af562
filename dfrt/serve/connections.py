"""Connection limits under the HTTP parser: open connections per client and in all, a time to send a head.

uvicorn's own options bound a request once it is parsed (``limit_concurrency`` answers 503 only then) and
close idle keep-alive connections, but a client that opens 1,000 connections and sends nothing, or sends its
headers a byte at a time, holds them all. :func:`guarded_protocol` is uvicorn's h11 protocol with three
checks before any parsing: a connection beyond ``max_connections`` in all, or beyond ``per_client`` from one
address, is aborted as it is accepted; a connection that has not sent a whole request head within
``header_timeout`` seconds of opening (or of its previous response) is closed. The request body's time is the
app's (``--read-timeout``, a 408). The h11 parser refuses a head over :data:`MAX_HEAD_BYTES`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
MAX_HEAD_BYTES = 16 * 1024  # request line and headers (uvicorn's h11_max_incomplete_event_size)


@dataclass
class ConnectionLimits:
    """The limits and their live counts (one per server: its connections share them)."""

    max_connections: int = 256
    per_client: int = 32
    header_timeout: float = 30.0
    open: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # connections aborted at accept (over a cap)
    timed_out: int = 0  # connections closed for headers not sent in time


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's ``H11Protocol`` under ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):  # type: ignore[misc]
        _dfrt_peer: str | None = None
        _dfrt_timer: asyncio.TimerHandle | None = None
        _dfrt_idle_since = 0.0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
            if limits.open >= limits.max_connections or limits.by_client[client] >= limits.per_client:
                limits.refused += 1
                transport.abort()  # before uvicorn counts it: connection_lost below ignores it
                return
            self._dfrt_peer = client
            limits.open += 1
            limits.by_client[client] += 1
            super().connection_made(transport)
            self._dfrt_idle_since = time.monotonic()
            self._dfrt_arm(limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            client, self._dfrt_peer = self._dfrt_peer, None
            if client is None:  # refused at accept, or already counted out
                return
            limits.open -= 1
            limits.by_client[client] -= 1
            if limits.by_client[client] <= 0:
                del limits.by_client[client]
            if self._dfrt_timer is not None:
                self._dfrt_timer.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._dfrt_idle_since = time.monotonic()
            super().on_response_complete()

        def _dfrt_arm(self, seconds: float) -> None:
            self._dfrt_timer = self.loop.call_later(max(seconds, 0.01), self._dfrt_check)

        def _dfrt_check(self) -> None:
            self._dfrt_timer = None
            if self._dfrt_peer is None or self.transport is None or self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:  # a request is in the app: its own limits
                self._dfrt_arm(limits.header_timeout)
                return
            waited = time.monotonic() - self._dfrt_idle_since
            if waited < limits.header_timeout:
                self._dfrt_arm(limits.header_timeout - waited)
                return
            limits.timed_out += 1
            log.info("closing a connection from %s: no request head within %g s", self._dfrt_peer,
                     limits.header_timeout)  # fmt: skip
            self.transport.close()

    return Guarded


def server_config(app: Any, host: str, port: int, limits: ConnectionLimits, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` serving ``app`` under ``limits`` (h11, bounded heads, keep-alive 5 s)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_keep_alive=5,
        **kwargs,
    )
