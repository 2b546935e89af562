"""Live-video fixtures: the shipped demo pipeline (opened once), loopback ports, ffmpeg senders.

Tests that stream need Debian's ``ffmpeg`` (``apt-get install -y ffmpeg``) and skip cleanly without it.
Every process a test starts is killed in a ``finally``; everything stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# a clip the shipped demo answers right from the file (`dfrt infer samples/06-left.mp4 ... --temperature 0`:
# "red"): a shape leaves at 5 s, so the answer is about an event early in the 16 s window
CLIP = ROOT / "samples" / "06-left.mp4"
QUESTION = "A shape disappeared and did not come back. What color was it?"
ANSWER = "red"


@pytest.fixture(scope="session")
def demo_pipe() -> Iterator[object]:
    from dfrt.runtime.default_bundle import shipped_demo
    from dfrt.runtime.pipeline import Pipeline

    with Pipeline(shipped_demo()) as pipe:
        yield pipe


def need_ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.skip("ffmpeg missing: apt-get install -y ffmpeg")
    return path


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_sender_args(
    port: int, clip: Path = CLIP, loop: bool = False, seconds: float | None = None
) -> list[str]:
    """ffmpeg sending ``clip`` in real time as MPEG-4 in MPEG-TS over UDP (every frame a key frame)."""
    args = [need_ffmpeg(), "-nostdin", "-loglevel", "error", "-re"]
    if loop:
        args += ["-stream_loop", "-1"]
    args += ["-i", str(clip)]
    if seconds is not None:
        args += ["-t", f"{seconds:g}"]
    return [
        *args,
        "-c:v",
        "mpeg4",
        "-g",
        "1",
        "-q:v",
        "3",
        "-f",
        "mpegts",
        f"udp://127.0.0.1:{port}?pkt_size=1316",
    ]


@contextlib.contextmanager
def running(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is always killed (and reaped) when the block ends."""
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def wait_until(condition: object, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(condition())  # type: ignore[operator]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
