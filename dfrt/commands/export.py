"""`dfrt export`: write a bundle of validated ONNX graphs from a config and optional checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from dfrt.commands import options, progress

if TYPE_CHECKING:
    from dfrt.export.convert import ExportSummary


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.config import CONFIGS  # stdlib only

    p.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        help="model dimensions (default: recognised from --checkpoint shapes, else tiny)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="checkpoint file or directory (DynFocus, LLaMA-VID, eva_vit_g.pth, ...; a SmolVLM2/Idefics3 "
        "directory is recognised from its config.json); repeatable",
    )
    p.add_argument(
        "--scorer",
        type=Path,
        help="a SigLIP, SigLIP2 or CLIP directory (Hugging Face layout) whose image and text towers score "
        "frames against the question (open-VLM families; default: none, key frames uniform)",
    )
    p.add_argument(
        "--vision-weights",
        type=Path,
        help="the LAVIS EVA-ViT-g weights (eva_vit_g.pth), when the checkpoint does not carry the tower",
    )
    p.add_argument(
        "--scoring",
        choices=("trained", "question"),
        help="DPE frame scores: the trained scorer (paper) or question-aware (dfrt's extension, needs no "
        "trained scorer); default: question when the checkpoint has no scorer (LLaMA-VID), else trained",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights not taken from a checkpoint")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--llm", type=Path, help="GGUF LLM to put in the bundle (its width must match the config)")
    p.add_argument(
        "--prompt",
        choices=("vicuna_v1", "gguf"),
        help="prompt template: vicuna_v1 (DynFocus; the default) or the GGUF's own chat template "
        "(the default with --llm)",
    )
    p.add_argument(
        "--quantize",
        choices=("f16", "f32", "q8_0", "q4_k_m"),
        default="f16",
        help="GGUF type of an LLM converted from --checkpoint (default f16; f32 for open-VLM checkpoints "
        "only: exact parity)",
    )
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime vs PyTorch parity check")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.export.convert import ExportRequest, export

    request = options(
        ExportRequest,
        args,
        checkpoints=tuple(args.checkpoint),
        validate=not args.no_validate,
        show_progress=not args.json,
    )
    print_summary(export(request, progress), args.json)
    return 0


def print_summary(summary: ExportSummary, as_json: bool) -> None:
    """The parity of every graph output and the bundle written (``dfrt export`` and ``dfrt pull``)."""
    result = summary.result
    if as_json:
        document = {
            "bundle": str(result.bundle),
            "config": summary.config,
            "seconds": round(summary.seconds, 2),
            "files": {name: f.bytes for name, f in result.manifest.files.items()},
            "parity": [
                {
                    "graph": r.graph,
                    "output": r.output,
                    "axes": r.axes,
                    "max_abs_error": r.max_abs,
                    "cosine": r.cosine,
                    "tolerance": r.tolerance,
                    "ok": r.ok,
                }
                for r in result.parity
            ],
        }
        print(json.dumps(document, indent=2))
        return
    for r in result.parity:
        print(r.line())
    size = sum(f.bytes for f in result.manifest.files.values())
    graphs = len(result.manifest.graphs)
    print(f"bundle {result.bundle}: {graphs} graphs, {size / 1e6:.1f} MB, {summary.seconds:.1f} s")
