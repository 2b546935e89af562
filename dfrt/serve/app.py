"""The HTTP app (FastAPI/Starlette): OpenAI-compatible chat completions about a video, health, metrics, page.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health`` (with each watched stream's
state), ``GET /metrics`` (Prometheus text), ``GET /v1/streams/NAME/events`` (alert events,
:mod:`dfrt.serve.event_routes`), ``GET /`` (the try-it page). Every error is JSON in OpenAI's
shape; an unexpected one is a generic 500 whose traceback stays in the server's log. Pipeline work runs in
the engine's worker thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dfrt import __version__
from dfrt.serve.engine import Engine, Job, Outcome
from dfrt.serve.errors import ApiError, Cancelled
from dfrt.serve.hosts import HostCheck
from dfrt.serve.schema import ChatRequest, parse_body, parse_request

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there
SEND_GRACE = 1.0  # seconds a streamed chunk may still take to reach a slow reader past the deadline


def create_app(engine: Engine) -> FastAPI:
    """The app serving ``engine`` (which the caller owns and closes)."""
    app = FastAPI(title="dfrt serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    options, metrics = engine.options, engine.metrics
    max_body = int(options.max_body_mb * (1 << 20))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path[:100]}", 405: "method not allowed"}.get(
            error.status_code, str(error.detail)
        )
        return _error_response(ApiError(error.status_code, message))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error_response(ApiError(500, "internal server error", code="internal_error"))

    def authorise(request: Request) -> None:
        if options.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), options.api_key.encode()
        ):
            raise ApiError(
                401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    @app.get("/health")
    async def health() -> dict[str, Any]:
        queued = engine.pending - engine.running
        return {"status": "ok", "model": engine.model_id, "queue_depth": queued, "streams": engine.streams()}

    @app.get("/metrics")
    async def prometheus(request: Request) -> PlainTextResponse:
        authorise(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    entry = {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "dfrt"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorise(request)
        return {"object": "list", "data": [entry]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> dict[str, Any]:
        authorise(request)
        if model_id != engine.model_id:
            raise ApiError(404, f"no model {model_id[:80]!r}: this server runs {engine.model_id!r}",
                           "model", "model_not_found")  # fmt: skip
        return entry

    @app.get("/props")
    async def props(request: Request) -> dict[str, Any]:
        authorise(request)
        return engine.props()

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/samples")
    async def samples() -> dict[str, Any]:
        """The demo's sample clips and their questions, for the page (public, like the page)."""
        from dfrt.serve.samples import list_samples

        return {"samples": await asyncio.to_thread(list_samples)}

    @app.get("/samples/{name}")
    async def sample(name: str) -> Response:
        from dfrt.serve.samples import sample_path

        path = await asyncio.to_thread(sample_path, name)
        if path is None:
            raise ApiError(404, f"no sample {name[:60]!r}", "name", "not_found")
        data = await asyncio.to_thread(path.read_bytes)
        return Response(data, media_type="video/mp4", headers={"Cache-Control": "max-age=3600"})

    from dfrt.serve.event_routes import add_event_routes

    add_event_routes(app, engine, authorise)  # /v1/streams/NAME/events...: live streams' alert events

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = (resources.files("dfrt.serve") / "static" / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        deadline = time.monotonic() + engine.options.timeout  # every stage below observes it
        authorise(request)
        reading = min(engine.options.timeout, engine.options.read_timeout)  # a slow body ends here
        try:
            raw = await asyncio.wait_for(_read_body(request, max_body), reading)
        except asyncio.TimeoutError:
            engine.metrics.inc("dfrt_timeouts_total", "requests past their --timeout")
            flag = "--read-timeout" if reading < engine.options.timeout else "--timeout"
            message = f"the request body did not arrive within {reading:g} s ({flag})"
            raise ApiError(408, message, code="timeout") from None
        # bounded (size, depth, element count) and off the event loop: /health answers meanwhile
        parsed = await asyncio.to_thread(_parse, raw)
        if parsed.model not in (None, engine.model_id):
            raise ApiError(
                404, f"model {parsed.model[:60]!r} does not exist; this server serves {engine.model_id!r}",
                "model", "model_not_found",
            )  # fmt: skip
        stream = engine.stream_for(parsed.media)  # stream://NAME: a watched stream (404 unknown, 503 empty)
        if engine.pending >= engine.capacity:
            metrics.inc("dfrt_rejected_total", "requests refused with 429 (queue full)")
            raise ApiError(
                429, f"the server is busy ({engine.pending} requests queued or running); retry later",
                code="queue_full", headers={"Retry-After": str(engine.retry_after())},
            )  # fmt: skip
        engine.pending += 1  # a slot is held from here until the worker is done with this request
        try:
            source = None
            if not stream:  # a remote fetch or a large local file's hash: within the deadline too
                resolving = asyncio.to_thread(engine.resolver.resolve, parsed.media, deadline)
                try:
                    source = await asyncio.wait_for(resolving, max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise _timeout(engine, engine.options.timeout) from None
            job = Job(parsed, source, deadline, stream=stream)
        except BaseException:
            engine.pending -= 1
            raise
        if parsed.stream:
            return await _stream(engine, request, job)
        return await _complete(engine, request, job)

    return _Counted(app, engine, HostCheck(options.host, options.allowed_hosts))  # type: ignore[return-value]


def _submit(engine: Engine, job: Job) -> asyncio.Future[Outcome]:
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(engine.executor, engine.work, job)

    def release(done: asyncio.Future[Outcome]) -> None:
        engine.pending -= 1
        if not done.cancelled():
            done.exception()  # retrieved: an abandoned request's Cancelled is not an unhandled error

    future.add_done_callback(release)
    return future


async def _complete(engine: Engine, request: Request, job: Job) -> JSONResponse:
    future = _submit(engine, job)
    outcome = await _wait(engine, request, job, future)
    body = _completion(engine, job.request, outcome)
    return JSONResponse(body)


async def _wait(engine: Engine, request: Request, job: Job, future: asyncio.Future[Outcome]) -> Outcome:
    """The worker's outcome; stops the job when the client leaves or the deadline passes."""
    while True:
        done, _ = await asyncio.wait({future}, timeout=POLL_SECONDS)
        if done:
            break
        if time.monotonic() > job.deadline:
            job.stop("timeout")
            break
        if await request.is_disconnected():
            job.stop("disconnected")
            engine.metrics.inc("dfrt_disconnects_total", "clients gone before their answer")
            break
    if job.cancel.is_set() and not future.done():  # counted above, once, as what it is
        if job.reason == "disconnected":
            raise ApiError(499, "client closed the request")
        raise _timeout(engine, engine.options.timeout)
    try:
        return future.result()
    except Cancelled as e:
        raise (
            _timeout(engine, engine.options.timeout)
            if e.reason == "timeout"
            else ApiError(499, "client closed the request")
        ) from None


def _timeout(engine: Engine, seconds: float) -> ApiError:
    engine.metrics.inc("dfrt_timeouts_total", "requests past their --timeout")
    return ApiError(504, f"the request took longer than {seconds:g} s", code="timeout")


async def _stream(engine: Engine, request: Request, job: Job) -> Response:
    """Server-sent events; errors found before the first token are a normal JSON error response."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    job.emit = lambda kind, value: loop.call_soon_threadsafe(events.put_nowait, (kind, value))
    future = _submit(engine, job)
    future.add_done_callback(lambda f: events.put_nowait(("done", None)))
    first = await _next_event(engine, request, job, events)
    if first[0] == "timeout":  # nothing sent yet (queued, decoding, prefilling): a 504 as without stream
        raise _timeout(engine, engine.options.timeout)
    if first[0] == "gone":
        raise ApiError(499, "client closed the request")
    if first[0] == "done":  # finished (or failed) before any text: errors keep their status
        outcome = await _wait(engine, request, job, future)
        first = ("done", outcome)
    return _TimedStream(
        _sse(engine, request, job, future, events, first),
        job.deadline + SEND_GRACE,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _next_event(
    engine: Engine, request: Request, job: Job, events: asyncio.Queue[tuple[str, Any]]
) -> tuple[str, Any]:
    """The worker's next event, or ``("timeout", None)`` once the deadline passes and ``("gone", None)``
    when the client leaves (the job is stopped then; its worker ends at its next check)."""
    while True:
        left = job.deadline - time.monotonic()
        if left <= 0:
            job.stop("timeout")
            return ("timeout", None)
        try:
            return await asyncio.wait_for(events.get(), min(POLL_SECONDS, left))
        except asyncio.TimeoutError:
            if time.monotonic() <= job.deadline and await request.is_disconnected():
                job.stop("disconnected")
                engine.metrics.inc("dfrt_disconnects_total", "clients gone before their answer")
                return ("gone", None)


async def _sse(
    engine: Engine,
    request: Request,
    job: Job,
    future: asyncio.Future[Outcome],
    events: asyncio.Queue[tuple[str, Any]],
    first: tuple[str, Any],
) -> AsyncIterator[bytes]:
    chat = job.request
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": engine.model_id}
        return _event({**body, "choices": [choice], **extra})

    try:
        yield chunk({"role": "assistant", "content": ""})
        event = first
        while event[0] == "text":
            yield chunk({"content": event[1]})
            event = await _next_event(engine, request, job, events)
        if event[0] == "timeout":  # mid-answer: the stream ends now, not at the worker's next token
            raise _timeout(engine, engine.options.timeout)
        if event[0] == "gone":
            return
        outcome = event[1] if event[1] is not None else await _wait(engine, request, job, future)
        yield chunk({}, outcome.finish_reason, dfrt=outcome.dfrt)
        if chat.include_usage:
            yield _event({"id": cid, "object": "chat.completion.chunk", "created": created,
                          "model": engine.model_id, "choices": [], "usage": outcome.usage})  # fmt: skip
    except ApiError as error:  # after the stream began: an error event (the status is already 200)
        engine.metrics.inc("dfrt_errors_total", "error responses", code=str(error.status))
        yield _event(error.body())
    finally:
        if not future.done() and not job.cancel.is_set():
            job.stop("disconnected")
            engine.metrics.inc("dfrt_disconnects_total", "clients gone before their answer")
    yield b"data: [DONE]\n\n"


class _TimedStream(StreamingResponse):
    """A streaming response whose every write must reach the client by ``deadline``: a reader that stops
    reading holds the connection until then, not forever (the stream is cut, the request counted)."""

    def __init__(self, content: AsyncIterator[bytes], deadline: float, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), max(self.deadline - time.monotonic(), 0.0) + 0.05)
            except asyncio.TimeoutError:
                raise _SlowReader from None

        try:
            await super().__call__(scope, receive, timed)
        except _SlowReader:
            log.warning("a streaming client stopped reading: its response was cut at the deadline")
        except BaseException as e:  # anyio wraps what a task group raised
            if not _holds(e, _SlowReader):
                raise
            log.warning("a streaming client stopped reading: its response was cut at the deadline")


class _SlowReader(Exception):
    """A streamed chunk could not be written before the request's deadline."""


def _holds(error: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(error, kind):
        return True
    return any(_holds(e, kind) for e in getattr(error, "exceptions", ()))


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _completion(engine: Engine, chat: ChatRequest, outcome: Outcome) -> dict[str, Any]:
    message = {"role": "assistant", "content": outcome.text}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": engine.model_id,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": outcome.finish_reason}
        ],
        "usage": outcome.usage,
        "dfrt": outcome.dfrt,
    }


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) by its Content-Length or once it grows past ``limit``; JSON only (415)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise ApiError(
            415,
            f"Content-Type must be application/json, got {kind[:60] or 'none'!r}",
            code="unsupported_media_type",
        )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(
            413,
            f"the request is {length[:20]} bytes, the limit is {limit} (--max-body-mb)",
            code="request_too_large",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413,
                f"the request is over the limit of {limit} bytes (--max-body-mb)",
                code="request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> ChatRequest:
    return parse_request(parse_body(raw))


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class _Counted:
    """ASGI wrapper counting responses per route and status (``dfrt_requests_total``, ``dfrt_errors_total``)
    and timing them (``dfrt_request_seconds``)."""

    def __init__(self, app: ASGIApp, engine: Engine, hosts: HostCheck) -> None:
        self.app = app
        self.engine = engine
        self.hosts = hosts
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
            if not self.hosts.allows(host):  # before any route: a rebound name reaches nothing
                refused = ApiError(403, HostCheck.refusal(host or ""), code="host_not_allowed")
                await _error_response(refused)(scope, receive, counting_send)
                return
            await self.app(scope, receive, counting_send)
        finally:
            path = scope.get("path", "")
            route = (
                path
                if path in ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions")
                else "other"
            )
            metrics = self.engine.metrics
            metrics.inc(
                "dfrt_requests_total", "HTTP requests by route and status", route=route, status=str(status[0])
            )
            if status[0] >= 400:
                metrics.inc("dfrt_errors_total", "error responses", code=str(status[0]))
            if route == "/v1/chat/completions":
                metrics.observe(
                    "dfrt_request_seconds", "chat completion latency", time.perf_counter() - start
                )
