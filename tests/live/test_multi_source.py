"""Several sources in one `dfrt watch` process (one pipeline): the alert fires only on the stream where the
yellow shape appears, under that stream's name; every stream is answered; a stream that ends or fails
leaves the others running; stdin questions go to one stream (`NAME: question`) or to all; due work is served
round-robin (equal counts per stream, lag reported); bad source lists are one error line.

The clips are the scene of tests/live/test_alert_stream.py (the demo answers "yellow" with the brief yellow
square in the window, "purple" without).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfrt.errors import ConfigError, InputError
from dfrt.live.multi import MAX_SOURCES, default_name, parse_streams
from tests.live.conftest import CLIP, ROOT, free_port, need_ffmpeg, running, udp_sender_args
from tests.live.test_alert_stream import QUESTION, RULE, write_clip

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi-clips")
    return {
        "yellow": write_clip(root / "yellow.mp4", 40, 20.0),
        "never": write_clip(root / "never.mp4", 44, None),
        "short": write_clip(root / "short.mp4", 12, None),
    }


def watch(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfrt.cli", "watch", *args, "--temperature", "0"]


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_alert_fires_only_on_its_stream_and_an_ending_or_failing_stream_stops_no_other(clips) -> None:
    """door: UDP, the yellow square at 20 s; yard: a file where it never appears; short: a 12 s file that
    ends; cut: UDP whose sender stops after 12 s, given up after one failed reconnect (an error)."""
    need_ffmpeg()
    door, cut = free_port(), free_port()
    args = watch(
        f"door=udp://127.0.0.1:{door}",
        f"yard={clips['never']}",
        f"short={clips['short']}",
        f"cut=udp://127.0.0.1:{cut}",
        *("--realtime", "--window", "16s", "--fps", "1", "--duration", "50s", "--no-stdin"),
        *("--max-reconnects", "1", "--alert", RULE, "--alert-every", "2s", "--confirm", "2"),
        *("--every", "10s", QUESTION),
    )
    watcher = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        with running(udp_sender_args(door, clips["yellow"])), running(udp_sender_args(cut, clips["short"])):
            out, err = watcher.communicate(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, err[-3000:]
    got = lines_of(out)
    events = [e for e in got if e["kind"] in ("alert", "clear")]
    assert events and {e["stream"] for e in events} == {"door"}, (events, err[-3000:])
    assert events[0]["kind"] == "alert" and events[0]["answer"] == "yellow"
    assert [e["kind"] for e in events] in (["alert"], ["alert", "clear"])
    answers = [e for e in got if e["kind"] == "every"]
    by_stream = {n: [a for a in answers if a["stream"] == n] for n in ("door", "yard", "short", "cut")}
    assert len(by_stream["yard"]) >= 4 and len(by_stream["door"]) >= 3, answers
    assert {a["answer"] for a in by_stream["yard"] if a["window"]["frames"] == 16} == {"purple"}
    # short ended at 12 s, cut failed later: yard and door were answered after both
    assert len(by_stream["short"]) == 1 and by_stream["short"][0]["asked_at"] < 12
    assert 1 <= len(by_stream["cut"]) <= 2
    assert max(a["asked_at"] for a in by_stream["yard"]) > 39
    assert max(a["asked_at"] for a in by_stream["door"]) > 39
    assert re.search(r"dfrt: cut: source ended \(cannot open udp://.+ \(2 attempts\)\)", err), err[-3000:]
    assert "dfrt: short: source ended\n" in err
    assert re.search(r"dfrt: 4 streams: \d+ scheduled, lag p50", err), err[-3000:]


def test_stdin_questions_go_to_the_stream_named_or_to_every_stream(clips) -> None:
    args = watch(f"a={CLIP}", f"b={clips['never']}", "--window", "16s")
    ask = f"a: {QUESTION}\n{QUESTION}\nnobody: {QUESTION}\n"
    run = subprocess.run(args, cwd=ROOT, input=ask, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = lines_of(run.stdout)
    assert [g["kind"] for g in got] == ["stdin"] * 5 and got[0]["stream"] == "a"
    assert {g["stream"] for g in got[1:3]} == {g["stream"] for g in got[3:]} == {"a", "b"}
    assert [g["question"] for g in got[:3]] == [QUESTION] * 3
    assert {g["question"] for g in got[3:]} == {f"nobody: {QUESTION}"}  # no such stream: the line, to all


def test_due_work_is_served_round_robin_and_its_lag_reported(tmp_path) -> None:
    """Three streams with checks due faster than one process answers them on this machine: each stream is
    served as often as the others (within one turn) and the lag shows in status lines and the summary."""
    args = watch(
        *(f"s{i}={CLIP}" for i in range(3)),
        *("--realtime", "--window", "16s", "--duration", "12s", "--no-stdin", "--status-every", "5s"),
        *("--every", "0.05s", QUESTION, "--alert", RULE, "--alert-every", "0.05s"),
    )
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    counts = {m[0]: int(m[1]) for m in re.findall(r"dfrt: (s\d): .*?; (\d+) scheduled", run.stderr)}
    assert set(counts) == {"s0", "s1", "s2"} and min(counts.values()) >= 10, run.stderr[-2000:]
    assert max(counts.values()) - min(counts.values()) <= 2, counts
    answered = [g["stream"] for g in lines_of(run.stdout) if g["kind"] == "every"]
    assert max(map(answered.count, counts)) - min(map(answered.count, counts)) <= 1, answered
    lines = run.stderr.splitlines()
    status = [json.loads(line[len("dfrt: status ") :]) for line in lines if line.startswith("dfrt: status {")]
    assert {s["stream"] for s in status} == {"s0", "s1", "s2"}
    assert all(s["lag"]["checks"] > 0 and s["lag"]["max"] >= s["lag"]["p50"] >= 0 for s in status)


def test_stream_names() -> None:
    assert default_name("camera", 0) == "camera0"
    assert default_name("network", "rtsp://user:pw@cam.local:554/stream1") == "cam.local-554"
    assert default_name("network", "http://127.0.0.1/live.mjpg") == "127.0.0.1"
    assert default_name("file", "/videos/front door (1).mp4") == "front-door-1"
    clip = str(CLIP)
    assert parse_streams([clip, clip, f"06-left={clip}", "cam=0"]) == (
        ("06-left-2", clip),
        ("06-left-3", clip),
        ("06-left", clip),
        ("cam", "0"),
    )
    url = "udp://127.0.0.1:5000?pkt_size=1316"
    assert parse_streams([url]) == (("127.0.0.1-5000", url),)  # the '=' of a query is not NAME=


@pytest.mark.parametrize(
    ("sources", "error", "match"),
    [
        (["a=x.mp4", "a=y.mp4"], ConfigError, "'a' is given twice"),
        (["=x.mp4"], ConfigError, "no name before"),
        (["cam="], ConfigError, "no source after"),
        (["cam=concat:a.mp4|b.mp4"], InputError, "scheme 'concat' is not allowed"),
        ([str(CLIP), "missing.mp4"], InputError, "source not found: missing.mp4"),
        ([str(CLIP)] * (MAX_SOURCES + 1), ConfigError, f"at most {MAX_SOURCES}"),
        ([], ConfigError, "at least one source"),
    ],
)
def test_bad_source_lists_are_one_error(sources: list[str], error: type, match: str) -> None:
    with pytest.raises(error, match=re.escape(match)) as info:
        parse_streams(sources)
    assert "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_source_list_in_one_line(tmp_path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64)  # no decoder opens it
    for sources, match in [
        ([str(CLIP), "concat:a.mp4|b.mp4"], "scheme 'concat' is not allowed"),
        ([f"a={CLIP}", f"a={CLIP}"], "given twice"),
        ([str(CLIP)] * (MAX_SOURCES + 1), f"at most {MAX_SOURCES}"),
        ([f"a={CLIP}", f"b={broken}"], "broken.mp4: cannot be opened as a video"),  # found when opened
    ]:
        run = subprocess.run(
            watch(*sources, "--no-stdin"), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and run.stdout == "", (sources, run.stderr)
        if "broken" in match:  # after the bundle's and the first stream's progress lines
            lines = [line for line in lines if not line.startswith(("dfrt: loading", "dfrt: watching"))]
        assert len(lines) == 1 and lines[0].startswith("dfrt: error:") and match in lines[0], lines
