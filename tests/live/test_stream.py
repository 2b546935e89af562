"""Streams over loopback from Debian's ffmpeg: the right answer about an earlier event, reconnecting after
the sender restarts, MJPEG over HTTP, and flat memory over a long run (minutes with ``-m slow``)."""

from __future__ import annotations

import time

import pytest

from dfrt.live import Reconnect, Watcher
from dfrt.runtime.generate import SamplingConfig
from tests.live.conftest import (
    ANSWER,
    CLIP,
    QUESTION,
    free_port,
    need_ffmpeg,
    rss_bytes,
    running,
    udp_sender_args,
    wait_until,
)

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)
GREEDY = SamplingConfig(max_tokens=8, temperature=0.0)
FAST = Reconnect(initial=0.2, maximum=1.0)


def test_udp_answer_about_an_earlier_event(demo_pipe) -> None:
    """The demo clip streamed once at its real rate; asked when the sender is done, the 16 s window holds
    the whole clip at 1 fps (what the demo model was trained on) and the answer is the file's."""
    port = free_port()
    with Watcher(demo_pipe, f"udp://127.0.0.1:{port}", window=16, fps=1, reconnect=FAST) as watcher:
        with running(udp_sender_args(port)) as sender:
            sender.wait(40)
        assert wait_until(lambda: watcher.status()["frames_encoded"] >= 15, 5)
        answer = watcher.ask(QUESTION, GREEDY)
        status = watcher.status()
    assert answer.answer == ANSWER, answer.to_dict()
    assert 15 <= answer.window.num_frames <= 16 and status["frames_dropped"] == 0
    assert 14.0 <= answer.window.end - answer.window.start <= 15.5
    assert status["clock"]["stream"] > 0 and status["reconnects"] == 0


def test_reconnects_after_the_sender_restarts(demo_pipe) -> None:
    port = free_port()
    with Watcher(demo_pipe, f"udp://127.0.0.1:{port}", window=16, fps=2, reconnect=FAST) as watcher:
        with running(udp_sender_args(port, loop=True)):
            assert wait_until(lambda: watcher.status()["frames_encoded"] >= 4, 20)
        before = watcher.status()["frames_encoded"]
        # the read times out (5 s), the watcher reconnects and waits for the new sender
        assert wait_until(lambda: watcher.status()["reconnects"] >= 1, 15)
        with running(udp_sender_args(port, loop=True)):
            assert wait_until(lambda: watcher.status()["frames_encoded"] >= before + 4, 25)
            status = watcher.status()
            assert status["connected"] is True
        answer = watcher.ask(QUESTION, GREEDY)
    assert status["reconnects"] >= 1 and answer.window.num_frames > before
    assert list(answer.window.times) == sorted(set(answer.window.times))  # one clock across connections


def test_mjpeg_over_http(demo_pipe) -> None:
    """ffmpeg's own one-client HTTP server: MJPEG carries no timestamps, so the arrival clock takes over."""
    port = free_port(kind=1)  # SOCK_STREAM
    url = f"http://127.0.0.1:{port}/live.mjpg"
    args = [need_ffmpeg(), "-nostdin", "-loglevel", "error", "-re", "-i", str(CLIP), "-c:v", "mjpeg"]
    args += ["-q:v", "3", "-f", "mpjpeg", "-listen", "1", url]
    with running(args) as sender:
        time.sleep(0.5)  # the server is listening
        with Watcher(demo_pipe, url, window=16, fps=1, reconnect=FAST) as watcher:
            sender.wait(40)
            assert wait_until(lambda: watcher.status()["frames_encoded"] >= 14, 5)
            answer = watcher.ask(QUESTION, GREEDY)
            status = watcher.status()
    assert status["clock"]["arrival"] > 0 and 14 <= answer.window.num_frames <= 17
    assert answer.answer == ANSWER, answer.to_dict()


def _flat_memory(demo_pipe, seconds: float) -> None:
    port = free_port()
    rss: list[int] = []
    with (
        Watcher(demo_pipe, f"udp://127.0.0.1:{port}", window=8, fps=4, reconnect=FAST) as watcher,
        running(udp_sender_args(port, loop=True)),
    ):
        assert wait_until(lambda: watcher.status()["window"]["frames"] >= 30, 30)  # the window is full
        watcher.ask(QUESTION, GREEDY)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(1.0)
            rss.append(rss_bytes())
            status = watcher.status()
            assert status["window"]["frames"] <= 33 and status["window"]["span"] <= 8.0
        watcher.ask(QUESTION, GREEDY)
        status = watcher.status()
    settled = rss[len(rss) // 4 :]
    growth = max(settled) - settled[0]
    assert growth < 8 << 20, f"RSS grew {growth / 2**20:.1f} MiB over {seconds:g} s: {rss}"
    assert status["frames_encoded"] >= 3 * seconds  # it kept up with 4 fps (minus drops, counted)
    assert status["frames_encoded"] + status["frames_dropped"] >= status["frames_sampled"] - 3


def test_memory_stays_flat(demo_pipe) -> None:
    _flat_memory(demo_pipe, 20.0)


@pytest.mark.slow
def test_memory_stays_flat_for_minutes(demo_pipe) -> None:
    _flat_memory(demo_pipe, 240.0)
