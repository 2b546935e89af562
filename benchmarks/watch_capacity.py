"""How many demo-world streams at 1 fps one `dfrt watch` process holds before its alert checks fall behind.

    python benchmarks/watch_capacity.py [--bundle DIR] [--levels 1,4,16,32,64,96,112,128,160]
                                        [--measure 40] [--threads N]

One pipeline (the bundle, default: the shipped demo) and, per level, N watchers of a demo-world clip played
in real time and looped (``--realtime --loop``: each stream decodes every frame of its own copy at the clip's
rate, 4 fps, and samples 1 fps), each with the rule of tests/live/test_alert_stream.py checked every 5 s
(``--alert-every 5s --confirm 2 --window 16s --temperature 0``), all served by dfrt's own scheduler
(:func:`dfrt.live.multi.serve_streams`, the loop of ``dfrt watch SRC1 SRC2 ...``). Each level runs 16 s
first (the window fills; checks start only on a full window), then ``--measure`` seconds measured.

A level *holds* when, over the measured seconds, no check ran more than the alert period (5 s) after it
was due (lag: how late a check ran; a check that late means the checks due in a period took longer than
the period, and they fall further behind), every stream sampled all but at most one of the
frames due at 1 fps, and no sampled frame was dropped. The capacity is the largest level that holds; the run
stops at the first level that does not. Figures are measured in this run; the machine's load average is
sampled at each level.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alert_latency import RULE, write_scene

from dfrt.live.alerts import Alerts
from dfrt.live.events import Dispatcher
from dfrt.live.multi import Lag, Stream, serve_streams
from dfrt.live.options import WatchOptions
from dfrt.live.watcher import Watcher
from dfrt.runtime.default_bundle import resolve_bundle
from dfrt.runtime.generate import SamplingConfig
from dfrt.runtime.pipeline import Pipeline

WINDOW, FPS, EVERY = 16.0, 1.0, 5.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_level(pipe: Pipeline, clip: Path, count: int, measure: float) -> dict:
    sink = io.StringIO()
    opts = WatchOptions(
        source=str(clip),
        window=WINDOW,
        fps=FPS,
        realtime=True,
        loop=True,
        alerts=(RULE,),
        alert_every=EVERY,
        read_stdin=False,
        sampling=SamplingConfig(temperature=0.0),
    )
    watchers = [Watcher(pipe, clip, WINDOW, FPS, realtime=True, loop=True) for _ in range(count)]
    try:
        streams = [Stream(f"s{i}", w, Alerts([RULE], EVERY)) for i, w in enumerate(watchers)]
        dispatcher = Dispatcher(None, sink)

        def serve(seconds: float) -> None:
            quiet = lambda message: None  # noqa: E731
            serve_streams(replace(opts, duration=seconds), streams, io.StringIO(), sink, quiet, dispatcher)

        serve(WINDOW + 1.0)  # the windows fill
        for stream in streams:
            stream.lag = Lag()
        before = [w.status() for w in watchers]
        checks_before = [s.alerts.status()[0]["checks"] for s in streams]
        load_before, cpu, start = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
        serve(measure)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        after = [w.status() for w in watchers]
        checks = [s.alerts.status()[0]["checks"] - c for s, c in zip(streams, checks_before, strict=True)]
    finally:
        for watcher in watchers:
            watcher.close()
    total = Lag()
    for stream in streams:
        total.merge(stream.lag)
    lag = total.to_dict()
    pairs = list(zip(after, before, strict=True))
    sampled = [a["frames_sampled"] - b["frames_sampled"] for a, b in pairs]
    dropped = sum(a["frames_dropped"] - b["frames_dropped"] for a, b in pairs)
    kept_up = min(sampled) >= int(elapsed * FPS) - 1  # all but one of the frames due (phase)
    holds = lag["checks"] > 0 and lag["late"] == 0 and kept_up and dropped == 0
    return {
        "streams": count,
        "holds": holds,
        "check_lag_seconds": lag,
        "checks_per_stream": {
            "min": min(checks),
            "mean": statistics.mean(checks),
            "due": round(elapsed / EVERY, 1),
        },
        "frames_sampled_per_stream": {"min": min(sampled), "due": round(elapsed * FPS, 1)},
        "frames_dropped": dropped,
        "events": sum(json.loads(line)["kind"] == "alert" for line in sink.getvalue().splitlines()),
        "process_cpu_cores": round(cpu / elapsed, 2),
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "measured_seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--levels", default="1,4,16,32,64,96,112,128,160", help="stream counts, increasing")
    parser.add_argument("--measure", type=float, default=40.0, help="seconds measured per level")
    parser.add_argument("--threads", type=int, help="graph and LLM threads (default: one per core)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="dfrt-watch-capacity-") as tmp:
        clip = write_scene(Path(tmp) / "stream.mp4", 40.0, (20.0,))  # looped: a yellow square every 40 s
        with Pipeline(resolve_bundle(args.bundle), threads=args.threads) as pipe:
            for count in levels:
                result = run_level(pipe, clip, count, args.measure)
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
                if not result["holds"]:
                    break
            bundle = str(pipe.bundle.root)
    held = [r["streams"] for r in results if r["holds"]]
    summary = {
        "bundle": bundle,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "capacity_streams": max(held, default=0),
        "first_level_behind": next((r["streams"] for r in results if not r["holds"]), None),
        "levels": results,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
