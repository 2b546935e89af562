"""HTTP routes of a watched stream's alert events (:mod:`dfrt.serve.stream_events` keeps them).

``GET /v1/streams/NAME/events``: Server-Sent Events, one per alert event (``id:`` its id, ``event:`` its
kind, ``data:`` its JSON), the kept ones first, after the ``Last-Event-ID`` header's id when the client
resumes; a comment every :data:`KEEPALIVE` seconds; it ends when the client leaves, when a write waits
over :data:`SEND_TIMEOUT` seconds (a client that stopped reading), or when the server stops. At most
``--max-event-clients`` follow at once (503 beyond). ``GET /v1/streams/NAME/events?since=ID``: the kept
events after ``ID`` as JSON. ``GET /v1/streams/NAME/events/ID/thumbnails/K``: a key frame's JPEG.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from dfrt.serve.engine import Engine
from dfrt.serve.errors import ApiError
from dfrt.serve.stream_events import EventStore

POLL_SECONDS = 0.25  # how often a follower looks for new events
KEEPALIVE = 15.0  # seconds between keep-alive comments
SEND_TIMEOUT = 30.0  # seconds one write may take before the client counts as gone
RETRY_MS = 2000  # the reconnection delay EventSource is told
_ID = re.compile(r"[0-9]{1,18}", re.ASCII)


def add_event_routes(app: FastAPI, engine: Engine, authorise: Callable[[Request], None]) -> None:
    """The three routes on ``app`` (authorised as the other ``/v1`` routes)."""

    def store_for(name: str) -> EventStore:
        store = engine.events
        if store is None or name not in store:
            known = ", ".join(sorted(engine.watchers)) or "none"
            raise ApiError(404, f"no stream {name[:64]!r} on this server (streams: {known})", "name",
                           "stream_not_found")  # fmt: skip
        return store

    @app.get("/v1/streams/{name}/events")
    async def events(request: Request, name: str) -> Response:
        authorise(request)
        store = store_for(name)
        query = request.query_params
        if "since" in query:
            since = parse_id(query.get("since"), "since")
            kept, missed = store.after(name, since)
            return JSONResponse({
                "object": "list", "stream": name, "data": [e.record for e in kept], "missed": missed,
                "last_id": kept[-1].id if kept else since,
            })  # fmt: skip
        header = request.headers.get("last-event-id")
        after = 0 if header is None or not header.strip() else parse_id(header.strip(), "Last-Event-ID")
        if store.clients >= store.max_clients:
            raise ApiError(
                503, f"{store.clients} clients already follow stream events (--max-event-clients); "
                "retry later",
                code="too_many_event_clients", headers={"Retry-After": "5"},
            )  # fmt: skip
        store.clients += 1  # on the event loop only; released when the stream ends, however it ends
        return _FollowResponse(
            _follow(store, name, after),
            on_end=lambda: setattr(store, "clients", store.clients - 1),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/streams/{name}/events/{event_id}/thumbnails/{k}")
    async def thumbnail(request: Request, name: str, event_id: str, k: str) -> Response:
        authorise(request)
        store = store_for(name)
        stored = store.get(name, parse_id(event_id, "event id")) if _ID.fullmatch(event_id) else None
        index = int(k) if k.isascii() and k.isdigit() and len(k) <= 3 else -1
        if stored is None or not 0 <= index < len(stored.thumbnails) or not stored.thumbnails[index]:
            raise ApiError(404, f"no thumbnail {k[:8]!r} of event {event_id[:20]!r} on stream {name!r} "
                           "(events are kept in memory: --events-kept)", code="not_found")  # fmt: skip
        return Response(stored.thumbnails[index], media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})  # fmt: skip


def parse_id(text: str | None, param: str) -> int:
    """An event id: decimal digits, at most 18 (400 naming ``param`` otherwise)."""
    if text is None or not _ID.fullmatch(text):
        shown = repr(text[:24]) if text is not None else "nothing"
        raise ApiError(400, f"{param} must be an event id (decimal digits), got {shown}", param,
                       "invalid_event_id")  # fmt: skip
    return int(text)


def frame(record: dict[str, Any]) -> bytes:
    """One event in SSE framing."""
    data = json.dumps(record, separators=(",", ":"))
    return f"id: {record['id']}\nevent: {record['kind']}\ndata: {data}\n\n".encode()


async def _follow(store: EventStore, name: str, after: int) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n: following stream {name}\n\n".encode()
    quiet_since = time.monotonic()
    while not store.closed:
        kept, missed = store.after(name, after)
        if missed and after:  # resumed past events the ring let go: the client should know
            yield b": some events after the Last-Event-ID are no longer kept\n\n"
        for stored in kept:
            yield frame(stored.record)
            after = stored.id
        if kept:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)


class _FollowResponse(StreamingResponse):
    """An event stream whose every write must reach the client within :data:`SEND_TIMEOUT` (a client that
    stops reading is cut), calling ``on_end`` once when it ends, however it ends."""

    def __init__(self, content: AsyncIterator[bytes], on_end: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed(message: Message) -> None:
            await asyncio.wait_for(send(message), SEND_TIMEOUT)

        try:
            await super().__call__(scope, receive, timed)
        except BaseException as e:  # anyio wraps what a task group raised
            if not _holds(e, asyncio.TimeoutError):
                raise
        finally:
            self.on_end()


def _holds(error: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(error, kind):
        return True
    return any(_holds(e, kind) for e in getattr(error, "exceptions", ()))
