"""Peak memory and /health latency of ``dfrt serve`` while each hostile request of issue 33 runs.

    python benchmarks/hostile_serve.py

Starts ``dfrt serve`` (the demo bundle) as a child process on a free loopback port, then for each case resets
the child's peak RSS (``/proc/PID/clear_refs``), runs the hostile request while ``/health`` is asked every
50 ms from another connection, and prints the case's status, its time, the worst ``/health`` wait and the
child's peak RSS. Loopback only; every loop bounded.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx

CLI = "import sys; from dfrt.cli import main; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    return 0


def reset_hwm(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Probe(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.worst, self.refused, self.stop = url, 0.0, 0, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=120, transport=httpx.HTTPTransport(local_address="127.0.0.3")) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    client.get(self.url + "/health")
                except httpx.HTTPError:
                    self.refused += 1
                self.worst = max(self.worst, time.monotonic() - start)
                self.stop.wait(0.05)


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (64 << 20), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def chat(url: str, video: str, kind: str = "video_url") -> bytes:
    content = [{"type": kind, kind: {"url": video}}, {"type": "text", "text": "What?"}]
    return json.dumps({"messages": [{"role": "user", "content": content}]}).encode()


def post(url: str, body: bytes) -> str:
    with httpx.Client(timeout=300) as client:
        r = client.post(
            url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
    return str(r.status_code)


class Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(200):
            try:
                self.wfile.write(b"\0")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1.0)

    def log_message(self, *args: object) -> None:
        pass


def half_open(url: str, count: int, spread: bool) -> str:
    """``count`` connections that never send a byte (from one address, or each from its own); then how long
    until a new client's /health is answered."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind((f"127.0.{2 + i // 200}.{1 + i % 200}" if spread else "127.0.1.1", 0))
        with contextlib.suppress(OSError):
            s.connect((host, int(port)))
        socks.append(s)
    start = time.monotonic()
    answered = None
    with httpx.Client(timeout=5, transport=httpx.HTTPTransport(local_address="127.0.0.4")) as client:
        while answered is None and time.monotonic() - start < 90:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/health").status_code == 200:
                    answered = time.monotonic() - start
            time.sleep(0.2)
    for s in socks:
        s.close()
    return "never (90 s)" if answered is None else f"a new client answered after {answered:.1f} s"


def slow_body(url: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        s.sendall(head.encode() + b"Content-Length: 1000\r\n\r\n")
        s.settimeout(2.0)
        start = time.monotonic()
        while time.monotonic() - start < 120:
            with contextlib.suppress(OSError):
                s.sendall(b" ")
            try:
                reply = s.recv(4096)
                return reply.split(b"\r\n", 1)[0].decode() + f" after {time.monotonic() - start:.1f} s"
            except TimeoutError:
                continue
    return "open after 120 s"


def main() -> int:
    media = Path(tempfile.mkdtemp(prefix="dfrt-bench-media-"))
    with open(media / "sparse.mp4", "wb") as f:
        f.truncate(64 << 30)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", "--port", str(port), "--media-path", str(media),
         "--timeout", "3", "--allow-remote-media", "--allow-private-media", "--remote-timeout", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    trickle = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    trickle.daemon_threads = True
    threading.Thread(target=trickle.serve_forever, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.5)
        big_png = "data:image/png;base64," + base64.b64encode(png(32000, 32000)).decode()
        cases = {
            "60 MB JSON array": lambda: post(url, b'{"messages": [' + b"0," * (30 << 20) + b"0]}"),
            "PNG declaring 32000x32000": lambda: post(url, chat(url, big_png, "image_url")),
            "64 GiB sparse file in the media root (--timeout 3)": lambda: post(url, chat(url, "sparse.mp4")),
            "remote URL trickling 1 byte/s (--remote-timeout 5)": lambda: post(
                url, chat(url, f"http://127.0.0.1:{trickle.server_address[1]}/v.mp4")
            ),
            "body at 1 byte / 2 s": lambda: slow_body(url),
            "1,100 silent connections from one address": lambda: half_open(url, 1100, False),
            "1,100 silent connections from 1,100 addresses": lambda: half_open(url, 1100, True),
        }
        print("| case | answer | time (s) | worst /health (s), refused | server peak RSS (MiB) |")
        print("|---|---|---|---|---|")
        for name, run in cases.items():
            reset_hwm(server.pid)
            probe = Probe(url)
            probe.start()
            start = time.monotonic()
            answer = run()
            took = time.monotonic() - start
            probe.stop.set()
            probe.join(130)
            peak = hwm(server.pid) / (1 << 20)
            print(f"| {name} | {answer} | {took:.2f} | {probe.worst:.3f}, {probe.refused} | {peak:.0f} |")
    finally:
        server.terminate()
        server.wait(30)
        trickle.shutdown()
        (media / "sparse.mp4").unlink()
        media.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
