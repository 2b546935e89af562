"""SmolVLM2 / Idefics3 checkpoint (a Hugging Face directory) -> a dfrt bundle. Needs torch and transformers.

The bundle holds: the SigLIP tower + pixel-shuffle connector as one ONNX graph (validated in onnxruntime
against the loaded model, TensorRT-10.3 ready), the SmolLM2 language model as GGUF (F16, or quantised by
llama.cpp), the model's own ``tokenizer.json``, the preprocessing of its video processor, its video prompt
format, and optionally a dual-encoder frame scorer (``--scorer HF_DIR``: :mod:`dfrt.scorers.export`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfrt._optional import require
from dfrt.errors import CheckpointError, ConfigError
from dfrt.export.bundle_writer import ExportResult, require_tensorrt_ready
from dfrt.export.gguf_info import describe_gguf
from dfrt.export.onnx_export import export_module
from dfrt.export.parity import OutputParity, require_parity, validate_module
from dfrt.export.quiet import quiet_transformers
from dfrt.families.smolvlm import prompt as video_prompt
from dfrt.families.smolvlm.spec import (
    SCORING_MODES,
    SIGLIP_MEAN,
    SIGLIP_STD,
    SmolVLMConfig,
    SmolVLMVision,
    graph_specs,
)
from dfrt.fileio import check_output_dir, claimed_files, commit_bundle, sha256_file, staging_dir
from dfrt.jsonio import read_json
from dfrt.manifest import FileEntry, GraphEntry, Manifest, Preprocess, PromptTemplate

log = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"
LLM_NAME = "llm.gguf"
MAX_CONFIG_BYTES = 1 << 20
QUANTIZE_TYPES = ("f16", "f32", "q8_0", "q4_k_m")


class VisualGraph(nn.Module):
    """SmolVLM's ``get_image_features`` for whole, unpadded frames: patch embedding plus every position
    (all patches are real), the encoder with no mask, the post-layernorm, the connector."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        inner = model.model
        self.embeddings = inner.vision_model.embeddings
        self.encoder = inner.vision_model.encoder
        self.post_layernorm = inner.vision_model.post_layernorm
        self.connector = inner.connector

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (T, P, W)
        hidden = patches + self.embeddings.position_embedding.weight[None]
        hidden = self.encoder(inputs_embeds=hidden).last_hidden_state
        return self.connector(self.post_layernorm(hidden))  # (T, tokens, D)


