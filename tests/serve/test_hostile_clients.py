"""Hostile clients and sources against a real ``dfrt serve`` (issue 33): work bounded before it is done, slow
clients and slow sources, no existence oracle, no cache poisoning, options that do what they say, crash
leftovers. Everything on 127.0.0.1 (other loopback addresses stand for other clients); every loop is bounded
in count and time; servers stop at the end of the module."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import API_KEY, SAMPLES, Server, video_message

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

READ_TIMEOUT = 2.0
PER_CLIENT = 4
MAX_CONNECTIONS = 10


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, demo) -> Iterator[Server]:
    """A server under small connection limits, remote media allowed (loopback included: tests only)."""
    from dfrt.serve import ServeOptions, connection_limits, create_app, open_engine, server_config

    bundle, cache = demo
    media = tmp_path_factory.mktemp("media")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copyfile(SAMPLES / "07-count.mp4", media / "07-count.mp4")
    options = ServeOptions(
        bundle=bundle, port=0, media_paths=(media,), api_key=API_KEY, queue=2, max_body_mb=64, timeout=20,
        allow_remote_media=True, allow_private_media=True, remote_timeout=2.0, read_timeout=READ_TIMEOUT,
        max_connections=MAX_CONNECTIONS, max_connections_per_client=PER_CLIENT,
    )  # fmt: skip
    engine = open_engine(options)
    limits = connection_limits(options)
    uv = uvicorn.Server(server_config(create_app(engine), "127.0.0.1", 0, limits, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    server = Server(f"http://127.0.0.1:{port}", engine, media, outside, bundle, cache)
    server.limits = limits  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        uv.should_exit = True
        thread.join(30)
        engine.close()


def post(server: Server, body: Any = None, raw: bytes | None = None, timeout: float = 60) -> httpx.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=timeout) as client:
        return client.post("/v1/chat/completions", content=data, headers=headers)


class HealthProbe:
    """/health asked every 0.1 s from another loopback address while a hostile request runs: its worst."""

    def __init__(self, server: Server) -> None:
        self.url, self.worst, self.answers = server.url, 0.0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        transport = httpx.HTTPTransport(local_address="127.0.0.3")
        with httpx.Client(timeout=30, transport=transport) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                assert client.get(self.url + "/health").status_code == 200
                self.worst, self.answers = max(self.worst, time.monotonic() - start), self.answers + 1
                self.stop.wait(0.1)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- 1. work bounded before it is done ---------------------------------------------------------------------


def test_a_60_mb_json_array_is_refused_at_once_and_health_keeps_answering(guarded: Server) -> None:
    body = b'{"messages": [' + b"0," * (30 << 20) + b"0]}"  # 60 MiB, 31 million values
    before = peak_rss()
    with HealthProbe(guarded) as probe:
        start = time.monotonic()
        reply = post(guarded, raw=body)
        took = time.monotonic() - start
    assert reply.status_code == 400 and "JSON values" in reply.json()["error"]["message"], reply.text[:300]
    assert took < 10, took
    assert probe.answers >= 1 and probe.worst < 1.0, probe.worst
    assert peak_rss() - before < 400 << 20  # the body itself (60 MiB) and its copies, not 1.8 GB of objects


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` whose compressed rows are a few MB of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (8 << 20), 9)  # the first rows; a decoder would allocate the whole image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_a_png_declaring_32000_square_pixels_is_refused_from_its_header(guarded: Server) -> None:
    import base64

    png = png_header_only(32000, 32000)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What?"}]}]  # fmt: skip
    before = peak_rss()
    reply = post(guarded, {"messages": messages})
    assert reply.status_code == 422, reply.text[:300]
    assert "32000x32000" in reply.json()["error"]["message"]
    assert peak_rss() - before < 200 << 20  # no 3 GB image buffer


def test_image_sizes_are_read_from_headers(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from dfrt.serve.media_headers import image_size

    picture = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".webp"):
        ok, data = cv2.imencode(ext, picture)
        assert ok
        assert image_size(data.tobytes())[1:] == (53, 37), ext
    assert image_size(b"GIF89a" + struct.pack("<HH", 53, 37) + b"\0" * 8)[1:] == (53, 37)
    assert image_size(b"II*\0 a TIFF") is None and image_size(b"") is None


def test_a_video_container_declaring_days_is_refused_before_decoding(tmp_path: Path) -> None:
    from dfrt.serve import media_headers as media
    from dfrt.serve.errors import ApiError

    path = tmp_path / "v.mp4"
    shutil.copyfile(SAMPLES / "07-count.mp4", path)
    media.check_video_header(path)  # a normal clip passes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(media, "MAX_VIDEO_FRAMES", 10)
        with pytest.raises(ApiError, match=r"declares .* frames") as refused:
            media.check_video_header(path)
    assert refused.value.status == 422


def test_a_sparse_64_gib_file_in_the_media_root_is_413_at_once(guarded: Server) -> None:
    sparse = guarded.media / "sparse.mp4"
    with open(sparse, "wb") as f:
        f.truncate(64 << 30)
    try:
        start = time.monotonic()
        reply = post(guarded, {"messages": video_message("sparse.mp4", "What?")})
        assert reply.status_code == 413, reply.text[:300]
        assert "--max-media-mb" in reply.json()["error"]["message"]
        assert time.monotonic() - start < 3
    finally:
        sparse.unlink()


def test_a_local_file_read_past_the_deadline_is_504(guarded: Server) -> None:
    from dfrt.serve.errors import ApiError
    from dfrt.serve.schema import MediaRef

    with pytest.raises(ApiError) as late:
        guarded.engine.resolver.resolve(MediaRef("url", "07-count.mp4"), deadline=time.monotonic() - 1)  # type: ignore[attr-defined]
    assert late.value.status == 504


# -- 2. slow clients and slow sources ----------------------------------------------------------------------


def connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect((host, int(port)))
    return sock


def closed(sock: socket.socket, within: float) -> bool:
    """The server closed ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def health_from(server: Server, source: str) -> int:
    with contextlib.closing(connect(server, source)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return int(sock.recv(65536).split(b" ", 2)[1])


def test_slowloris_heads_are_closed_and_capped_per_client_and_in_all(guarded: Server) -> None:
    limits = guarded.limits  # type: ignore[attr-defined]
    refused_before = limits.refused
    socks = [connect(guarded) for _ in range(PER_CLIENT + 6)]  # one client, more than its share
    try:
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # a head never finished
        shut = [closed(s, 0.5) for s in socks]
        assert sum(shut) >= 6 and limits.refused - refused_before >= 6  # over the per-client cap: at once
        assert health_from(guarded, "127.0.0.2") == 200  # another client is answered meanwhile
        start = time.monotonic()
        kept = [s for s, gone in zip(socks, shut, strict=True) if not gone]
        assert all(closed(s, READ_TIMEOUT + 3) for s in kept)  # the slow heads are closed on time
        assert time.monotonic() - start < READ_TIMEOUT + 3
    finally:
        for s in socks:
            s.close()
    # in all: ten clients of one connection each fill the server; the eleventh is refused
    others = [connect(guarded, f"127.0.1.{i}") for i in range(1, MAX_CONNECTIONS + 3)]
    try:
        time.sleep(0.3)
        assert limits.open <= MAX_CONNECTIONS
        assert sum(closed(s, 0.3) for s in others) >= 2
    finally:
        for s in others:
            s.close()
    deadline = time.monotonic() + 5
    while limits.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limits.open == 0 and not limits.by_client  # every connection counted out


def test_a_body_sent_a_byte_every_two_seconds_is_408_within_the_read_timeout(guarded: Server) -> None:
    body = json.dumps({"messages": video_message("07-count.mp4", "What?")}).encode()
    start = time.monotonic()
    with contextlib.closing(connect(guarded)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        sock.settimeout(0.2)
        reply = b""
        for byte in body[:10]:  # at most 10 bytes, 2 s apart: 20 s unbounded, READ_TIMEOUT here
            with contextlib.suppress(OSError):
                sock.sendall(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                reply += sock.recv(65536)
            if reply:
                break
            time.sleep(1.8)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"--read-timeout" in reply
    assert time.monotonic() - start < READ_TIMEOUT + 2.5


@contextlib.contextmanager
def http_source(handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[str]:
    class Quiet(handler):  # type: ignore[misc, valid-type]
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((host, 0), Quiet)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class Trickle(http.server.BaseHTTPRequestHandler):
    """Headers, then one byte a second for at most 20 s."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(20):
            try:
                self.wfile.write(b"\0")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1.0)


def test_a_remote_video_trickling_a_byte_a_second_is_504_at_the_remote_timeout(guarded: Server) -> None:
    with http_source(Trickle) as base:
        start = time.monotonic()
        reply = post(guarded, {"messages": video_message(f"{base}/v.mp4", "What?")})
        took = time.monotonic() - start
    assert reply.status_code == 504, reply.text[:300]
    assert took < 2.0 + 1.5, took  # --remote-timeout 2: the whole fetch, not a read


def redirecting(target: str, hops: list[int]) -> type[http.server.BaseHTTPRequestHandler]:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hops.append(1)
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Redirect


def test_redirects_to_other_schemes_private_addresses_or_without_end_are_refused(
    guarded: Server, monkeypatch
) -> None:
    from dfrt.serve import remote_media

    ftp = socket.socket()
    ftp.bind(("127.0.0.1", 0))
    ftp.listen(1)
    try:
        hops: list[int] = []
        with http_source(redirecting(f"ftp://127.0.0.1:{ftp.getsockname()[1]}/x.mp4", hops)) as base:
            reply = post(guarded, {"messages": video_message(f"{base}/v.mp4", "Q")})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "remote_media_refused", (
            reply.text
        )
        ftp.settimeout(0.2)
        with pytest.raises(TimeoutError):
            ftp.accept()  # the ftp listener was never reached
    finally:
        ftp.close()
    # 127.0.0.2 stands for a public address; 127.0.0.1 stays private: the redirect is checked again
    monkeypatch.setattr(guarded.engine.resolver, "allow_private", False)  # type: ignore[attr-defined]
    monkeypatch.setattr(remote_media, "_public", lambda address: address == "127.0.0.2")
    with contextlib.ExitStack() as stack:
        private = stack.enter_context(http_source(Trickle))
        public = stack.enter_context(http_source(redirecting(f"{private}/v.mp4", hops), host="127.0.0.2"))
        reply = post(guarded, {"messages": video_message(f"{public}/v.mp4", "Q")})
    assert reply.status_code == 403 and reply.json()["error"]["code"] == "remote_media_refused", reply.text
    hops.clear()
    with http_source(redirecting("/again", hops), host="127.0.0.2") as public:  # a loop to itself
        reply = post(guarded, {"messages": video_message(f"{public}/v.mp4", "Q")})
    assert reply.status_code == 400 and "redirects" in reply.json()["error"]["message"], reply.text
    assert len(hops) == remote_media.MAX_REDIRECTS + 1


def test_loopback_urls_are_refused_unless_private_media_is_allowed(guarded: Server, monkeypatch) -> None:
    monkeypatch.setattr(guarded.engine.resolver, "allow_private", False)  # type: ignore[attr-defined]
    for url in ("http://127.0.0.1:9/v.mp4", "http://[::1]:9/v.mp4", "http://169.254.169.254/latest",
                "http://10.0.0.1/v.mp4", "http://0.0.0.0:9/v.mp4"):  # fmt: skip
        reply = post(guarded, {"messages": video_message(url, "Q")})
        assert reply.status_code == 403, (url, reply.text)


# -- 3. no oracle, no poisoning ----------------------------------------------------------------------------


def test_paths_outside_the_roots_answer_the_same_whether_or_not_they_exist(guarded: Server, tmp_path) -> None:
    (guarded.media / "to-existing.mp4").symlink_to("/etc/passwd")
    (guarded.media / "to-missing.mp4").symlink_to("/etc/no-such-file-dfrt")
    pairs = [
        ("/etc/passwd", "/etc/no-such-file-dfrt"),
        ("file:///etc/passwd", "file:///etc/no-such-file-dfrt"),
        ("../../../../etc/passwd", "../../../../etc/no-such-file-dfrt"),
        ("to-existing.mp4", "to-missing.mp4"),
        (str(guarded.media / ".." / "x"), str(guarded.media / ".." / "no-such-dfrt")),
    ]
    try:
        for existing, missing in pairs:
            a = post(guarded, {"messages": video_message(existing, "Q")})
            b = post(guarded, {"messages": video_message(missing, "Q")})
            assert a.status_code == b.status_code == 403, (existing, a.text, b.text)
            assert a.json()["error"]["message"] == b.json()["error"]["message"]
    finally:
        (guarded.media / "to-existing.mp4").unlink()
        (guarded.media / "to-missing.mp4").unlink()


def test_a_file_rewritten_in_place_after_its_check_cannot_poison_the_cache(guarded: Server) -> None:
    from dfrt.serve.schema import MediaRef

    resolver: Any = guarded.engine.resolver  # type: ignore[attr-defined]
    target = guarded.media / "swap.mp4"
    a, b = (SAMPLES / "07-count.mp4").read_bytes(), (SAMPLES / "01-brief-colour.mp4").read_bytes()
    target.write_bytes(a)
    try:
        source = resolver.resolve(MediaRef("url", "swap.mp4"))
        with open(target, "r+b") as f:  # the same inode, B's bytes: rename would not be needed
            f.write(b)
            f.truncate(len(b))
        with resolver.materialized(source) as path:
            decoded = path.read_bytes()
        source.close()
        assert source.sha256 == hashlib.sha256(a).hexdigest() == hashlib.sha256(decoded).hexdigest()
    finally:
        target.unlink()


# -- 4. options that do what they say ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [" key-123", "key-123 ", "clé-123", "key 123", "key\t123", "kéy", "\x7f"])
def test_api_keys_no_client_can_send_are_refused_at_start(key: str) -> None:
    from dfrt.errors import ConfigError
    from dfrt.serve import ServeOptions, check_options

    with pytest.raises(ConfigError, match="--api-key"):
        check_options(ServeOptions(api_key=key))


CLI = "import sys; from dfrt.cli import main; sys.exit(main())"


def test_the_cli_refuses_an_unsendable_api_key_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLI, "serve", "--api-key", "clé secrète"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "DFRT_API_KEY": ""},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("dfrt: error: --api-key"), done.stderr


class SlowAnswers:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def ask(self, video, question, sampling=None, on_text=None, **kwargs):  # type: ignore[no-untyped-def]
        def slow(piece: str) -> None:
            for _ in range(30):
                time.sleep(0.1)
                on_text(piece)

        return self.pipe.ask(video, question, sampling, slow if on_text else None, **kwargs)


def metric(server: Server, name: str) -> float:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    text = httpx.get(server.url + "/metrics", headers=headers, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_client_disconnect_is_counted_once_and_not_as_a_timeout(guarded: Server, monkeypatch) -> None:
    engine: Any = guarded.engine
    monkeypatch.setattr(engine, "pipe", SlowAnswers(engine.pipe))
    disconnects, timeouts = metric(guarded, "dfrt_disconnects_total"), metric(guarded, "dfrt_timeouts_total")
    body = json.dumps({"messages": video_message("07-count.mp4", "How many shapes?")}).encode()
    with contextlib.closing(connect(guarded)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(1.0)  # answering, slowly
    deadline = time.monotonic() + 10
    while metric(guarded, "dfrt_disconnects_total") == disconnects and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert metric(guarded, "dfrt_disconnects_total") == disconnects + 1
    assert metric(guarded, "dfrt_timeouts_total") == timeouts
    monkeypatch.undo()
    time.sleep(1.0)  # the worker's piece in flight


# -- 5. crash leftovers ------------------------------------------------------------------------------------


def test_a_killed_servers_temporary_copies_are_removed_at_the_next_start(tmp_path: Path, monkeypatch) -> None:
    from dfrt.serve.media import remove_dead_leftovers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    left = tmp_path / f"dfrt-serve-{dead.pid}-abcd1234"
    left.mkdir()
    (left / "video.mp4").write_bytes(b"uploaded video bytes")
    live = tmp_path / f"dfrt-serve-{os.getppid()}-abcd1234"  # a running process's (pytest's parent)
    live.mkdir()
    foreign = tmp_path / "dfrt-serve-notes"
    foreign.mkdir()
    assert remove_dead_leftovers(tmp_path) == [left.name]
    assert not left.exists() and live.exists() and foreign.exists()


def test_a_server_killed_while_decoding_leaves_nothing_after_the_next_start(tmp_path: Path) -> None:
    """A real server process killed (SIGKILL) while a request's upload is being decoded; the next start
    removes its folder."""
    script = f"""
import sys, time, tempfile
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from dfrt.serve.media import MediaResolver, Source
resolver = MediaResolver(temp_dir=None)
source = Source("0" * 64, ".mp4", data=open({str(SAMPLES / "07-count.mp4")!r}, "rb").read())
with resolver.materialized(source) as path:
    print(path.parent, flush=True)
    time.sleep(60)
"""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        folder = Path(child.stdout.readline().strip())  # type: ignore[union-attr]
        assert folder.is_dir() and folder.parent == tmp_path
    finally:
        child.kill()
        child.wait(30)
    assert folder.is_dir()  # what a killed server leaves
    from dfrt.serve.media import remove_dead_leftovers

    assert remove_dead_leftovers(tmp_path) == [folder.name] and not folder.exists()
