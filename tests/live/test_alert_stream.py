"""Alerts end to end on demo-world streams whose truth is known by construction: a brief yellow shape at
t = 20 s streamed over UDP (ffmpeg, real time) fires the rule "What color was the shape that appeared for a
moment? => yellow" once, within confirm x period, with a thumbnail that shows yellow, and clears once it
has left the 16 s window; the same scene without it raises nothing; `dfrt watch` killed with SIGKILL
loses no logged event and leaves a parseable log.

The clips extend the scene of samples/01-brief-colour.mp4 (seed 3 x 10^9, where the demo answers
"yellow"); :func:`test_the_demo_answers_these_clips_right` checks the demo's answers on them first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfrt.demo.world import SIZE, make_clip
from dfrt.live.events import EventLog
from tests.live.conftest import ROOT, free_port, need_ffmpeg, running, udp_sender_args

pytestmark = pytest.mark.runtime
QUESTION = "What color was the shape that appeared for a moment?"
RULE = f"{QUESTION} => yellow"
YELLOW_AT = 20.0  # seconds into the clip
YELLOW_BGR = (30, 215, 240)
PERIOD, CONFIRM, WINDOW = 2.0, 2, 16.0


def write_clip(path: Path, seconds: float, brief_at: float | None, fps: int = 4) -> Path:
    """samples/01-brief-colour.mp4's scene for ``seconds``, its brief yellow square shown for one second
    from ``brief_at - 0.5`` (None: never): a 1 fps sampler catches it in exactly one frame, whatever its
    phase."""
    clip = make_clip(3_000_000_000, "brief_colour")
    shapes = [s for s in clip.shapes if not s.brief]
    if brief_at is not None:
        brief = next(s for s in clip.shapes if s.brief)
        assert brief.colour == "yellow"
        shapes.append(dataclasses.replace(brief, visible=(brief_at - 0.5, brief_at + 0.5)))
    clip.shapes = shapes
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE, SIZE))
    for i in range(round(seconds * fps)):
        writer.write(cv2.cvtColor(clip.frame(i / fps + 1e-3), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("alert-clips")
    return {
        "yellow": write_clip(root / "yellow.mp4", 42, YELLOW_AT),
        "never": write_clip(root / "never.mp4", 30, None),
        "short-yellow": write_clip(root / "short-yellow.mp4", 16, 6),
        "short-never": write_clip(root / "short-never.mp4", 16, None),
        "kill": write_clip(root / "kill.mp4", 26, 19),  # purple from 15 s, yellow from 19 s
    }


def yellow_pixels(jpeg: bytes) -> int:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return int((np.abs(image.astype(int) - YELLOW_BGR).max(axis=2) < 45).sum())


def watch(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfrt.cli", "watch", *args, "--no-stdin", "--temperature", "0"]


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_demo_answers_these_clips_right(demo_pipe, clips) -> None:
    from dfrt.runtime.generate import SamplingConfig

    greedy = SamplingConfig(max_tokens=8, temperature=0.0)
    assert (
        demo_pipe.ask(demo_pipe.load_video(clips["short-yellow"]), QUESTION, greedy).answer.text == "yellow"
    )
    assert demo_pipe.ask(demo_pipe.load_video(clips["short-never"]), QUESTION, greedy).answer.text == "purple"


def test_a_brief_yellow_shape_over_udp_fires_once_with_its_thumbnail_and_clears(clips, tmp_path) -> None:
    need_ffmpeg()
    port = free_port()
    events = tmp_path / "events"
    args = watch(
        f"udp://127.0.0.1:{port}",
        *("--window", f"{WINDOW:g}s", "--fps", "1", "--duration", "48s"),
        *("--alert", RULE, "--alert-every", f"{PERIOD:g}s", "--confirm", str(CONFIRM)),
        *("--events", str(events)),
    )
    watcher = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the watcher is up and listening
        sent_at = time.time()
        with running(udp_sender_args(port, clips["yellow"])) as sender:
            out, err = watcher.communicate(timeout=90)
            sender.wait(30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, err[-2000:]
    got = lines_of(out)
    assert [e["kind"] for e in got] == ["alert", "clear"], err[-2000:]
    alert, clear = got
    assert alert["answer"] == "yellow" and alert["rule"]["fires_on"] == ["yellow"] and alert["checks"] == 2
    # the evidence: the key frame that shows yellow, as a thumbnail in the log
    shown = [k for k in alert["key_frames"] if yellow_pixels((events / k["thumbnail"]).read_bytes()) > 80]
    assert len(shown) == 1, alert["key_frames"]
    others = [k for k in alert["key_frames"] if k is not shown[0]]
    assert all(yellow_pixels((events / k["thumbnail"]).read_bytes()) == 0 for k in others)
    truth = shown[0]["time"]  # the yellow frame's time on the watcher's clock
    assert alert["window"]["start"] <= truth <= alert["window"]["end"] == alert["stream_time"]
    assert 0 <= alert["asked_at"] - truth <= CONFIRM * PERIOD + 1.5
    assert alert["wall_time"] - (sent_at + YELLOW_AT) <= CONFIRM * PERIOD + 4.0  # joining UDP late included
    # clears once the yellow frame has left the window, within confirm x period
    assert clear["answer"] != "yellow" and clear["window"]["start"] > truth
    assert clear["asked_at"] - (truth + WINDOW) <= CONFIRM * PERIOD + 1.5
    logged = [json.loads(line) for line in (events / "events.jsonl").read_text().splitlines()]
    assert logged == got


def test_no_event_where_it_never_appears(clips, tmp_path) -> None:
    run = subprocess.run(
        watch(
            str(clips["never"]),
            *("--realtime", "--window", f"{WINDOW:g}s", "--fps", "1"),
            *("--alert", RULE, "--alert-every", "1s", "--confirm", "1"),
            *("--every", "5s", QUESTION),
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = lines_of(run.stdout)
    assert [e for e in got if e["kind"] in ("alert", "clear")] == []
    answers = [e["answer"] for e in got if e["kind"] == "every" and e["window"]["frames"] == 16]
    assert answers and set(answers) == {"purple"}  # the rule was asked over full windows: never yellow


def test_sigkill_mid_run_loses_no_logged_event(clips, tmp_path) -> None:
    events = tmp_path / "events"
    args = watch(
        str(clips["kill"]),
        *("--realtime", "--window", f"{WINDOW:g}s", "--fps", "1"),
        *("--alert", RULE, "--alert", f"{QUESTION} => purple|green"),
        *("--alert-every", "0.5s", "--confirm", "1", "--cooldown", "0"),
        *("--events", str(events), "--on-event", f"{sys.executable} -c pass"),
    )
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    printed: list[dict] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # kill as soon as the yellow alert is out (the purple one came first)
            printed.append(json.loads(line))
            if printed[-1]["answer"] == "yellow":
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
    assert [e["answer"] for e in printed][-1] == "yellow" and len(printed) >= 2
    with EventLog(events) as log:  # parseable, every printed event there with its thumbnails
        logged = log.read()
        assert [e["id"] for e in logged] == list(range(1, len(logged) + 1))
        assert printed == logged[: len(printed)]
        for event in logged:
            for frame in event["key_frames"]:
                assert log.thumbnail(frame["thumbnail"]).startswith(b"\xff\xd8")


KILLED_WRITER = """
import sys, time
from dfrt.live.events import EventLog
record = {"kind": "alert", "key_frames": [{"time": 1.0}, {"time": 2.0}]}
with EventLog(sys.argv[1]) as log:
    while True:
        jpegs = [b"\\xff\\xd8" + b"j" * 3000, b"\\xff\\xd8" + b"k" * 5000]
        print(log.append(record, jpegs)["id"], flush=True)
"""


def test_a_log_written_flat_out_and_killed_stays_whole(tmp_path) -> None:
    """SIGKILL at three moments of a writer appending as fast as it can: every id it printed (after the
    fsync) is in the log, ids stay contiguous, each logged event's thumbnails exist, nothing else is left."""
    events = tmp_path / "events"
    seen = 0
    for delay in (0.4, 0.9, 1.3):
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(events)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        printed: list[int] = []
        reader = threading.Thread(target=lambda p=process, out=printed: out.extend(int(x) for x in p.stdout))
        reader.start()
        time.sleep(delay + 1.5)  # its imports first
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        reader.join(10)
        with EventLog(events) as log:
            ids = [e["id"] for e in log.read()]
            assert ids == list(range(1, len(ids) + 1)) and set(printed) <= set(ids) and len(ids) > seen
            names = sorted(os.listdir(events / "thumbs"))
            assert names == sorted(f"{i:08d}-{k}.jpg" for i in ids for k in (0, 1))
            seen = len(ids)
