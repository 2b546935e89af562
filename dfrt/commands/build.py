"""`dfrt build BUNDLE --precision fp16|int8`: gated INT8 Q/DQ graphs (any machine), TensorRT engines (GPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.commands import progress


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dfrt.calibration.gate import MIN_COSINE, MIN_KEY_AGREEMENT

    p = sub.add_parser("build", help="INT8 calibration and TensorRT engines for this GPU")
    p.add_argument("bundle", type=Path)
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16")
    p.add_argument(
        "--calib", type=Path, help="folder of videos to calibrate INT8 on (half held out for the gate)"
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
    p.add_argument("--min-cosine", type=float, default=MIN_COSINE, help=f"INT8 gate (default {MIN_COSINE})")
    p.add_argument(
        "--min-key-agreement",
        type=float,
        default=MIN_KEY_AGREEMENT,
        help=f"INT8 gate: share of FP32 key frames kept (default {MIN_KEY_AGREEMENT})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.errors import BuildError, ConfigError
    from dfrt.runtime.pipeline import tensorrt_available

    report: dict[str, object] = {"bundle": str(args.bundle), "precision": args.precision}
    if args.questions is not None and args.precision != "int8":
        raise ConfigError("--questions calibrates INT8: use it with --precision int8 --calib VIDEOS_DIR")
    if args.precision == "int8":
        if args.calib is None:
            raise ConfigError("INT8 needs calibration videos: --calib VIDEOS_DIR")
        from dfrt.calibration.build import build_int8
        from dfrt.calibration.dataset import calibration_questions

        questions = calibration_questions(args.calib, args.questions)
        progress(f"calibrating INT8 on the videos in {args.calib} with {len(questions)} question(s)")
        result = build_int8(
            args.bundle,
            args.calib,
            questions,
            min_cosine=args.min_cosine,
            min_key_agreement=args.min_key_agreement,
        )
        for graph, gate in result.per_graph.items():
            verdict = "int8" if graph in result.kept else "stays fp32 (fails the gate alone)"
            progress(f"{graph}: {gate.line()} -> {verdict}")
        report["int8"] = {
            "graphs": result.kept,
            "gate": result.gate.__dict__,
            "per_graph": {g: r.__dict__ for g, r in result.per_graph.items()},
            "calibration_videos": [str(p) for p in result.calibration_videos],
            "gate_videos": [str(p) for p in result.gate_videos],
            "calibration_frames": result.calibration_frames,
            "questions": list(result.questions),
        }
        summary = f"INT8 graphs {', '.join(result.kept)} added: {result.gate.line()}"
    else:
        summary = ""
    if tensorrt_available():
        from dfrt.runtime.visual import VisualPipeline

        pipeline = VisualPipeline.open(
            args.bundle, backend="tensorrt", precision=args.precision, progress=progress
        )
        report["engines"] = sorted(pipeline.runners)
        summary += (
            f"{'; ' if summary else ''}TensorRT engines ready for {', '.join(sorted(pipeline.runners))}"
        )
    elif args.precision == "fp16":
        raise BuildError(
            "TensorRT is not usable here (no tensorrt package or no CUDA GPU): FP16 engines are built on "
            "the GPU that runs them (pip install 'dfrt[trt]', or JetPack's TensorRT), by dfrt build or on "
            "first dfrt infer --backend tensorrt"
        )
    else:
        summary += (
            "; no TensorRT here: the INT8 graphs run in onnxruntime (--precision int8), engines on a GPU"
        )
    print(json.dumps(report, indent=2) if args.json else summary)
    return 0
