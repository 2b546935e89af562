"""`dfrt export` and `dfrt pull` as one library call: a config and checkpoints in, a validated bundle out.

With a Hugging Face style checkpoint directory (DynFocus or LLaMA-VID layout) the config is recognised from
the tensor shapes, the language model is converted to GGUF first (streamed shard by shard), then the visual
path is loaded and exported: the two never hold memory at the same time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dfrt._optional import require
from dfrt.config import CONFIGS, DynFocusConfig, get_config
from dfrt.errors import ConfigError
from dfrt.fileio import check_output_dir, claimed_files
from dfrt.manifest import PromptTemplate

if TYPE_CHECKING:
    from dfrt.export.bundle_writer import ExportResult

QUANTIZE_TYPES = ("f16", "q8_0", "q4_k_m")
PROMPTS = ("vicuna_v1", "gguf")
NO_WEIGHTS_NOTE = "DynFocus authors published no weights; these come from the source named here."


@dataclass(frozen=True)
class ExportRequest:
    """What to export: ``out`` is the bundle directory written (created, or replaced if dfrt wrote it; its
    parent must exist)."""

    out: Path
    config: str | None = None  # default: recognised from the checkpoints' shapes, else tiny
    checkpoints: tuple[Path, ...] = ()
    vision_weights: Path | None = None  # LAVIS eva_vit_g.pth when the checkpoint lacks the tower
    scoring: str | None = None  # trained | question; default from the checkpoint
    seed: int = 0  # weights not taken from a checkpoint
    llm: Path | None = None  # a GGUF to carry instead of converting the checkpoint's LLM
    scorer: Path | None = None  # a SigLIP/CLIP directory scoring frames (open-VLM families)
    prompt: str | None = None  # vicuna_v1 | gguf; default gguf with --llm, else vicuna_v1
    quantize: str = "f16"  # GGUF type of a converted LLM
    validate: bool = True  # onnxruntime vs PyTorch parity before anything is committed
    show_progress: bool = True  # a progress bar over the graphs


@dataclass
class ExportSummary:
    config: str
    seconds: float
    result: ExportResult


def export(request: ExportRequest, progress: Callable[[str], None] = lambda message: None) -> ExportSummary:
    """Write the bundle ``request.out``; every problem is a :class:`~dfrt.errors.DfrtError` naming it."""
    extra = (request.vision_weights, request.llm, request.scorer)
    inputs = [*request.checkpoints, *(p for p in extra if p is not None)]
    check_export_out(request.out, inputs)
    require("torch", "dfrt[export]")
    require("onnx", "dfrt[export]")
    start = time.perf_counter()
    family = checkpoint_family(request.checkpoints)
    if family is not None:
        return _export_family(family, request, progress, start)
    if request.scorer is not None:
        raise ConfigError("--scorer is for open-VLM checkpoints (SmolVLM2): DynFocus scores its own frames")
    if request.quantize == "f32":
        raise ConfigError("--quantize f32 is for open-VLM checkpoints; DynFocus LLMs convert to f16 or less")
    from dfrt.export.bundle_writer import build_model, export_bundle

    checkpoints = [*request.checkpoints, *([request.vision_weights] if request.vision_weights else [])]
    for path in checkpoints:
        if not path.exists():
            raise ConfigError(f"checkpoint not found: {path}")
    config = _config(request.config, checkpoints, progress)
    # a GGUF brought with --llm speaks its own chat template; a converted DynFocus/LLaMA-VID LLM is Vicuna v1
    prompt_name = request.prompt or ("gguf" if request.llm else "vicuna_v1")
    prompt = PromptTemplate() if prompt_name == "vicuna_v1" else PromptTemplate(name="gguf", stop=())
    llm, converted = request.llm, None
    if llm is None and (source := _llm_checkpoint(request.checkpoints)):
        converted = _convert_llm(source, request.out, request.quantize, config.llm_width, progress)
        llm = converted
    try:
        if checkpoints:
            progress(f"loading the visual path ({config.name}) from {len(checkpoints)} checkpoint(s)")
        model, load_summary = build_model(config, checkpoints, request.seed, request.scoring)
        if load_summary:
            progress(load_summary)
        provenance: dict[str, object] = {
            "source": "checkpoint" if checkpoints else "random",
            "checkpoints": [str(p) for p in checkpoints],
            "seed": request.seed,
            "load_report": load_summary,
            "scoring": model.scoring,
            "note": NO_WEIGHTS_NOTE,
        }
        progress("exporting and validating the graphs")
        result = export_bundle(
            model,
            request.out,
            provenance,
            validate=request.validate,
            progress=request.show_progress,
            llm=llm,
            prompt=prompt,
            move_llm=converted is not None,
        )
    finally:
        if converted is not None:
            converted.unlink(missing_ok=True)
    return ExportSummary(config.name, time.perf_counter() - start, result)


def checkpoint_family(checkpoints: Sequence[Path]) -> str | None:
    """The model family (other than DynFocus) a single checkpoint directory's ``config.json`` names."""
    from dfrt import registry
    from dfrt.jsonio import read_json

    dirs = [p for p in checkpoints if p.is_dir() and (p / "config.json").is_file()]
    for path in dirs:
        family = registry.family_of_checkpoint(read_json(path / "config.json", 1 << 20, "config.json"))
        if family is not None:
            if len(checkpoints) != 1:
                raise ConfigError(f"{path} is a {family} checkpoint: export it alone (one --checkpoint)")
            return family
    return None


