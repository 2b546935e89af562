"""The watcher on files (no ffmpeg needed): same features and answer as the file path, bounded queue with
drops counted, options refused, and `dfrt watch` answering standing questions on schedule."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from dfrt.errors import ConfigError, InputError
from dfrt.live import Watcher
from dfrt.runtime.generate import SamplingConfig
from tests.live.conftest import ANSWER, CLIP, QUESTION, ROOT, wait_until

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)
GREEDY = SamplingConfig(max_tokens=8, temperature=0.0)


def watch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfrt.cli", "watch", *args]


def test_window_matches_the_file_path(demo_pipe) -> None:
    video = demo_pipe.load_video(CLIP)
    with Watcher(demo_pipe, CLIP, window=16, fps=1) as watcher:
        assert wait_until(lambda: watcher.ended, 30)
        status = watcher.status()
        answer = watcher.ask(QUESTION, GREEDY)
    assert status["frames_dropped"] == 0 and status["window"]["frames"] == 16 and status["error"] is None
    assert answer.window.times.tolist() == video.sampled.timestamps.tolist()
    result = answer.result
    assert result.selection.key_frames.tolist() == video.features.selection.key_frames.tolist()
    assert np.allclose(result.visual.scores, video.features.scores, atol=1e-5)
    assert answer.answer == ANSWER
    line = answer.to_dict()
    key_times = video.sampled.timestamps[result.selection.key_frames]
    assert line["key_frame_times"] == [float(t) for t in key_times]
    assert line["window"] == {"start": 0.0, "end": 15.0, "frames": 16}


def test_a_slow_encoder_drops_frames_and_never_queues(demo_pipe, monkeypatch) -> None:
    real = demo_pipe.visual.frame_features

    def slow(pixels, timings=None):  # type: ignore[no-untyped-def]
        time.sleep(0.5)
        return real(pixels, timings)

    monkeypatch.setattr(demo_pipe.visual, "frame_features", slow)
    with Watcher(demo_pipe, CLIP, window=16, fps=4, realtime=True, queue_size=1, batch=1) as watcher:
        assert wait_until(lambda: watcher.status()["frames_sampled"] >= 16, 10)
        assert watcher._queue.qsize() <= 1
        status = watcher.status()
    assert status["frames_dropped"] > 0
    waiting = status["frames_sampled"] - status["frames_dropped"] - status["frames_encoded"]
    assert waiting <= 2  # the queue's one and the batch being encoded


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"window": 0}, ConfigError, "--window"),
        ({"window": 3600, "fps": 1}, ConfigError, "more than 2048"),
        ({"fps": 0}, ConfigError, "--fps"),
        ({"queue_size": 100}, ConfigError, "queue_size"),
        ({"loop": "yes"}, ConfigError, "loop"),
    ],
)
def test_options_are_checked(demo_pipe, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        Watcher(demo_pipe, CLIP, **kwargs)


def test_bad_sources_fail_before_any_thread(demo_pipe, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--loop replays files only"):
        Watcher(demo_pipe, "udp://127.0.0.1:9", loop=True)
    not_video = tmp_path / "x.mp4"
    not_video.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="cannot be opened"):
        Watcher(demo_pipe, not_video)
    with pytest.raises(InputError, match="scheme 'concat'"):
        Watcher(demo_pipe, "concat:a.mp4|b.mp4")


def test_an_empty_window_is_one_clear_error(demo_pipe) -> None:
    with Watcher(demo_pipe, "udp://127.0.0.1:9", window=16) as watcher:  # nothing is sent there
        with pytest.raises(InputError, match="no frames yet"):
            watcher.ask(QUESTION)
        assert watcher.status()["connected"] is False


def test_standing_questions_print_on_schedule(tmp_path) -> None:
    from dfrt.runtime.default_bundle import shipped_demo

    args = ["--bundle", str(shipped_demo()), "--realtime", "--window", "16s", "--temperature", "0"]
    args += ["--every", "3s", QUESTION, "--duration", "10.5s", "--no-stdin"]
    done = subprocess.run(
        watch_command(str(CLIP), *args), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["kind"] for line in lines] == ["every"] * 3
    for k, line in enumerate(lines, start=1):  # never early; late by at most a busy CPU's answer time
        assert 3 * k - 0.5 <= line["asked_at"] < 3 * k + 2, [line["asked_at"] for line in lines]
    for line in lines:
        assert line["question"] == QUESTION and line["answer"]
        assert line["window"]["frames"] >= 3 and line["key_frame_times"]
        assert line["window"]["start"] <= min(line["key_frame_times"]) <= line["window"]["end"]


def test_cli_refuses_a_bad_source_in_one_line() -> None:
    done = subprocess.run(
        watch_command("concat:a.mp4|b.mp4"), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "scheme 'concat' is not allowed" in done.stderr


def test_visual_tokens_caps_every_answer_of_the_cli() -> None:
    from dfrt.runtime.default_bundle import shipped_demo

    args = ["--bundle", str(shipped_demo()), "--realtime", "--window", "16s", "--temperature", "0"]
    args += ["--every", "3s", QUESTION, "--duration", "4.5s", "--no-stdin", "--visual-tokens", "60"]
    done = subprocess.run(
        watch_command(str(CLIP), *args), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and all(0 < line["visual_tokens"] <= 60 for line in lines)
