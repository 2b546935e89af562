"""The LLaMA-family language model of a checkpoint -> GGUF (F16) with its sentencepiece vocabulary.

Hugging Face names map onto llama.cpp's; q and k projections are permuted from the rotate-half layout of
Hugging Face to the interleaved-pair layout llama.cpp's rotary embedding expects. Norm weights stay F32.
Quantisation (Q8_0, Q4_K_M) is llama.cpp's own, through :func:`dfrt.runtime.llm.quantize_gguf`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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


def _rope_unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of :func:`_rope_permute`: interleaved pairs back to rotate-half rows per head."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _rope_heads(hf_name: str, cfg: LlamaConfig) -> int | None:
    """How many heads a tensor's rows are permuted over in GGUF (q and k projections), else None."""
    if hf_name.endswith("q_proj.weight"):
        return cfg.num_attention_heads
    if hf_name.endswith("k_proj.weight"):
        return cfg.num_key_value_heads
    return None


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


class TensorSource(Protocol):
    """Language-model tensors by Hugging Face name: shapes up front, data one tensor at a time."""

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``names`` in exactly the given order."""
        ...


class MappingSource:
    """A :class:`TensorSource` over tensors already in memory (tests, small models)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.tensors.items()}

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        return ((name, self.tensors[name]) for name in names)


class CheckpointSource:
    """A :class:`TensorSource` over the LLM tensors of a (sharded) checkpoint, read shard by shard."""

    def __init__(self, reader: CheckpointReader) -> None:
        self.reader = reader
        self.names = [k for k in reader.names() if is_llm_key(k)]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.reader.shapes({k: k for k in self.names})

    def order(self) -> list[str]:
        """The order in which reading is cheapest (shard by shard)."""
        return self.reader.read_order(self.names)

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        return self.reader.tensors({k: k for k in names})