def _export_family(
    family: str, request: ExportRequest, progress: Callable[[str], None], start: float
) -> ExportSummary:
    """An open-VLM checkpoint through its family's export side (:mod:`dfrt.families`)."""
    from dfrt import registry

    refused = {"--config": request.config, "--vision-weights": request.vision_weights,
               "--scoring": request.scoring, "--prompt": request.prompt}  # fmt: skip
    for flag, value in refused.items():
        if value is not None:
            raise ConfigError(f"{flag} is for DynFocus checkpoints, not {family} ones")
    (checkpoint,) = request.checkpoints
    progress(f"{checkpoint} is a {family} checkpoint")
    result = registry.export(family).export_checkpoint(
        checkpoint,
        request.out,
        scorer=request.scorer,
        llm=request.llm,
        quantize=request.quantize,
        validate=request.validate,
        progress=progress,
    )
    return ExportSummary(result.manifest.config.name, time.perf_counter() - start, result)


def check_export_out(out: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse, in one line and before any work (or download), an ``--out`` dfrt must not write: a file, a
    link, a missing parent, one of ``inputs``, a directory holding other things than a dfrt bundle, or a
    ``dfrt.json`` dfrt did not write. Removes the staging folders of killed exports there."""
    check_output_dir(out, inputs=inputs)
    claimed_files(out)


def _config(name: str | None, checkpoints: list[Path], progress: Callable[[str], None]) -> DynFocusConfig:
    """The named config, or the one whose shapes the checkpoints have (headers only), or tiny."""
    if name or not checkpoints:
        return get_config(name or "tiny")
    from dfrt.model.weights import infer_config

    config = infer_config(checkpoints, {n: make() for n, make in CONFIGS.items()})
    progress(f"checkpoint shapes match the {config.name} config")
    return config


def _llm_checkpoint(checkpoints: tuple[Path, ...]) -> Path | None:
    """The checkpoint directory that carries a LLaMA language model (config.json + tokenizer.model)."""
    for path in checkpoints:
        if path.is_dir() and (path / "config.json").is_file() and (path / "tokenizer.model").is_file():
            return path
    return None


def _convert_llm(
    checkpoint: Path, out: Path, quantize: str, width: int, progress: Callable[[str], None]
) -> Path:
    """Convert the checkpoint's LLM to GGUF beside the bundle (F16, then llama.cpp quantisation)."""
    from dfrt.export.gguf_llm import convert_checkpoint_llm
    from dfrt.runtime.llm import quantize_gguf

    progress(f"converting the language model of {checkpoint} to GGUF ({quantize})")
    out.mkdir(exist_ok=True)  # its parent exists: check_export_out
    pid = os.getpid()  # in the name: what a killed export leaves is removed by the next one
    f16 = convert_checkpoint_llm(checkpoint, out / f".llm-f16-{pid}.gguf.partial", expected_width=width)
    if quantize == "f16":
        return f16
    try:
        return quantize_gguf(f16, out / f".llm-{quantize}-{pid}.gguf.partial", quantize)
    finally:
        f16.unlink(missing_ok=True)
