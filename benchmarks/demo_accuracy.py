"""Accuracy of the trained demo on the held-out clips: DynFocus vs uniform vs random frames, for the PyTorch
reference, the ONNX FP32 graphs and the ONNX INT8 graphs, in one run.

    python benchmarks/demo_accuracy.py [--bundle DIR] [--count 140] [--json out.json]

``--clips validation`` measures the validation clips instead (for choosing between builds, e.g. INT8
calibrations, without looking at the test set); ``--strategies dynfocus`` measures one strategy.

The bundle defaults to the shipped demo (assembled in the cache dir); INT8 is measured when the bundle has
INT8 graphs (`dfrt build BUNDLE --precision int8 --calib CLIPS/`). Training never sees the held-out clips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from dfrt.demo.evaluate import (
    STRATEGIES,
    OnnxEmbedder,
    ReferenceEmbedder,
    evaluate,
    held_out_set,
    validation_set,
)
from dfrt.demo.world import BRIEF_KINDS, KINDS
from dfrt.paths import cache_dir
from dfrt.runtime.default_bundle import resolve_bundle
from dfrt.runtime.pipeline import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--count", type=int, default=140)
    parser.add_argument("--variants", default="pytorch,onnx-fp32,onnx-int8")
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--clips", choices=("test", "validation"), default="test")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    bundle = resolve_bundle(args.bundle, print)
    if args.clips == "validation":
        items = validation_set(args.count)
    else:
        items = held_out_set(args.count, cache_dir() / "demo-test")
    strategies = tuple(args.strategies.split(","))
    record: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} ({os.cpu_count()} cores)",
        "bundle": str(bundle),
        "clips": len(items),
        "clip_set": args.clips,
        "results": {},
    }
    results: dict[str, object] = record["results"]  # type: ignore[assignment]
    for variant in args.variants.split(","):
        precision = "int8" if variant == "onnx-int8" else "fp32"
        if precision not in _precisions(bundle):
            print(f"{variant}: the bundle has no {precision} graphs, skipped")
            continue
        start = time.perf_counter()
        with Pipeline(bundle, backend="onnxruntime", precision=precision) as pipe:
            if variant == "pytorch":
                from dfrt.demo.training.reference import load_reference

                embedder = ReferenceEmbedder(load_reference(pipe.bundle), pipe)
            else:
                embedder = OnnxEmbedder(pipe)
            scores = evaluate(items, pipe, embedder, strategies)
        results[variant] = {name: s.to_dict() for name, s in scores.items()}
        print(f"== {variant} ({time.perf_counter() - start:.0f} s)")
        print(_table({name: s.to_dict() for name, s in scores.items()}))
        for name, s in scores.items():
            if constant := s.one_answer_line():
                print(f"{name}: one answer to most questions of {constant}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


def _precisions(bundle: Path) -> set[str]:
    from dfrt.runtime.bundle import Bundle

    return set(Bundle.open(bundle, verify=False).precisions)


def _table(scores: dict[str, dict[str, object]]) -> str:
    head = (
        "| strategy | overall | brief events | brief answer in key frames | answer of the right kind | "
        + " | ".join(KINDS)
        + " |"
    )
    rows = [head, "|" + "---|" * (5 + len(KINDS))]
    for name, d in scores.items():
        per_kind: dict[str, float] = d["per_kind"]  # type: ignore[assignment]
        cells = " | ".join(f"{per_kind.get(k, float('nan')):.2f}" for k in KINDS)
        typed = d.get("well_typed", float("nan"))
        seen = d.get("brief_evidence_in_key_frames", float("nan"))
        rows.append(
            f"| {name} | {d['overall']:.3f} | {d['brief_events']:.3f} | {seen:.2f} | {typed:.2f} | {cells} |"
        )
    return "\n".join(rows) + f"\n(brief events = {', '.join(BRIEF_KINDS)})"


if __name__ == "__main__":
    main()