def write_llama_gguf(
    source: TensorSource | Mapping[str, torch.Tensor],
    cfg: LlamaConfig,
    vocab: Vocab,
    out: Path,
    name: str = "llama",
) -> Path:
    """Write an F16 GGUF (norms F32) to ``out`` atomically (temporary file, then rename).

    Streams: the header and every tensor's info are written first, then each tensor's data as it is read,
    so memory holds one tensor (in float32 while it is permuted and cast), never the model.
    """
    gguf = require("gguf", "dfrt[export]")
    if not isinstance(source, MappingSource | CheckpointSource) and isinstance(source, Mapping):
        source = MappingSource(source)
    if len(vocab.tokens) != cfg.vocab_size:
        raise ExportError(
            f"tokenizer has {len(vocab.tokens)} pieces, the model's vocabulary is {cfg.vocab_size}"
        )
    shapes = source.shapes()
    order = source.order() if isinstance(source, CheckpointSource) else sorted(shapes, key=_order)
    tied = cfg.tie_word_embeddings and "lm_head.weight" not in shapes
    plan = [(hf, gguf_tensor_name(hf)) for hf in order]  # also refuses names without a GGUF counterpart
    if tied:
        plan.append(("model.embed_tokens.weight", "output.weight"))
    _check_shapes(shapes, cfg, tied)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _add_metadata(writer, gguf, cfg, vocab, name)
        for hf, gguf_name in plan:
            dtype = np.dtype(np.float32 if len(shapes[hf]) == 1 else np.float16)
            nbytes = int(np.prod(shapes[hf])) * dtype.itemsize
            writer.add_tensor_info(gguf_name, shapes[hf], dtype, nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        reads = source.read(order)
        if tied:
            reads = itertools.chain(reads, source.read(["model.embed_tokens.weight"]))
        for (hf, _), (got, tensor) in zip(plan, reads, strict=True):
            if got != hf:
                raise ExportError(f"tensor {got} arrived where {hf} was expected")
            writer.write_tensor_data(_gguf_array(hf, tensor, cfg))
            del tensor
        writer.close()
    return out


def _add_metadata(writer: Any, gguf: Any, cfg: LlamaConfig, vocab: Vocab, name: str) -> None:
    """The llama architecture's keys and the sentencepiece vocabulary, each through ``writer.add_<key>``."""
    metadata = {
        "name": name,
        "context_length": cfg.max_position_embeddings,
        "embedding_length": cfg.hidden_size,
        "block_count": cfg.num_hidden_layers,
        "feed_forward_length": cfg.intermediate_size,
        "head_count": cfg.num_attention_heads,
        "head_count_kv": cfg.num_key_value_heads,
        "layer_norm_rms_eps": cfg.rms_norm_eps,
        "rope_freq_base": cfg.rope_theta,
        "rope_dimension_count": cfg.head_dim,
        "file_type": gguf.LlamaFileType.MOSTLY_F16,
        "tokenizer_model": "llama",
        "token_list": vocab.tokens,
        "token_scores": vocab.scores,
        "token_types": vocab.types,
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "unk_token_id": vocab.unk,
        "add_bos_token": True,
        "add_eos_token": False,
    }
    for key, value in metadata.items():
        getattr(writer, f"add_{key}")(value)


def _gguf_array(hf_name: str, tensor: torch.Tensor, cfg: LlamaConfig) -> np.ndarray:
    """One tensor as GGUF stores it: q/k rows permuted for llama.cpp's rope, F16 (norms F32)."""
    array = tensor.detach().float().numpy()
    if heads := _rope_heads(hf_name, cfg):
        array = _rope_permute(array, heads)
    return np.ascontiguousarray(array.astype(np.float32 if array.ndim == 1 else np.float16))


def read_llama_gguf(path: Path, cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """An F16/F32 LLaMA GGUF written by :func:`write_llama_gguf` -> a float32 Hugging Face style state dict
    (q/k rows back in rotate-half order)."""
    from dfrt.model.llama import Llama

    gguf = require("gguf", "dfrt[export]")
    stored = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    state: dict[str, torch.Tensor] = {}
    for name, param in Llama(cfg).state_dict().items():
        gguf_name = gguf_tensor_name(name)
        if gguf_name not in stored:
            raise CheckpointError(f"{path}: tensor {gguf_name} missing")
        tensor = stored[gguf_name]
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            raise CheckpointError(f"{path}: {gguf_name} is {tensor.tensor_type.name}, only F16/F32 read back")
        array = np.asarray(tensor.data, dtype=np.float32).reshape(param.shape)
        if heads := _rope_heads(name, cfg):
            array = _rope_unpermute(array, heads)
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    return state


def _check_shapes(shapes: dict[str, tuple[int, ...]], cfg: LlamaConfig, tied: bool) -> None:
    """Every tensor the config implies is present with its shape, before a byte is written."""
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    expected = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not tied:
        expected["lm_head.weight"] = (cfg.vocab_size, h)
    per_layer = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (cfg.num_attention_heads * cfg.head_dim, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, cfg.num_attention_heads * cfg.head_dim),
        "mlp.gate_proj.weight": (cfg.intermediate_size, h),
        "mlp.up_proj.weight": (cfg.intermediate_size, h),
        "mlp.down_proj.weight": (h, cfg.intermediate_size),
    }
    for i in range(cfg.num_hidden_layers):
        expected.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise CheckpointError(
            f"{len(missing)} language-model tensors are missing ({', '.join(missing[:4])} ...)"
        )
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise CheckpointError(f"{key} has shape {tuple(shapes[key])}, config.json implies {shape}")


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
    source = CheckpointSource(CheckpointReader(checkpoint))
    if not source.names:
        raise CheckpointError(f"{checkpoint}: no language-model tensors (model.layers.*) inside")
    return write_llama_gguf(source, cfg, read_sentencepiece_vocab(tokenizer_path), out, checkpoint.name)
