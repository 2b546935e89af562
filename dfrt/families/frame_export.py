"""The export flow shared by frame VLM families (SmolVLM2, InternVL3.5): a Hugging Face checkpoint directory
-> a dfrt bundle. Needs torch and transformers.

The bundle holds: the vision tower + connector as one ONNX graph (validated in onnxruntime against the
loaded model, TensorRT-10.3 ready), the language model as GGUF (F16, or quantised by llama.cpp; or a GGUF
given), the model's own ``tokenizer.json``, the preprocessing of its video processor, its video prompt format,
and optionally a dual-encoder frame scorer (``--scorer HF_DIR``: :mod:`dfrt.scorers.export`). A family gives
what differs in a :class:`FrameFamily`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
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
from dfrt.fileio import check_output_dir, claimed_files, commit_bundle, sha256_file, staging_dir
from dfrt.jsonio import read_json
from dfrt.manifest import FileEntry, GraphEntry, Manifest, Preprocess, PromptTemplate

log = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"
LLM_NAME = "llm.gguf"
MAX_CONFIG_BYTES = 1 << 20
QUANTIZE_TYPES = ("f16", "f32", "q8_0", "q4_k_m")


@dataclass(frozen=True)
class FrameFamily:
    """What a frame VLM family's export provides.

    ``config_from_model(model_config, preprocessor, name)``: dfrt's config; ``visual(model)``: the module
    whose output is each frame's rows; ``describe(config)``: one progress line; ``preprocessors``: the
    checkpoint's processor files, the first present read; ``pixel_range``: the range of random validation
    pixels (normalised); ``text_prefix`` / ``arch``: the text model's keys and llama.cpp's architecture;
    ``pad_vocab``: pad the GGUF vocabulary to the model's embedding rows (Qwen's are padded).
    """

    name: str
    config_from_model: Callable[[Any, dict[str, Any], str], Any]
    visual: Callable[[Any], nn.Module]
    prompt: PromptTemplate
    describe: Callable[[Any], str]
    preprocessors: tuple[str, ...] = ("preprocessor_config.json",)
    pixel_range: float = 1.0
    text_prefix: str = "model.text_model."
    arch: str = "llama"
    pad_vocab: bool = False

    def export(
        self,
        checkpoint: Path,
        out: Path,
        *,
        scorer: Path | None = None,
        llm: Path | None = None,
        quantize: str = "f16",
        validate: bool = True,
        progress: Callable[[str], None] = lambda message: None,
    ) -> ExportResult:
        """Write the bundle ``out`` from a checkpoint directory of this family (module docstring): what
        ``dfrt export --checkpoint`` calls; ``llm``: a GGUF of the same language model to carry instead of
        converting it (e.g. a pre-quantised one)."""
        family = self
        if quantize not in QUANTIZE_TYPES:
            raise ConfigError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_TYPES)}")
        check_output_dir(out, inputs=[p for p in (checkpoint, scorer, llm) if p is not None])
        claims = claimed_files(out)
        for needed in ("config.json", TOKENIZER_NAME):
            if not (checkpoint / needed).is_file():
                raise CheckpointError(f"{checkpoint}: {needed} is missing")
        preprocessor = read_preprocessor(checkpoint, family.preprocessors)
        progress(f"loading {checkpoint} with transformers")
        model = load_model(checkpoint)
        config = family.config_from_model(model.config, preprocessor, checkpoint.name)
        progress(family.describe(config))
        out.mkdir(exist_ok=True)
        staging = staging_dir(out)
        try:
            scorer_spec = None
            if scorer is not None:
                from dfrt.scorers.export import export_scorer

                progress(f"exporting the frame scorer from {scorer}")
                scorer_spec, _ = export_scorer(scorer, staging, progress=progress)
            spec_side = _spec(family.name)
            scoring = spec_side.SCORING_MODES[1] if scorer_spec is not None else spec_side.SCORING_MODES[0]
            graphs, parity = _export_visual(family, model, config, staging, validate, progress)
            if scorer_spec is not None:
                files = dict(zip(scorer_spec.graph_specs(), scorer_spec.files[:2], strict=True))
                for name, spec in scorer_spec.graph_specs().items():
                    graphs[name] = GraphEntry(files[name], spec)
            shutil.copyfile(checkpoint / TOKENIZER_NAME, staging / TOKENIZER_NAME)
            llm_entry = _language_model(family, model, checkpoint, llm, staging, quantize, config, progress)
            del model
            files = {
                p.name: FileEntry(sha256_file(p), p.stat().st_size)
                for p in sorted(staging.iterdir())
                if p.is_file()
            }
            manifest = Manifest(
                config=config,
                preprocess=Preprocess.for_config(config, family.name),
                graphs=graphs,
                files=files,
                tokenizer=TOKENIZER_NAME,
                prompt=family.prompt,
                weights={
                    "source": "checkpoint",
                    "checkpoints": [str(checkpoint)],
                    "scorer": str(scorer or ""),
                },
                llm=llm_entry,
                scoring=scoring,
                family=family.name,
                scorer=scorer_spec,
            )
            manifest.check_consistency()
            listed = {name: (entry.sha256, entry.bytes) for name, entry in files.items()}
            commit_bundle(out, staging, manifest.to_json(), listed, claims)
            return ExportResult(out, manifest, parity, None)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def load_model(checkpoint: Path) -> Any:
    """The checkpoint through transformers, in float32 and eval mode (weights only: no remote code)."""
    transformers = require("transformers", "dfrt[export]")
    try:
        with quiet_transformers():
            model = transformers.AutoModelForImageTextToText.from_pretrained(
                str(checkpoint), dtype=torch.float32, trust_remote_code=False
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{checkpoint}: transformers cannot load it ({one_line(e)})") from e
    return model.eval()


def text_config(model: Any) -> dict[str, Any]:
    """The text model's config, tied as the loaded model really is (its output layer is, or equals, the
    token embeddings): the top-level and text configs may disagree on the flag."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == embed.data_ptr() or (head.shape == embed.shape and torch.equal(head, embed))
    return {**model.config.text_config.to_dict(), "tie_word_embeddings": bool(tied)}


