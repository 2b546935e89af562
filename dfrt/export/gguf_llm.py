"""The LLaMA-family language model of a checkpoint -> GGUF (F16) with its sentencepiece vocabulary.

Hugging Face names map onto llama.cpp's; q and k projections are permuted from the rotate-half layout of
Hugging Face to the interleaved-pair layout llama.cpp's rotary embedding expects. Norm weights stay F32.
Quantisation (Q8_0, Q4_K_M) is llama.cpp's own, through :func:`dfrt.runtime.llm.quantize_gguf`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfrt._optional import require
from dfrt.errors import CheckpointError, ExportError
from dfrt.fileio import atomic_path
from dfrt.model.llama import LlamaConfig
from dfrt.model.weights import CheckpointReader, is_llm_key


@dataclass(frozen=True)
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    bos: int
    eos: int
    unk: int


def read_sentencepiece_vocab(path: Path) -> Vocab:
    """Pieces, scores and token types of a sentencepiece ``tokenizer.model`` (LLaMA / Vicuna)."""
    gguf = require("gguf", "dfrt[export]")
    sentencepiece = require("sentencepiece", "dfrt[export]")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a sentencepiece model ({e})") from e
    tokens, scores, types = [], [], []
    for i in range(processor.GetPieceSize()):
        tokens.append(processor.IdToPiece(i).encode("utf-8"))
        scores.append(float(processor.GetScore(i)))
        if processor.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif processor.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif processor.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif processor.IsByte(i):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        types.append(int(kind))
    return Vocab(tokens, scores, types, processor.bos_id(), processor.eos_id(), processor.unk_id())


def _rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first halves | second halves] (rotate-half) to interleaved pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_tensor_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"blk.{int(parts[2])}.{_LAYER_NAMES[parts[3]]}"
    raise CheckpointError(f"language-model tensor {name} has no GGUF counterpart")


def write_llama_gguf(
    tensors: Mapping[str, torch.Tensor], cfg: LlamaConfig, vocab: Vocab, out: Path, name: str = "llama"
) -> Path:
    """Write an F16 GGUF (norms F32) to ``out`` atomically (temporary file, then rename)."""
    gguf = require("gguf", "dfrt[export]")

    if len(vocab.tokens) != cfg.vocab_size:
        raise ExportError(
            f"tokenizer has {len(vocab.tokens)} pieces, the model's vocabulary is {cfg.vocab_size}"
        )
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(name)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(vocab.tokens)
        writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.types)
        writer.add_bos_token_id(vocab.bos)
        writer.add_eos_token_id(vocab.eos)
        writer.add_unk_token_id(vocab.unk)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        names = dict(tensors)
        if cfg.tie_word_embeddings and "lm_head.weight" not in names:
            names["lm_head.weight"] = names["model.embed_tokens.weight"]
        for hf_name in sorted(names, key=_order):
            array = names[hf_name].detach().float().numpy()
            if hf_name.endswith("q_proj.weight"):
                array = _rope_permute(array, cfg.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                array = _rope_permute(array, cfg.num_key_value_heads)
            array = array.astype(np.float32 if array.ndim == 1 else np.float16)
            writer.add_tensor(gguf_tensor_name(hf_name), array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def _order(name: str) -> tuple[int, int, str]:
    if name.startswith("model.layers."):
        return (1, int(name.split(".")[2]), name)
    return (0 if "embed" in name else 2, 0, name)


def convert_checkpoint_llm(checkpoint: Path, out: Path, expected_width: int | None = None) -> Path:
    """A Hugging Face style directory (``config.json``, ``tokenizer.model``, LLaMA weights) -> GGUF F16.

    ``expected_width``: the visual projector's output width; a different LLM width is refused up front.
    """
    config_path, tokenizer_path = checkpoint / "config.json", checkpoint / "tokenizer.model"
    for needed in (config_path, tokenizer_path):
        if not needed.is_file():
            raise CheckpointError(f"{checkpoint}: {needed.name} is missing; the LLM cannot be converted")
    try:
        cfg = LlamaConfig.from_hf(json.loads(config_path.read_text()))
    except ValueError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
    if expected_width is not None and cfg.hidden_size != expected_width:
        raise CheckpointError(
            f"{checkpoint}: the language model is {cfg.hidden_size} wide, the visual projector outputs "
            f"{expected_width}: pick the config that matches the checkpoint"
        )
    reader = CheckpointReader(checkpoint)
    wanted = {k: k for k in reader.names() if is_llm_key(k)}
    if not wanted:
        raise CheckpointError(f"{checkpoint}: no language-model tensors (model.layers.*) inside")
    tensors = dict(reader.tensors(wanted))
    return write_llama_gguf(tensors, cfg, read_sentencepiece_vocab(tokenizer_path), out, checkpoint.name)
