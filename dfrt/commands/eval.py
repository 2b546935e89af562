"""`dfrt eval`: accuracy of a bundle on the held-out synthetic clips, DynFocus vs uniform vs random frames."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.commands import progress

STRATEGIES = (
    "dynfocus",
    "uniform",
    "random",
)  # dfrt.demo.evaluate.STRATEGIES (numpy, OpenCV: not imported here)


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, help="bundle directory (default: the demo bundle)")
    p.add_argument("--count", type=int, default=140, help="held-out clips to use (default 140, 20 per kind)")
    p.add_argument(
        "--strategies", default=",".join(STRATEGIES), help=f"comma-separated, from {','.join(STRATEGIES)}"
    )
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="ONNX graphs to run")
    p.add_argument(
        "--reference",
        action="store_true",
        help="run the visual path on the PyTorch model with the bundle's weights (needs dfrt[export])",
    )
    p.add_argument("--clips", type=Path, help="where the held-out mp4s are written (default: the cache dir)")
    p.add_argument("--threads", type=int, help="LLM threads (default: all cores)")
    p.add_argument(
        "--visual-tokens",
        type=int,
        metavar="N",
        help="DynFocus within N visual tokens (fewer key frames, then fewer frames); the baselines get as "
        "many cone-only frames as DynFocus's tokens hold",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.demo.evaluate import evaluate_bundle
    from dfrt.runtime import options
    from dfrt.runtime.default_bundle import resolve_bundle

    options.integer("--count", args.count, 1, 100_000)
    options.threads(args.threads)
    options.visual_tokens(args.visual_tokens)

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    report = evaluate_bundle(
        resolve_bundle(args.bundle, progress),
        args.count,
        strategies,
        precision=args.precision,
        reference=args.reference,
        clips=args.clips,
        threads=args.threads,
        progress=progress,
        visual_tokens=args.visual_tokens,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return 0