def read_preprocessor(checkpoint: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The first of the checkpoint's processor files present (an empty dict when none is)."""
    for name in names:
        path = checkpoint / name
        if path.is_file():
            data = read_json(path, MAX_CONFIG_BYTES)
            if not isinstance(data, dict):
                raise CheckpointError(f"{path}: expected a JSON object")
            return data
    return {}


def _spec(family: str) -> Any:
    from dfrt import registry

    return registry.spec(family)


def _export_visual(
    family: FrameFamily,
    model: Any,
    config: Any,
    staging: Path,
    validate: bool,
    progress: Callable[[str], None],
) -> tuple[dict[str, GraphEntry], list[OutputParity]]:
    spec = _spec(family.name).graph_specs(config)["vision"]
    module = family.visual(model).eval()
    progress("exporting the visual graph (vision tower + connector)")
    onnx_path, data_path = export_module(module, spec, staging)
    parity: list[OutputParity] = []
    if validate:
        rng = np.random.default_rng(0)
        s, r = config.vision.image_size, family.pixel_range
        feeds = [{"pixels": rng.uniform(-r, r, (n, 3, s, s)).astype(np.float32)} for n in (1, 3)]
        parity = validate_module(module, spec, onnx_path, feeds=feeds)
        for result in parity:
            log.info("%s", result.line())
        require_parity(parity)
        require_tensorrt_ready(onnx_path, spec.name)
    entry = GraphEntry(onnx_path.name, spec, data_path.name if data_path else None)
    return {"vision": entry}, parity


def _language_model(
    family: FrameFamily,
    model: Any,
    checkpoint: Path,
    llm: Path | None,
    staging: Path,
    quantize: str,
    config: Any,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The GGUF in the bundle: ``llm`` copied, or the checkpoint's text model converted."""
    width = config.llm_width
    if llm is not None:
        entry = describe_gguf(llm, width)
        shutil.copyfile(llm, staging / entry["file"])
        return entry
    from dfrt.export.gguf_llm import read_bpe_vocab, write_text_model_gguf

    config_path = checkpoint / "tokenizer_config.json"
    hf_text = text_config(model)
    vocab = read_bpe_vocab(
        checkpoint / TOKENIZER_NAME,
        config_path if config_path.is_file() else None,
        vocab_size=int(hf_text["vocab_size"]) if family.pad_vocab else None,
    )
    target = staging / LLM_NAME
    progress(f"converting the language model to GGUF ({quantize})")
    dtype = "f32" if quantize == "f32" else "f16"
    source = target if quantize in ("f16", "f32") else staging / f".llm-f16-{os.getpid()}.gguf.partial"
    write_text_model_gguf(
        model.state_dict(),
        hf_text,
        vocab,
        source,
        checkpoint.name,
        dtype=dtype,
        prefix=family.text_prefix,
        arch=family.arch,
    )
    if source != target:
        from dfrt.runtime.llm import quantize_gguf

        try:
            quantize_gguf(source, target, quantize)
        finally:
            source.unlink(missing_ok=True)
    return describe_gguf(target, width)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
