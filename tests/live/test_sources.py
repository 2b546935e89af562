"""Source strings are untrusted: allowed kinds parse, everything else is one InputError line; the clock."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dfrt.errors import InputError
from dfrt.live.sources import StreamClock, parse_source
from dfrt.live.window import FeatureWindow, FrameEntry

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("0", "camera"),
        (2, "camera"),
        ("/dev/video1", "camera"),
        ("rtsp://cam.local:554/stream1", "network"),
        ("udp://127.0.0.1:5000", "network"),
        ("rtp://127.0.0.1:5004", "network"),
        ("http://127.0.0.1:8080/live.mjpg", "network"),
        ("https://example.com/live/index.m3u8", "network"),
    ],
)
def test_accepted_sources(text: object, kind: str) -> None:
    assert parse_source(text).kind == kind


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("concat:a.mp4|b.mp4", "scheme 'concat'"),
        ("subfile:,start,0,end,10,:/etc/passwd", "scheme 'subfile'"),
        ("file:/etc/passwd", "scheme 'file'"),
        ("pipe:0", "scheme 'pipe'"),
        ("data:video/mp4;base64,AAAA", "scheme 'data'"),
        ("ftp://host/x.mp4", "scheme 'ftp'"),
        ("udp://", "needs a host"),
        ("http:/nohost", "needs a host"),
        ("rtsp://host/a b", "spaces"),
        ("udp://127.0.0.1:0", "port 0"),
        ("frame%03d.png", "patterns"),
        ("img%d.jpg", "patterns"),
        ("a\nb.mp4", "control characters"),
        ("", "empty"),
        ("64", "index"),
        ("/dev/video99", "index"),
        ("missing-file.mp4", "not found"),
        ("/dev", "not a file"),
        ("x" * 3000, "longer than"),
        (True, "camera index, URL or file path"),
        (1.5, "camera index, URL or file path"),
    ],
)
def test_refused_sources(text: object, why: str) -> None:
    with pytest.raises(InputError, match=why) as e:
        parse_source(text)
    assert "\n" not in str(e.value)


def test_file_names_never_reach_ffmpeg_as_protocols(tmp_path, monkeypatch) -> None:
    (tmp_path / "a:b.mp4").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="scheme 'a'"):
        parse_source("a:b.mp4")  # looks like a protocol: refused ...
    source = parse_source("./a:b.mp4")  # ... spelled as a path it is a file, opened by absolute path
    assert source.kind == "file" and str(source.target).startswith("/")


def test_credentials_are_never_shown() -> None:
    assert "secret" not in parse_source("rtsp://admin:secret@10.0.0.2:554/s").display


def test_stream_clock_follows_sane_timestamps() -> None:
    clock = StreamClock(0.0, live=True)
    times = [clock.stamp(1400.0 + 250.0 * i, 1.0 + 0.25 * i) for i in range(20)]
    assert np.allclose(np.diff(times), 0.25) and clock.arrival_frames == 0


def test_stream_clock_falls_back_to_arrival_for_bad_timestamps() -> None:
    clock = StreamClock(0.0, live=True)
    guessed = [clock.stamp(40.0 * i, 1.0 + 0.25 * i) for i in range(40)]  # MJPEG: 25 fps guessed, 4 real
    assert guessed[-1] == pytest.approx(1.0 + 0.25 * 39) and clock.arrival_frames > 0
    clock = StreamClock(0.0, live=True)
    broken = [clock.stamp(value, 1.0 + 0.1 * i) for i, value in enumerate([0, 100, math.nan, 50, 1e12, 300])]
    assert all(b > a for a, b in itertools.pairwise(broken))
    assert broken[-1] < 10


def test_stream_clock_stays_monotonic_across_reconnects() -> None:
    clock = StreamClock(0.0, live=True)
    first = [clock.stamp(5000.0 + 100 * i, 1.0 + 0.1 * i) for i in range(10)]
    clock.reset()  # the sender restarted: its clock starts over
    second = [clock.stamp(100.0 * i, 3.0 + 0.1 * i) for i in range(10)]
    assert second[0] > first[-1] and all(b > a for a, b in itertools.pairwise(second))


def _entry(t: float) -> FrameEntry:
    return FrameEntry(t, t, np.zeros((2, 3), np.float32))


def test_window_is_bounded_by_span_and_count() -> None:
    window = FeatureWindow(span=4.0, max_frames=6)
    for t in np.arange(0.0, 100.0, 0.5):
        window.add(_entry(float(t)))
    snapshot = window.snapshot()
    assert snapshot.num_frames == 6 and snapshot.end == 99.5 and snapshot.start == 97.0
    window = FeatureWindow(span=4.0, max_frames=100)
    for t in range(100):
        window.add(_entry(float(t)))
    assert window.snapshot().times.tolist() == [96.0, 97.0, 98.0, 99.0]
    window.add(_entry(50.0))  # a clock glitch never reorders the window
    assert window.snapshot().end == 99.0
