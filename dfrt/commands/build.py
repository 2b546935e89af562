"""`dfrt build BUNDLE --precision fp16|int8`: gated FP16/INT8 ONNX graphs (any machine), TensorRT engines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.commands import progress


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.calibration.thresholds import THRESHOLDS  # no imports

    (fp16_cosine, fp16_keys), (int8_cosine, int8_keys) = THRESHOLDS["fp16"], THRESHOLDS["int8"]
    p.add_argument("bundle", type=Path)
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16", help="the graphs to add")
    p.add_argument(
        "--calib",
        type=Path,
        help="folder of real videos (half held out for the gate): INT8 scales or the FP16 activation ranges "
        "are measured on them. Required for INT8, and for FP16 where TensorRT is not usable (generated "
        "frames would not show the ranges real ones reach); with TensorRT and no --calib, FP16 engines are "
        "built from the FP32 graphs",
    )
    p.add_argument(
        "--questions",
        type=Path,
        help="file of questions to calibrate with, one a line (default: questions.txt beside the videos, "
        "else a few generic ones)",
    )
    p.add_argument(
        "--workspace", type=int, default=4096, help="TensorRT builder workspace in MB (default 4096)"
    )
    p.add_argument(
        "--min-cosine",
        type=float,
        help=f"gate: visual-embedding cosine against FP32 (default fp16 {fp16_cosine}, int8 {int8_cosine})",
    )
    p.add_argument(
        "--min-key-agreement",
        type=float,
        help=f"gate: share of FP32 key frames kept (default fp16 {fp16_keys}, int8 {int8_keys})",
    )
    p.add_argument(
        "--quantizer",
        choices=("auto", "modelopt", "onnxruntime"),
        default="auto",
        help="INT8: NVIDIA Model Optimizer's ONNX quantizer (nvidia-modelopt, the modelopt extra; calibrates "
        "on the CPU) or onnxruntime's; auto (default): Model Optimizer when it imports, else onnxruntime. "
        "The accuracy gate is the same",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.calibration.build import build_precision

    result = build_precision(
        args.bundle,
        args.precision,
        args.calib,
        args.questions,
        min_cosine=args.min_cosine,
        min_key_agreement=args.min_key_agreement,
        progress=progress,
        quantizer=args.quantizer,
    )
    report: dict[str, object] = {"bundle": str(args.bundle), "precision": args.precision}
    lines = []
    graphs = result.graphs
    if graphs is not None:
        for graph, gate in graphs.per_graph.items():
            verdict = args.precision if graph in graphs.kept else "stays fp32 (fails the gate alone)"
            progress(f"{graph}: {gate.line()} -> {verdict}")
        for graph, conversion in graphs.conversions.items():
            progress(f"{graph} fp16: {conversion.line()}")
        report[args.precision] = {
            "graphs": graphs.kept,
            "gate": graphs.gate.__dict__,
            "per_graph": {g: r.__dict__ for g, r in graphs.per_graph.items()},
            "calibration_videos": [str(p) for p in graphs.calibration_videos],
            "gate_videos": [str(p) for p in graphs.gate_videos],
            "calibration_frames": graphs.calibration_frames,
            "questions": list(graphs.questions),
            **({"quantizer": graphs.quantizer} if graphs.quantizer else {}),
            **(
                {"conversions": {g: c.__dict__ for g, c in graphs.conversions.items()}}
                if graphs.conversions
                else {}
            ),
        }
        by = f" (quantized by {graphs.quantizer})" if graphs.quantizer else ""
        lines.append(
            f"{args.precision.upper()} graphs {', '.join(graphs.kept)} added{by}: {graphs.gate.line()}"
        )
    if result.engines:
        report["engines"] = result.engines
        lines.append(f"TensorRT engines ready for {', '.join(result.engines)}")
    else:
        where = f"the {args.precision} graphs run in onnxruntime (--precision {args.precision})"
        lines.append(f"no TensorRT here: {where}, engines on a GPU")
    print(json.dumps(report, indent=2) if args.json else "; ".join(lines))
    return 0
