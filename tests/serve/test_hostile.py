# ruff: noqa: E501  (the table of hostile requests reads best one case a line)
"""Hostile and broken requests: each gets a 4xx JSON error in OpenAI's shape, and the server keeps serving."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.serve.conftest import API_KEY, SAMPLES, Server, video_message

httpx = pytest.importorskip("httpx")

GOOD = video_message("07-count.mp4", "How many shapes can you see?")


def post(server: Server, body: Any = None, *, raw: bytes | None = None, key: str | None = API_KEY,
         content_type: str = "application/json", headers: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
    sent = {"Content-Type": content_type, **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body).encode()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        return client.post("/v1/chat/completions", content=data, headers=sent)


def chunked(size: int) -> Iterator[bytes]:
    yield b'{"messages": "'
    for _ in range(size // 65536):
        yield b"A" * 65536
    yield b'"}'


def part(kind: str, value: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": kind, kind: value}, {"type": "text", "text": "What?"}]}]


CASES: dict[str, tuple[int, Callable[[Server], httpx.Response]]] = {
    "bad base64": (400, lambda s: post(s, {"messages": part("input_video", {"data": "%%%not base64", "format": "mp4"})})),
    "oversize body by Content-Length": (413, lambda s: post(s, raw=b"{" + b" " * (3 << 20) + b"}")),
    "oversize body streamed (chunked)": (413, lambda s: httpx.post(
        s.url + "/v1/chat/completions", content=chunked(3 << 20),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}, timeout=60)),
    "path escape with ..": (403, lambda s: post(s, {"messages": video_message("../outside/secret.mp4", "What?")})),
    "absolute path outside the root": (403, lambda s: post(s, {"messages": video_message(str(s.outside / "secret.mp4"), "Q")})),
    "file URL outside the root": (403, lambda s: post(s, {"messages": video_message("file:///etc/passwd", "What?")})),
    "symlink out of the media root": (403, lambda s: post(s, {"messages": video_message("escape.mp4", "What?")})),
    "missing file": (404, lambda s: post(s, {"messages": video_message("nope.mp4", "What?")})),
    "unknown content part type": (400, lambda s: post(s, {"messages": part("audio_url", {"url": "x.wav"})})),
    "two videos": (400, lambda s: post(s, {"messages": [{"role": "user", "content": [
        *GOOD[0]["content"], {"type": "video_url", "video_url": {"url": "07-count.mp4"}}]}]})),
    "no video": (400, lambda s: post(s, {"messages": [{"role": "user", "content": "How many shapes?"}]})),
    "invalid JSON": (400, lambda s: post(s, raw=b'{"messages": [')),
    "non-UTF-8 JSON": (400, lambda s: post(s, raw=b'{"messages": "\xff\xfe"}')),
    "JSON that is not an object": (400, lambda s: post(s, raw=b"[1, 2, 3]")),
    "deeply nested JSON": (400, lambda s: post(s, raw=b"[" * 100_000 + b"]" * 100_000)),
    "NaN temperature": (400, lambda s: post(s, raw=b'{"messages": [], "temperature": NaN}')),
    "wrong API key": (401, lambda s: post(s, {"messages": GOOD}, key="wrong-key")),
    "no API key": (401, lambda s: post(s, {"messages": GOOD}, key=None)),
    "remote URL while disallowed": (403, lambda s: post(s, {"messages": video_message("http://127.0.0.1:1/v.mp4", "Q")})),
    "unknown model": (404, lambda s: post(s, {"model": "gpt-9", "messages": GOOD})),
    "negative temperature": (400, lambda s: post(s, {"messages": GOOD, "temperature": -1})),
    "top_p of 0": (400, lambda s: post(s, {"messages": GOOD, "top_p": 0})),
    "max_tokens of 0": (400, lambda s: post(s, {"messages": GOOD, "max_tokens": 0})),
    "seed as a string": (400, lambda s: post(s, {"messages": GOOD, "seed": "7"})),
    "stop of 5 strings": (400, lambda s: post(s, {"messages": GOOD, "stop": ["a", "b", "c", "d", "e"]})),
    "n of 2": (400, lambda s: post(s, {"messages": GOOD, "n": 2})),
    "bad dfrt option": (400, lambda s: post(s, {"messages": GOOD, "dfrt": {"max_frames": 0}})),
    "unknown dfrt option": (400, lambda s: post(s, {"messages": GOOD, "dfrt": {"frames": 3}})),
    "huge message count": (400, lambda s: post(s, {"messages": [{"role": "user", "content": "hi"}] * 5000})),
    "unknown role": (400, lambda s: post(s, {"messages": [{"role": "root", "content": "hi"}]})),
    "wrong Content-Type": (415, lambda s: post(s, {"messages": GOOD}, content_type="text/plain")),
    "data URL of text": (415, lambda s: post(s, {"messages": video_message("data:text/plain;base64,aGVsbG8=", "Q")})),
    "unknown input_video format": (415, lambda s: post(s, {"messages": part("input_video", {"data": "AAAA", "format": "exe"})})),
    "bytes that are not a video": (422, lambda s: post(s, {"messages": part("input_video", {
        "data": base64.b64encode(b"\x00garbage" * 500).decode(), "format": "mp4"})})),
    "truncated mp4": (422, lambda s: post(s, {"messages": part("input_video", {
        "data": base64.b64encode((SAMPLES / "07-count.mp4").read_bytes()[:3000]).decode(), "format": "mp4"})})),
    "tools requested": (400, lambda s: post(s, {"messages": GOOD, "tools": [{"type": "function"}]})),
    "unsupported URL scheme": (400, lambda s: post(s, {"messages": video_message("ftp://host/v.mp4", "Q")})),
    "GET on the chat route": (405, lambda s: httpx.get(s.url + "/v1/chat/completions", timeout=30)),
}  # fmt: skip


def good_request_works(server: Server) -> None:
    reply = post(server, {"messages": GOOD, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].strip()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request_is_a_clear_4xx_and_the_server_keeps_serving(server: Server, name: str) -> None:
    status, send = CASES[name]
    reply = send(server)
    assert reply.status_code == status, reply.text[:300]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    assert str(server.outside) not in error["message"] and "dfrt-serve-" not in error["message"]
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    good_request_works(server)


def test_at_least_15_hostile_kinds() -> None:
    assert len(CASES) >= 15


class SlowPipe:
    """Wraps the engine's pipeline: each streamed piece of the answer takes ``delay`` seconds; the answer
    is long (the demo's answers are a word: here ``pieces`` pieces of it are repeated)."""

    def __init__(self, pipe: Any, delay: float, pieces: int = 40) -> None:
        self.pipe, self.delay, self.pieces, self.emitted = pipe, delay, pieces, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def ask(self, video, question, sampling=None, on_text=None, **kwargs):  # type: ignore[no-untyped-def]
        def slow(piece: str) -> None:
            for _ in range(self.pieces):
                time.sleep(self.delay)
                self.emitted += 1
                on_text(piece)

        return self.pipe.ask(video, question, sampling, slow if on_text else None, **kwargs)


@pytest.fixture
def slow(server: Server) -> Iterator[SlowPipe]:
    engine: Any = server.engine
    original = engine.pipe
    engine.pipe = SlowPipe(original, 0.1)
    try:
        yield engine.pipe
    finally:
        engine.pipe = original


def test_a_client_that_drops_the_stream_midway_stops_its_generation(server: Server, slow: SlowPipe) -> None:
    before = server.metric("dfrt_disconnects_total")
    body = json.dumps({"messages": GOOD, "stream": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:  # the role chunk and two pieces of the answer
            received += sock.recv(65536)
    deadline = time.monotonic() + 10
    while server.metric("dfrt_disconnects_total") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("dfrt_disconnects_total") > before
    time.sleep(0.5)  # the piece in flight when the client left
    stopped_at = slow.emitted
    time.sleep(0.5)
    assert slow.emitted == stopped_at < slow.pieces // 2  # generation stopped, not run to the end
    good_request_works(server)


def test_a_full_queue_is_429_with_retry_after(server: Server, slow: SlowPipe) -> None:
    replies: list[httpx.Response] = []

    def send() -> None:
        replies.append(post(server, {"messages": GOOD}))

    threads = [
        threading.Thread(target=send) for _ in range(4)
    ]  # 1 running + 1 queued (--queue 1) + 2 refused
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 429, 429], statuses
    refused = next(r for r in replies if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert server.metric("dfrt_rejected_total") >= 2


def test_a_request_past_its_timeout_is_504_and_stops(server: Server, slow: SlowPipe, monkeypatch) -> None:
    import dataclasses

    engine: Any = server.engine
    monkeypatch.setattr(engine, "options", dataclasses.replace(engine.options, timeout=1.0))
    reply = post(server, {"messages": GOOD})  # 40 pieces of 0.1 s: 4 s
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "timeout"
    time.sleep(0.5)
    assert slow.emitted < slow.pieces // 2
    monkeypatch.undo()
    good_request_works(server)


def test_an_unexpected_error_is_a_generic_500_and_the_server_keeps_serving(server: Server) -> None:
    engine: Any = server.engine
    original = engine.pipe

    class Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(original, name)

        def ask(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internal detail /srv/x")

    engine.pipe = Broken()
    try:
        reply = post(server, {"messages": GOOD})
    finally:
        engine.pipe = original
    assert reply.status_code == 500
    assert reply.json()["error"]["message"] == "internal server error"
    assert "secret" not in reply.text
    good_request_works(server)