def config_from_model(model_config: Any, preprocessor: dict[str, Any], name: str) -> SmolVLMConfig:
    """dfrt's config from the checkpoint's (a transformers ``SmolVLMConfig``) and its preprocessor."""
    v = model_config.vision_config
    vision = SmolVLMVision(
        image_size=int(v.image_size),
        patch_size=int(v.patch_size),
        width=int(v.hidden_size),
        depth=int(v.num_hidden_layers),
        heads=int(v.num_attention_heads),
        intermediate=int(v.intermediate_size),
        ln_eps=float(v.layer_norm_eps),
    )
    mean = tuple(float(x) for x in preprocessor.get("image_mean", SIGLIP_MEAN))
    std = tuple(float(x) for x in preprocessor.get("image_std", SIGLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError("preprocessor_config.json: image_mean and image_std need three numbers each")
    defaults = SmolVLMConfig()
    grid = vision.grid // int(model_config.scale_factor)
    return SmolVLMConfig(
        name=name[:255] or "smolvlm",
        vision=vision,
        scale_factor=int(model_config.scale_factor),
        llm_width=int(model_config.text_config.hidden_size),
        image_mean=mean,  # type: ignore[arg-type]
        image_std=std,  # type: ignore[arg-type]
        pooled_grid=min(defaults.pooled_grid, grid),
        default_visual_tokens=max(defaults.default_visual_tokens, 5 * grid * grid),
    )


def prompt_template() -> PromptTemplate:
    return PromptTemplate(
        name=video_prompt.PROMPT_NAME,
        system="",
        format=video_prompt.PROMPT_FORMAT,
        stop=(video_prompt.END_OF_UTTERANCE,),
    )


def load_model(checkpoint: Path) -> Any:
    """The checkpoint through transformers, in float32 and eval mode (weights only: no remote code)."""
    transformers = require("transformers", "dfrt[export]")
    try:
        with quiet_transformers():
            model = transformers.AutoModelForImageTextToText.from_pretrained(
                str(checkpoint), dtype=torch.float32, trust_remote_code=False
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{checkpoint}: transformers cannot load it ({_one_line(e)})") from e
    return model.eval()


def text_config(model: Any) -> dict[str, Any]:
    """The text model's config, tied as the loaded model really is (its output layer is, or equals, the
    token embeddings): the top-level and text configs may disagree on the flag."""
    embed = model.model.text_model.embed_tokens.weight
    head = model.lm_head.weight
    tied = head.data_ptr() == embed.data_ptr() or (head.shape == embed.shape and torch.equal(head, embed))
    return {**model.config.text_config.to_dict(), "tie_word_embeddings": bool(tied)}


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    scorer: Path | None = None,
    llm: Path | None = None,
    quantize: str = "f16",
    validate: bool = True,
    progress: Callable[[str], None] = lambda message: None,
) -> ExportResult:
    """Write the bundle ``out`` from a SmolVLM checkpoint directory (module docstring); ``llm``: a GGUF of
    the same language model to carry instead of converting it (e.g. a pre-quantised one)."""
    if quantize not in QUANTIZE_TYPES:
        raise ConfigError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_TYPES)}")
    check_output_dir(out, inputs=[p for p in (checkpoint, scorer, llm) if p is not None])
    claims = claimed_files(out)
    for needed in ("config.json", TOKENIZER_NAME):
        if not (checkpoint / needed).is_file():
            raise CheckpointError(f"{checkpoint}: {needed} is missing")
    preprocessor_path = checkpoint / "preprocessor_config.json"
    preprocessor = read_json(preprocessor_path, MAX_CONFIG_BYTES) if preprocessor_path.is_file() else {}
    if not isinstance(preprocessor, dict):
        raise CheckpointError(f"{preprocessor_path}: expected a JSON object")
    progress(f"loading {checkpoint} with transformers")
    model = load_model(checkpoint)
    config = config_from_model(model.config, preprocessor, checkpoint.name)
    progress(
        f"{config.name}: SigLIP {config.vision.width} wide x {config.vision.depth} blocks at "
        f"{config.vision.image_size}px, {config.tokens_per_frame} tokens a frame, "
        f"LLM width {config.llm_width}"
    )
    out.mkdir(exist_ok=True)
    staging = staging_dir(out)
    try:
        scorer_spec = None
        if scorer is not None:
            from dfrt.scorers.export import export_scorer

            progress(f"exporting the frame scorer from {scorer}")
            scorer_spec, _ = export_scorer(scorer, staging, progress=progress)
        scoring = SCORING_MODES[1] if scorer_spec is not None else SCORING_MODES[0]
        graphs, parity = _export_visual(model, config, staging, validate, progress)
        if scorer_spec is not None:
            files = dict(zip(scorer_spec.graph_specs(), scorer_spec.files[:2], strict=True))
            for name, spec in scorer_spec.graph_specs().items():
                graphs[name] = GraphEntry(files[name], spec)
        shutil.copyfile(checkpoint / TOKENIZER_NAME, staging / TOKENIZER_NAME)
        llm_entry = _language_model(model, checkpoint, llm, staging, quantize, config.llm_width, progress)
        del model
        files = {
            p.name: FileEntry(sha256_file(p), p.stat().st_size)
            for p in sorted(staging.iterdir())
            if p.is_file()
        }
        manifest = Manifest(
            config=config,
            preprocess=Preprocess.for_config(config, "smolvlm"),
            graphs=graphs,
            files=files,
            tokenizer=TOKENIZER_NAME,
            prompt=prompt_template(),
            weights={"source": "checkpoint", "checkpoints": [str(checkpoint)], "scorer": str(scorer or "")},
            llm=llm_entry,
            scoring=scoring,
            family="smolvlm",
            scorer=scorer_spec,
        )
        manifest.check_consistency()
        listed = {name: (entry.sha256, entry.bytes) for name, entry in files.items()}
        commit_bundle(out, staging, manifest.to_json(), listed, claims)
        return ExportResult(out, manifest, parity, None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_visual(
    model: Any, config: SmolVLMConfig, staging: Path, validate: bool, progress: Callable[[str], None]
) -> tuple[dict[str, GraphEntry], list[OutputParity]]:
    spec = graph_specs(config)["vision"]
    module = VisualGraph(model).eval()
    progress("exporting the visual graph (SigLIP + connector)")
    onnx_path, data_path = export_module(module, spec, staging)
    parity: list[OutputParity] = []
    if validate:
        rng = np.random.default_rng(0)
        s = config.vision.image_size
        feeds = [{"pixels": rng.uniform(-1, 1, (n, 3, s, s)).astype(np.float32)} for n in (1, 3)]
        parity = validate_module(module, spec, onnx_path, feeds=feeds)
        for result in parity:
            log.info("%s", result.line())
        require_parity(parity)
        require_tensorrt_ready(onnx_path, spec.name)
    entry = GraphEntry(onnx_path.name, spec, data_path.name if data_path else None)
    return {"vision": entry}, parity


def _language_model(
    model: Any,
    checkpoint: Path,
    llm: Path | None,
    staging: Path,
    quantize: str,
    width: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The GGUF in the bundle: ``llm`` copied, or the checkpoint's text model converted."""
    if llm is not None:
        entry = describe_gguf(llm, width)
        shutil.copyfile(llm, staging / entry["file"])
        return entry
    from dfrt.export.gguf_llm import read_bpe_vocab, write_text_model_gguf

    config_path = checkpoint / "tokenizer_config.json"
    vocab = read_bpe_vocab(checkpoint / TOKENIZER_NAME, config_path if config_path.is_file() else None)
    target = staging / LLM_NAME
    progress(f"converting the language model to GGUF ({quantize})")
    dtype = "f32" if quantize == "f32" else "f16"
    source = target if quantize in ("f16", "f32") else staging / f".llm-f16-{os.getpid()}.gguf.partial"
    write_text_model_gguf(model.state_dict(), text_config(model), vocab, source, checkpoint.name, dtype=dtype)
    if source != target:
        from dfrt.runtime.llm import quantize_gguf

        try:
            quantize_gguf(source, target, quantize)
        finally:
            source.unlink(missing_ok=True)
    return describe_gguf(target, width)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
