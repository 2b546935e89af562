"""`dfrt bench`: figures measured in one run (see :mod:`dfrt.bench`); `--quick` is the CI variant."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.commands import options, progress


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes: the CI variant (under 3 minutes)")
    p.add_argument(
        "--frontier",
        type=Path,
        metavar="RECORD",
        help="print the accuracy/cost frontier recorded by benchmarks/frontier.py (measures nothing)",
    )
    p.add_argument(
        "--bundle", type=Path, help="bundle to time (default: export the tiny config, needs torch)"
    )
    p.add_argument("--llm", type=Path, help="GGUF LLM to time the prefill and decoding with")
    p.add_argument(
        "--clip-seconds", type=int, help="length of the timed clip (default 30, or 120 without --quick)"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="a GPU's peak TFLOP/s (FP16 dense): print the vision tower's compute roofline in frames/s",
    )
    p.add_argument(
        "--backend-frames",
        type=int,
        default=8,
        help="frames per call when timing onnxruntime vs PyTorch (default 8; 2 for the paper size)",
    )
    p.add_argument(
        "--decode-minutes",
        type=int,
        help="length of the generated video for seek vs sequential decoding (default 15, 2 with --quick)",
    )
    p.add_argument("--plot", type=Path, help="write a PNG of visual tokens and latency vs video length")
    p.add_argument("--json", action="store_true", help="print one JSON record")
    p.add_argument("--record", type=Path, help="also write the JSON record to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.bench.report import format_report
    from dfrt.bench.suite import BenchOptions, run_bench

    if args.frontier is not None:
        from dfrt.bench.frontier import format_frontier, read_frontier

        frontier = read_frontier(args.frontier)
        print(json.dumps(frontier, indent=2) if args.json else format_frontier(frontier))
        return 0
    record = run_bench(options(BenchOptions, args), progress)
    print(json.dumps(record, indent=2) if args.json else format_report(record))
    return 0
