"""Accuracy against visual tokens and seconds per question on the demo world (issue: a visual-token budget).

    python benchmarks/frontier.py --count 140 --clips fresh --json benchmarks/frontier.json \
        --plot docs/images/frontier.png
    dfrt bench --frontier benchmarks/frontier.json      # prints the table and the two ratios

DynFocus at its default budget and at smaller ones (fewer key frames, then fewer frames), uniform and random
frames (cones only) from 1 to 12 frames (more overflow the demo LM's trained context of 512 positions),
each question timed end to end on this machine. ``--clips fresh``
is a test set nothing was chosen on (seeds 6 x 10^9 + i); ``--clips test`` the old one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from dfrt.demo.evaluate import held_out_set
from dfrt.demo.frontier import frontier_record, measure_frontier
from dfrt.demo.world import fresh_test_clip, held_out_clip
from dfrt.paths import cache_dir
from dfrt.runtime.default_bundle import resolve_bundle
from dfrt.runtime.pipeline import Pipeline

BUDGETS = (None, 140, 104, 68, 50, 40)  # demo, 16 frames: k = 4 (176 tokens), 3, 2, 1; 7 frames; 2 frames
FRAME_COUNTS = tuple(range(1, 13))  # 13 frames (494 tokens) + the prompt overflow the LM's 512 positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--count", type=int, default=140)
    parser.add_argument("--clips", choices=("fresh", "test"), default="fresh")
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--plot", type=Path, help="write the PNG here")
    args = parser.parse_args()
    clip_of = fresh_test_clip if args.clips == "fresh" else held_out_clip
    items = held_out_set(args.count, cache_dir() / f"demo-{args.clips}-frontier", clip_of=clip_of)
    start = time.perf_counter()
    with Pipeline(resolve_bundle(args.bundle, print), backend="onnxruntime") as pipe:
        points = measure_frontier(
            pipe,
            items,
            BUDGETS,
            FRAME_COUNTS,
            on_item=lambda done, total: print(f"{done}/{total}", flush=True) if done % 10 == 0 else None,
        )
    record = frontier_record(points, args.clips, len(items))
    record |= {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} ({os.cpu_count()} cores)",
        "seconds": round(time.perf_counter() - start, 1),
    }
    from dfrt.bench.frontier import format_frontier, save_frontier_plot

    print(format_frontier(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.plot:
        save_frontier_plot(record, args.plot)


if __name__ == "__main__":
    main()
