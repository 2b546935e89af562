"""`dfrt export`: write a bundle of validated ONNX graphs from a config and optional checkpoints.

With a Hugging Face style checkpoint directory (DynFocus or LLaMA-VID layout) the config is recognised from
the tensor shapes, the language model is converted to GGUF first (streamed shard by shard), then the visual
path is loaded and exported: the two never hold memory at the same time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dfrt.commands import progress
from dfrt.config import CONFIGS, DynFocusConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="export the DynFocus graphs to an ONNX bundle and validate them")
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
        help="checkpoint file or directory (DynFocus, LLaMA-VID, eva_vit_g.pth, ...); repeatable",
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
        choices=("f16", "q8_0", "q4_k_m"),
        default="f16",
        help="GGUF type of an LLM converted from --checkpoint (default f16)",
    )
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime vs PyTorch parity check")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt._optional import require

    require("torch", "dfrt[export]")
    require("onnx", "dfrt[export]")
    from dfrt.errors import ConfigError
    from dfrt.export.bundle import build_model, export_bundle

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a directory")
    start = time.perf_counter()
    checkpoints = [*args.checkpoint, *([args.vision_weights] if args.vision_weights else [])]
    for path in checkpoints:
        if not path.exists():
            raise ConfigError(f"checkpoint not found: {path}")
    config = _config(args.config, checkpoints)
    from dfrt.manifest import PromptTemplate

    # a GGUF brought with --llm speaks its own chat template; a converted DynFocus/LLaMA-VID LLM is Vicuna v1
    prompt_name = args.prompt or ("gguf" if args.llm else "vicuna_v1")
    prompt = PromptTemplate() if prompt_name == "vicuna_v1" else PromptTemplate(name="gguf", stop=())
    llm, converted = args.llm, None
    if llm is None and (source := _llm_checkpoint(args.checkpoint)):
        converted = _convert_llm(source, args.out, args.quantize, config.llm_width)
        llm = converted
    try:
        if checkpoints:
            progress(f"loading the visual path ({config.name}) from {len(checkpoints)} checkpoint(s)")
        model, load_summary = build_model(config, checkpoints, args.seed, args.scoring)
        if load_summary:
            print(load_summary, file=sys.stderr)
        provenance: dict[str, object] = {
            "source": "checkpoint" if checkpoints else "random",
            "checkpoints": [str(p) for p in checkpoints],
            "seed": args.seed,
            "load_report": load_summary,
            "scoring": model.scoring,
            "note": "DynFocus authors published no weights; these come from the source named here.",
        }
        progress("exporting and validating the graphs")
        result = export_bundle(
            model,
            args.out,
            provenance,
            validate=not args.no_validate,
            progress=not args.json,
            llm=llm,
            prompt=prompt,
            move_llm=converted is not None,
        )
    finally:
        if converted is not None:
            converted.unlink(missing_ok=True)
    elapsed = time.perf_counter() - start
    if args.json:
        print(
            json.dumps(
                {
                    "bundle": str(result.bundle),
                    "config": config.name,
                    "seconds": round(elapsed, 2),
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
                },
                indent=2,
            )
        )
        return 0
    for r in result.parity:
        print(r.line())
    size = sum(f.bytes for f in result.manifest.files.values())
    print(
        f"bundle {result.bundle}: {len(result.manifest.graphs)} graphs, {size / 1e6:.1f} MB, {elapsed:.1f} s"
    )
    return 0


def _config(name: str | None, checkpoints: list[Path]) -> DynFocusConfig:
    """The named config, or the one whose shapes the checkpoints have (headers only), or tiny."""
    from dfrt.config import get_config

    if name or not checkpoints:
        return get_config(name or "tiny")
    from dfrt.model.weights import infer_config

    config = infer_config(checkpoints, {n: make() for n, make in CONFIGS.items()})
    progress(f"checkpoint shapes match the {config.name} config")
    return config


def _llm_checkpoint(checkpoints: list[Path]) -> Path | None:
    """The checkpoint directory that carries a LLaMA language model (config.json + tokenizer.model)."""
    for path in checkpoints:
        if path.is_dir() and (path / "config.json").is_file() and (path / "tokenizer.model").is_file():
            return path
    return None


def _convert_llm(checkpoint: Path, out: Path, quantize: str, width: int) -> Path:
    """Convert the checkpoint's LLM to GGUF beside the bundle (F16, then llama.cpp quantisation)."""
    from dfrt.export.gguf_llm import convert_checkpoint_llm
    from dfrt.runtime.llm import quantize_gguf

    progress(f"converting the language model of {checkpoint} to GGUF ({quantize})")
    out.mkdir(parents=True, exist_ok=True)
    f16 = convert_checkpoint_llm(checkpoint, out / ".llm-f16.gguf.partial", expected_width=width)
    if quantize == "f16":
        return f16
    try:
        return quantize_gguf(f16, out / f".llm-{quantize}.gguf.partial", quantize)
    finally:
        f16.unlink(missing_ok=True)
