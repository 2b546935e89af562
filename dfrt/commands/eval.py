"""`dfrt eval`: accuracy of a bundle on the held-out synthetic clips, DynFocus vs uniform vs random frames."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.commands import progress


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dfrt.demo.evaluate import STRATEGIES

    p = sub.add_parser(
        "eval", help="accuracy on the demo's held-out clips: DynFocus vs uniform vs random frame selection"
    )
    p.add_argument("--bundle", type=Path, help="bundle directory (default: the demo bundle)")
    p.add_argument("--count", type=int, default=140, help="held-out clips to use (default 140, 20 per kind)")
    p.add_argument(
        "--strategies", default=",".join(STRATEGIES), help=f"comma-separated, from {','.join(STRATEGIES)}"
    )
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="ONNX graphs to run")
    p.add_argument(
        "--reference",
        action="store_true",
        help="run the visual path on the PyTorch model with the bundle's weights (needs dfrt[export])",
    )
    p.add_argument("--clips", type=Path, help="where the held-out mp4s are written (default: the cache dir)")
    p.add_argument("--threads", type=int, help="LLM threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.demo.default import resolve_bundle
    from dfrt.demo.evaluate import (
        STRATEGIES,
        Embedder,
        OnnxEmbedder,
        ReferenceEmbedder,
        evaluate,
        held_out_set,
    )
    from dfrt.errors import ConfigError
    from dfrt.paths import cache_dir
    from dfrt.runtime.llm import LlamaModel
    from dfrt.runtime.visual import VisualPipeline

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ConfigError(f"--strategies: unknown {', '.join(unknown) or '(none given)'}; use {STRATEGIES}")
    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}")
    bundle = resolve_bundle(args.bundle, progress)
    visual = VisualPipeline.open(bundle, precision=args.precision)
    llm_file = visual.bundle.llm_file
    if not llm_file:
        raise ConfigError(f"{bundle}: the bundle carries no LLM")
    embedder: Embedder = OnnxEmbedder(visual)
    engine = f"onnxruntime {args.precision}"
    if args.reference:
        from dfrt.demo.reference import load_reference

        embedder = ReferenceEmbedder(load_reference(visual.bundle), visual)
        engine = "pytorch fp32"
    progress(f"writing/reading {args.count} held-out clips")
    items = held_out_set(args.count, args.clips or cache_dir() / "demo-test")
    with LlamaModel(visual.bundle.path(llm_file), n_ctx=1024, threads=args.threads) as llm:
        scores = evaluate(
            items,
            visual,
            llm,
            embedder,
            strategies,
            on_item=lambda done, total: progress(f"{done}/{total} clips") if done % 10 == 0 else None,
        )
    report = {
        "bundle": str(bundle),
        "visual_path": engine,
        "clips": len(items),
        "strategies": {name: s.to_dict() for name, s in scores.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    header = f"{'strategy':<10} {'overall':>8} {'brief':>7} {'seen':>5} {'typed':>6}"
    print(f"{header}  per kind  ({engine}, {len(items)} clips)")
    for name, s in scores.items():
        d = s.to_dict()
        kinds = " ".join(f"{k}={v:.2f}" for k, v in d["per_kind"].items())  # type: ignore[union-attr]
        seen, typed = d["brief_evidence_in_key_frames"], d["well_typed"]
        row = f"{name:<10} {d['overall']:>8.3f} {d['brief_events']:>7.3f} {seen:>5.2f} {typed:>6.2f}"
        print(f"{row}  {kinds}")
        if constant := s.one_answer_line():
            print(f"{'':<10} one answer to most questions of: {constant}")
    print("brief: accuracy on brief events; seen: share of them whose key frames show the answer")
    return 0
