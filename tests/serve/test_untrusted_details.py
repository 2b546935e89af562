"""Untrusted input, part 3b: DNS rebinding (the Host check), media roots opened at a descriptor, deadlines in
every stage of a streaming request, request fields as OpenAI defines them; on the module's loopback server."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import API_KEY, SAMPLES, Server, video_message
from tests.serve.test_hostile import GOOD, good_request_works, post

httpx = pytest.importorskip("httpx")
cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")


# -- 1. DNS rebinding: only the bound address's names -------------------------------------------------------


@pytest.mark.parametrize("route", ["/health", "/", "/v1/models", "/v1/chat/completions"])
def test_a_rebound_host_name_reaches_no_route(server: Server, route: str) -> None:
    headers = {"Host": "attacker.example", "Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = client.request("POST" if "chat" in route else "GET", route, headers=headers, json={})
    assert reply.status_code == 403, reply.text[:200]
    error = reply.json()["error"]
    assert error["code"] == "host_not_allowed" and "--allowed-hosts" in error["message"]


@pytest.mark.parametrize(
    "host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "app.localhost", None]
)
def test_the_bound_names_and_ip_addresses_are_answered(server: Server, host: str | None) -> None:
    port = server.url.rsplit(":", 1)[1]
    with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as sock:
        line = "" if host is None else f"Host: {host.format(port=port)}\r\n"
        version = "1.0" if host is None else "1.1"  # HTTP/1.0 may send no Host at all
        sock.sendall(f"GET /health HTTP/{version}\r\n{line}Connection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_allowed_hosts_adds_names_and_domains() -> None:
    from dfrt.errors import ConfigError
    from dfrt.serve.hosts import HostCheck, check_allowed_hosts

    check = HostCheck("127.0.0.1", ("dfrt.lan", ".corp.example"))
    assert check.allows("dfrt.lan:8080") and check.allows("DFRT.LAN.") and check.allows("corp.example")
    assert check.allows("gpu.corp.example:80") and check.allows("10.0.0.5:8080") and check.allows("[fe80::1]")
    assert not check.allows("evil.example") and not check.allows("corp.example.evil.example")
    assert not check.allows("dfrt.lan:notaport") and not check.allows("localhost.evil.example")
    assert HostCheck("127.0.0.1", ("*",)).allows("anything.example")
    assert HostCheck("myhost", ()).allows("myhost:8080")
    with pytest.raises(ConfigError, match="--allowed-hosts"):
        check_allowed_hosts(["bad name/with slash"])


# -- 2. media roots opened relative to a descriptor taken at start, links never followed -------------------


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Any, Path, Path]]:
    from dfrt.serve.media import MediaResolver

    media, outside = tmp_path / "media", tmp_path / "outside"
    (media / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copyfile(SAMPLES / "07-count.mp4", media / "sub" / "clip.mp4")
    shutil.copyfile(SAMPLES / "01-brief-colour.mp4", outside / "clip.mp4")  # different bytes, same name
    resolver = MediaResolver([media])
    try:
        yield resolver, media, outside
    finally:
        resolver.close()


def test_a_folder_swapped_for_a_link_while_queued_changes_nothing(roots) -> None:
    """Observed before: the checked path was opened again at decode time, through the new link."""
    from dfrt.serve.schema import MediaRef

    resolver, media, outside = roots
    inside = hashlib.sha256((media / "sub" / "clip.mp4").read_bytes()).hexdigest()
    source = resolver.resolve(MediaRef("url", "sub/clip.mp4"))  # checked (the request is queued now)
    (media / "sub").rename(media / "old")
    (media / "sub").symlink_to(outside, target_is_directory=True)
    try:
        with resolver.materialized(source) as path:  # what the decoder opens
            decoded = hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        source.close()
    assert decoded == source.sha256 == inside
    with pytest.raises(Exception, match="symbolic link") as refused:  # a new request: refused at the link
        resolver.resolve(MediaRef("url", "sub/clip.mp4"))
    assert refused.value.status == 403  # type: ignore[attr-defined]


def test_a_root_renamed_and_replaced_by_a_link_keeps_serving_the_root_taken_at_start(roots) -> None:
    from dfrt.serve.schema import MediaRef

    resolver, media, outside = roots
    media.rename(media.with_name("moved"))
    media.symlink_to(outside, target_is_directory=True)
    source = resolver.resolve(MediaRef("url", str(media / "sub" / "clip.mp4")))
    try:
        assert source.sha256 == hashlib.sha256((SAMPLES / "07-count.mp4").read_bytes()).hexdigest()
    finally:
        source.close()


def test_a_symlinked_folder_inside_the_root_is_refused_over_http(server: Server) -> None:
    link = server.media / "linked"
    link.symlink_to(server.outside, target_is_directory=True)
    try:
        reply = post(server, {"messages": video_message("linked/secret.mp4", "What?")})
    finally:
        link.unlink()
    assert reply.status_code == 403, reply.text
    assert "symbolic link" in reply.json()["error"]["message"]
    assert str(server.outside) not in reply.text


def test_descriptors_are_released_after_each_request(server: Server) -> None:
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    for _ in range(3):
        good_request_works(server)
    after = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    assert after <= before + 2, (before, after)


# -- 3. deadlines in every stage of a streaming request ----------------------------------------------------


class SlowStages:
    """Wraps the engine's pipeline: decoding takes ``decode`` seconds; after its first piece of text the
    answer stalls ``stall`` seconds (a slow token)."""

    def __init__(self, pipe: Any, decode: float = 0.0, stall: float = 0.0) -> None:
        self.pipe, self.decode, self.stall = pipe, decode, stall

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def load_video(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.decode)
        return self.pipe.load_video(*args, **kwargs)

    def ask(self, video, question, sampling=None, on_text=None, **kwargs):  # type: ignore[no-untyped-def]
        stalled = [False]

        def stalling(piece: str) -> None:
            on_text(piece)
            if piece.strip() and not stalled[0]:  # once, after the first piece with text
                stalled[0] = True
                time.sleep(self.stall)

        return self.pipe.ask(video, question, sampling, stalling if on_text else None, **kwargs)


@pytest.fixture
def slow_stages(server: Server, monkeypatch) -> Iterator[SlowStages]:
    engine: Any = server.engine
    stages = SlowStages(engine.pipe)
    monkeypatch.setattr(engine, "pipe", stages)
    monkeypatch.setattr(engine, "options", dataclasses.replace(engine.options, timeout=1.0))
    yield stages
    monkeypatch.undo()
    time.sleep(max(stages.decode, stages.stall))  # the worker finishes its stage before the next test


def test_a_streaming_request_gets_its_504_on_time_during_a_long_decode(server: Server, slow_stages) -> None:
    slow_stages.decode = 4.0
    body = {"messages": GOOD, "stream": True, "dfrt": {"max_frames": 29}}  # not in the cache
    start = time.monotonic()
    reply = post(server, body)
    took = time.monotonic() - start
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "timeout"
    assert took < 2.5, took  # --timeout 1: not after the 4 s decode


def test_a_stream_stalled_mid_answer_ends_with_a_timeout_event_on_time(
    server: Server, slow_stages, monkeypatch
) -> None:
    engine: Any = server.engine
    body = {"messages": GOOD, "stream": True, "temperature": 0, "dfrt": {"max_frames": 27}}
    monkeypatch.setattr(engine, "options", dataclasses.replace(engine.options, timeout=60.0))
    assert post(server, {**body, "stream": False}).status_code == 200  # decoded and cached: the first token
    monkeypatch.setattr(engine, "options", dataclasses.replace(engine.options, timeout=2.0))  # comes at once
    slow_stages.stall = 6.0
    start = time.monotonic()
    reply = post(server, body)
    took = time.monotonic() - start
    assert reply.status_code == 200, reply.text
    events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout", events
    assert took < 4.0, took  # --timeout 2: not after the 6 s stall


def test_a_request_body_that_never_finishes_is_408_within_the_timeout(server: Server, slow_stages) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"messages": '  # and nothing more
        )
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert time.monotonic() - start < 3.0


# -- 4. request fields as OpenAI defines them ----------------------------------------------------------------


def test_max_completion_tokens_null_leaves_max_tokens() -> None:
    from dfrt.serve.schema import parse_request

    body = {"messages": GOOD, "max_tokens": 3, "max_completion_tokens": None}
    assert parse_request(body).sampling.max_tokens == 3
    assert parse_request({**body, "max_completion_tokens": 5}).sampling.max_tokens == 5


def test_max_completion_tokens_null_over_http(server: Server) -> None:
    reply = post(server, {"messages": GOOD, "max_tokens": 1, "max_completion_tokens": None, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 1


CLIP_B64 = base64.b64encode((SAMPLES / "07-count.mp4").read_bytes()).decode()


@pytest.mark.parametrize(
    "prefix", ["DATA:VIDEO/MP4;BASE64,", "Data:Video/Mp4;Base64,", "data:video/mp4;codecs=avc1;base64,"]
)
def test_data_urls_are_case_insensitive(server: Server, prefix: str) -> None:
    reply = post(server, {"messages": video_message(prefix + CLIP_B64, "How many shapes?"), "temperature": 0})
    assert reply.status_code == 200, reply.text[:300]


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("DATA:TEXT/PLAIN;BASE64," + CLIP_B64, 415),
        ("DATA:VIDEO/MP4," + CLIP_B64, 400),
        (CLIP_B64[:3000], 404),
    ],
)
def test_errors_never_echo_the_base64(server: Server, url: str, status: int) -> None:
    reply = post(server, {"messages": video_message(url, "Q")})
    assert reply.status_code == status, reply.text[:300]
    message = reply.json()["error"]["message"]
    assert CLIP_B64[:100] not in message and len(message) < 300, message


def png(width: int, height: int) -> str:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 2] = 255  # red
    ok, data = cv2.imencode(".png", image)
    assert ok
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode()


def image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What colour is it?"}]}]  # fmt: skip


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 7), (9, 1), (3, 3)])
def test_a_tiny_valid_image_is_answered_as_a_one_frame_video(server: Server, width: int, height: int) -> None:
    reply = post(server, {"messages": image_message(png(width, height)), "temperature": 0, "max_tokens": 4})
    assert reply.status_code == 200, reply.text[:300]
    assert reply.json()["dfrt"]["video"]["sampled_frames"] == 1


def test_an_image_too_elongated_is_refused_with_its_size(server: Server) -> None:
    reply = post(server, {"messages": image_message(png(1, 200))})
    assert reply.status_code == 422, reply.text[:300]
    message = reply.json()["error"]["message"]
    assert "1x200 pixels" in message and "not found" not in message, message
