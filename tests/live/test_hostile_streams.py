"""Hostile or damaged live sources keep being read: a resolution change, frames that cannot be used, garbage
datagrams, a source that reopens with an absurd size. Each skips what it must and the watcher reads on (it
ended on the first of them before). Everything stays on 127.0.0.1; senders are Debian's ffmpeg."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

import cv2
import numpy as np
import pytest

from dfrt.errors import InputError
from dfrt.live import Reconnect, Watcher
from tests.live.conftest import free_port, need_ffmpeg, running, udp_sender_args, wait_until

pytestmark = pytest.mark.runtime
FAST = Reconnect(initial=0.1, maximum=0.5)


class FakeCapture:
    """What OpenCV's capture gives for a scripted list of frames (None: a frame whose retrieve fails),
    then a drop (grab returns False)."""

    def __init__(self, frames: list[np.ndarray | None]) -> None:
        self.frames, self.at, self.t = frames, -1, 0.0

    def grab(self) -> bool:
        time.sleep(0.01)
        self.at += 1
        self.t += 100.0
        return self.at < len(self.frames)

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        frame = self.frames[self.at]
        return (frame is not None, frame)

    def get(self, prop: int) -> float:
        return self.t if prop == cv2.CAP_PROP_POS_MSEC else 0.0

    def release(self) -> None:
        pass


def frame(height: int, width: int, channels: int = 3) -> np.ndarray:
    return np.full((height, width, channels), 128, np.uint8)


def test_unusable_frames_and_an_absurd_reopen_are_skipped_and_the_stream_read_on(
    demo_pipe, monkeypatch
) -> None:
    connections: list[Any] = [
        [frame(240, 320), frame(240, 320, 2), frame(8, 4000), None, frame(200, 640), frame(240, 320)],
        InputError("frames of 20000x20000 pixels are refused"),  # reopened with an absurd header
        None,  # cannot be opened (now)
        [frame(240, 320)] * 20,
    ]
    opened: list[int] = []

    def scripted(source: Any) -> FakeCapture | None:
        step = connections[min(len(opened), len(connections) - 1)]
        opened.append(1)
        if isinstance(step, Exception):
            raise step
        return None if step is None else FakeCapture(list(step))

    monkeypatch.setattr("dfrt.live.watcher.open_capture", scripted)
    with Watcher(demo_pipe, "udp://127.0.0.1:9", window=60, fps=10, reconnect=FAST) as watcher:
        assert wait_until(lambda: watcher.status()["frames_encoded"] >= 20, 30), watcher.status()
        status = watcher.status()
    assert status["ended"] is False and status["error"] is None, status
    assert status["frames_refused"] == 3  # two channels, 500:1, a failed retrieve
    assert status["reconnects"] >= 1 and len(opened) >= 4


def test_a_stream_that_changes_resolution_is_encoded_in_runs_of_one_size(demo_pipe, monkeypatch) -> None:
    sizes = [(240, 320), (200, 640), (240, 320), (360, 360)] * 5
    monkeypatch.setattr(
        "dfrt.live.watcher.open_capture", lambda source: FakeCapture([frame(h, w) for h, w in sizes])
    )
    original, batches = demo_pipe.visual.live_frames, []

    def slow(frames: np.ndarray) -> Any:  # slow enough that one batch holds frames of several sizes
        batches.append(frames.shape)
        time.sleep(0.05)
        return original(frames)

    monkeypatch.setattr(demo_pipe.visual, "live_frames", slow)
    with Watcher(demo_pipe, "udp://127.0.0.1:9", window=10, fps=100, batch=8, reconnect=FAST) as watcher:
        assert wait_until(lambda: watcher.status()["frames_encoded"] >= len(sizes), 30), watcher.status()
        status = watcher.status()
    assert status["ended"] is False and status["error"] is None, status
    assert len({shape[1:] for shape in batches}) >= 2  # several sizes reached the encoder, none failed


def sender(port: int, size: str, seconds: float) -> list[str]:
    return [need_ffmpeg(), "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
            f"testsrc=size={size}:rate=10", "-t", f"{seconds:g}", "-c:v", "mpeg4", "-g", "1", "-q:v", "3",
            "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"]  # fmt: skip


def test_a_udp_stream_changing_resolution_then_garbage_datagrams_then_a_pause_keeps_being_read(
    demo_pipe,
) -> None:
    port = free_port()
    with Watcher(demo_pipe, f"udp://127.0.0.1:{port}", window=60, fps=2, reconnect=FAST) as watcher:
        subprocess.run(sender(port, "320x240", 2), check=True, timeout=30)
        subprocess.run(sender(port, "640x200", 2), check=True, timeout=30)  # another resolution, same stream
        assert wait_until(lambda: watcher.status()["frames_encoded"] >= 5, 10), watcher.status()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as garbage:
            end = time.monotonic() + 2.0
            while time.monotonic() < end:  # random datagrams, ~500 a second
                garbage.sendto(os.urandom(1316), ("127.0.0.1", port))
                time.sleep(0.002)
        before = watcher.status()["frames_encoded"]
        time.sleep(7.0)  # a pause longer than the read timeout (5 s): the watcher reconnects
        with running(udp_sender_args(port, seconds=4)) as resumed:
            resumed.wait(30)
        assert wait_until(lambda: watcher.status()["frames_encoded"] >= before + 4, 15), watcher.status()
        status = watcher.status()
    assert status["ended"] is False and status["error"] is None, status
