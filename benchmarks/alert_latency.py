"""Alert latency and false events per hour on a 30-minute demo-world stream whose truth is known.

    python benchmarks/alert_latency.py [--minutes 30] [--bundle DIR] [--every 5s] [--confirm 2] [--threads N]
                                       [--json OUT]

The stream: the scene of samples/01-brief-colour.mp4 (seed 3 x 10^9: static shapes on a grey background,
where the demo answers "purple" when nothing appears) for ``--minutes``, with a brief yellow square shown
for one second around each truth time (:data:`TRUTH`: eleven of them, at least 100 s apart, with an
11-minute stretch of none), written at 4 fps. ``dfrt watch FILE --realtime`` plays it at its own rate, so
stream time is wall time: the run takes ``--minutes`` (this is not a faster-than-real-time replay). The rule
is the one of tests/live/test_alert_stream.py, with ``--window 16s --fps 1 --temperature 0`` and the default
``--alert-every 5s --confirm 2 --cooldown 60s``.

Latency of an alert: its ``asked_at`` (the check that fired, on the watcher's clock, which starts when the
watcher opens the file, a few milliseconds before the file's first frame: latencies are overstated by that
much) minus the truth time (the stream time at which the yellow square appeared). An alert matches a truth
when it comes after it and within the window plus ``confirm x every`` plus 5 s; any other alert is a false
event. A truth with no matching alert is a miss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dfrt.live.options import parse_duration

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What color was the shape that appeared for a moment?"
RULE = f"{QUESTION} => yellow"
SEED = 3_000_000_000
# truth times (stream seconds) of the brief yellow square; fractional parts vary its phase against the 1 fps
# sampler; none from 830 s to 1530 s (11 minutes)
TRUTH = (45.2, 151.7, 262.4, 371.9, 489.3, 600.6, 715.1, 829.8, 1530.5, 1641.2, 1749.7)
WINDOW, FPS = 16.0, 1


def write_scene(path: Path, seconds: float, brief_times: tuple[float, ...], fps: int = 4) -> Path:
    """samples/01-brief-colour.mp4's scene for ``seconds``, with its brief yellow square shown for one
    second from ``t - 0.5`` for each ``t`` in ``brief_times`` (a 1 fps sampler catches each in exactly one
    frame, whatever its phase); mp4v at ``fps``."""
    import cv2

    from dfrt.demo.world import SIZE, make_clip

    clip = make_clip(SEED, "brief_colour")
    brief = next(s for s in clip.shapes if s.brief)
    assert brief.colour == "yellow"
    clip.shapes = [s for s in clip.shapes if not s.brief] + [
        dataclasses.replace(brief, visible=(t - 0.5, t + 0.5)) for t in brief_times
    ]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE, SIZE))
    try:
        for i in range(round(seconds * fps)):
            writer.write(cv2.cvtColor(clip.frame(i / fps + 1e-3), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def match(alerts: list[dict], truth: tuple[float, ...], horizon: float) -> tuple[list, list, list]:
    """(truth, alert) pairs, false alerts, missed truths: each truth takes the first alert after it within
    ``horizon`` seconds; an alert serves one truth."""
    pairs, used = [], set()
    for t in truth:
        found = next(
            (i for i, a in enumerate(alerts) if i not in used and 0 <= a["asked_at"] - t <= horizon), None
        )
        if found is not None:
            used.add(found)
            pairs.append((t, alerts[found]))
    false = [a for i, a in enumerate(alerts) if i not in used]
    missed = [t for t in truth if t not in {p[0] for p in pairs}]
    return pairs, false, missed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--every", default="5s", help="--alert-every (default 5s)")
    parser.add_argument("--confirm", type=int, default=2)
    parser.add_argument("--threads", type=int, help="dfrt watch --threads (default: one per core)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    seconds = args.minutes * 60
    truth = tuple(t for t in TRUTH if t + WINDOW < seconds)
    every = parse_duration(args.every, "--every")  # as dfrt watch reads --alert-every
    loads: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="dfrt-alert-latency-") as tmp:
        clip = write_scene(Path(tmp) / "stream.mp4", seconds, truth)
        command = [sys.executable, "-m", "dfrt.cli", "watch", str(clip), "--realtime", "--no-stdin"]
        command += ["--window", f"{WINDOW:g}s", "--fps", str(FPS), "--temperature", "0"]
        command += ["--alert", RULE, "--alert-every", args.every, "--confirm", str(args.confirm)]
        if args.bundle:
            command += ["--bundle", str(args.bundle)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = threading.Event()

        def sample_load() -> None:
            while not done.wait(30.0):
                loads.append(os.getloadavg()[:2])

        threading.Thread(target=sample_load, daemon=True).start()
        load_before = os.getloadavg()
        started = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 600)
        wall = time.perf_counter() - started
        done.set()
    if run.returncode != 0:
        sys.exit(f"dfrt watch failed ({run.returncode}): {run.stderr[-2000:]}")
    events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    alerts = [e for e in events if e["kind"] == "alert"]
    horizon = WINDOW + args.confirm * every + 5.0
    pairs, false, missed = match(alerts, truth, horizon)
    latency = [a["asked_at"] - t for t, a in pairs]
    window_latency = [a["stream_time"] - t for t, a in pairs]
    result = {
        "stream_minutes": args.minutes,
        "realtime": True,
        "truth_events": len(truth),
        "alerts": len(alerts),
        "clears": sum(e["kind"] == "clear" for e in events),
        "detected": len(pairs),
        "missed": missed,
        "false_events": len(false),
        "false_events_per_hour": len(false) / (seconds / 3600.0),
        "false_event_times": [round(a["asked_at"], 1) for a in false],
        "latency_seconds": {
            "min": min(latency, default=None),
            "median": statistics.median(latency) if latency else None,
            "p90": percentile(latency, 0.9) if latency else None,
            "max": max(latency, default=None),
            "all": [round(x, 2) for x in latency],
        },
        "window_end_minus_truth": [round(x, 2) for x in window_latency],
        "settings": {
            "window": WINDOW,
            "fps": FPS,
            "alert_every": every,
            "confirm": args.confirm,
            "threads": args.threads,
        },
        "wall_seconds": round(wall, 1),
        "load_average_1m_5m": {"before": load_before[:2], "during": loads, "after": os.getloadavg()[:2]},
        "cpus": os.cpu_count(),
        "summary_line": run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else [],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
