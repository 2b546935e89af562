"""The LLaMA-family language model of a checkpoint -> GGUF (F16, or F32 for exact parity tests) with its
vocabulary: sentencepiece (LLaMA / Vicuna, ``tokenizer.model``) or byte-level BPE (SmolLM2 / SmolVLM, Qwen2
/ Qwen3, ``tokenizer.json``).

Two architectures: llama.cpp's "llama" (LLaMA, SmolLM2) and "qwen3" (Qwen3: per-head RMSNorm of q and k,
``attn_q_norm`` / ``attn_k_norm``, a ``head_dim`` of its own). Hugging Face names map onto llama.cpp's;
for "llama" the q and k projections are permuted from the rotate-half layout of Hugging Face to the
interleaved-pair layout llama.cpp's rotary embedding expects ("qwen3" uses llama.cpp's NEOX rope, which is
rotate-half: no permutation). Norm weights stay F32. A VLM's text model (SmolVLM: ``model.text_model.*``,
InternVL: ``model.language_model.*``) is written by :func:`write_text_model_gguf`.
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
from dfrt.export.gguf_vocab import Vocab, read_bpe_vocab, read_sentencepiece_vocab
from dfrt.fileio import atomic_path
from dfrt.model.llama import LlamaConfig
from dfrt.model.weights import CheckpointReader, is_llm_key

__all__ = [
    "Qwen3Config",
    "Vocab",
    "read_bpe_vocab",
    "read_sentencepiece_vocab",
    "write_llama_gguf",
    "write_text_model_gguf",
]

DTYPES = ("f16", "f32")
ARCHITECTURES = ("llama", "qwen3")  # llama.cpp's names, as ``general.architecture`` stores them


@dataclass(frozen=True)
class Qwen3Config:
    """A Qwen3 text model's shapes (transformers' ``Qwen3Config``): LLaMA's, plus a ``head_dim`` of its own
    (Qwen3-0.6B: 16 heads of 128 on a width of 1024) and RMSNorm of each head's q and k before the rope."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False

    @classmethod
    def from_hf(cls, data: Mapping[str, Any]) -> Qwen3Config:
        """From the ``config.json`` (or a VLM's ``text_config``) of a Qwen3 model; what llama.cpp's "qwen3"
        cannot run (rope scaling, sliding windows, biases, another activation) is one CheckpointError."""
        rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
        if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
            raise CheckpointError(f"rope scaling {rope} is not supported by the GGUF converter yet")
        layer_types = data.get("layer_types") or []
        try:
            if data.get("hidden_act", "silu") != "silu":
                raise ValueError(f"hidden_act {data['hidden_act']!r} is not silu")
            if data.get("attention_bias") or data.get("use_sliding_window"):
                raise ValueError("attention biases and sliding windows are not Qwen3's dense layout")
            if any(kind != "full_attention" for kind in layer_types):
                raise ValueError(f"layer types {sorted(set(layer_types))} are not all full attention")
            heads = int(data["num_attention_heads"])
            return cls(
                vocab_size=int(data["vocab_size"]),
                hidden_size=int(data["hidden_size"]),
                intermediate_size=int(data["intermediate_size"]),
                num_hidden_layers=int(data["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(data.get("num_key_value_heads") or heads),
                head_dim=int(data.get("head_dim") or int(data["hidden_size"]) // heads),
                rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", data.get("rope_theta", 1000000.0))),
                max_position_embeddings=int(data.get("max_position_embeddings", 40960)),
                tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"config.json is not a Qwen3 config: {e!r}") from e


TextConfig = LlamaConfig | Qwen3Config


def architecture(cfg: TextConfig) -> str:
    """llama.cpp's architecture name for a text config."""
    return "qwen3" if isinstance(cfg, Qwen3Config) else "llama"


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


def _rope_heads(hf_name: str, cfg: TextConfig) -> int | None:
    """How many heads a tensor's rows are permuted over in GGUF (LLaMA's q and k projections), else None."""
    if isinstance(cfg, Qwen3Config):
        return None  # NEOX rope: llama.cpp rotates halves, as Hugging Face does
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
_QWEN3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}


def gguf_tensor_name(name: str, arch: str = "llama") -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".", 3)
    layer_names = _QWEN3_LAYER_NAMES if arch == "qwen3" else _LAYER_NAMES
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in layer_names:
        return f"blk.{int(parts[2])}.{layer_names[parts[3]]}"
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


class RenamedSource:
    """A :class:`TensorSource` showing another source's tensors under new names (``names``: new -> old)."""

    def __init__(self, source: TensorSource, names: Mapping[str, str]) -> None:
        self.source, self.names = source, dict(names)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        theirs = self.source.shapes()
        return {ours: theirs[old] for ours, old in self.names.items()}

    def order(self) -> list[str]:
        cheapest = getattr(self.source, "order", None)
        if not callable(cheapest):
            return sorted(self.names, key=_order)
        back = {old: ours for ours, old in self.names.items()}
        return [back[old] for old in cheapest() if old in back]

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        back = {self.names[ours]: ours for ours in names}
        for old, tensor in self.source.read([self.names[ours] for ours in names]):
            yield back[old], tensor


def write_llama_gguf(
    source: TensorSource | Mapping[str, torch.Tensor],
    cfg: TextConfig,
    vocab: Vocab,
    out: Path,
    name: str = "llama",
    dtype: str = "f16",
    chat_template: str | None = None,
) -> Path:
    """Write an F16 (norms F32) or, with ``dtype="f32"``, an all-F32 GGUF to ``out`` atomically (temporary
    file, then rename). ``chat_template`` (Jinja text) is stored as ``tokenizer.chat_template``. ``cfg``: a
    :class:`LlamaConfig` writes llama.cpp's "llama" architecture, a :class:`Qwen3Config` its "qwen3".

    Streams: the header and every tensor's info are written first, then each tensor's data as it is read,
    so memory holds one tensor (in float32 while it is permuted and cast), never the model.
    """
    gguf = require("gguf", "dfrt[export]")
    if dtype not in DTYPES:
        raise ExportError(f"GGUF dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if chat_template is not None and not isinstance(chat_template, str):
        raise ExportError(f"the chat template must be text, got {type(chat_template).__name__}")
    if not isinstance(source, MappingSource | CheckpointSource) and isinstance(source, Mapping):
        source = MappingSource(source)
    if len(vocab.tokens) != cfg.vocab_size:
        raise ExportError(
            f"tokenizer has {len(vocab.tokens)} pieces, the model's vocabulary is {cfg.vocab_size}"
        )
    shapes = source.shapes()
    cheapest = getattr(source, "order", None)  # a checkpoint reads cheapest shard by shard
    order = cheapest() if callable(cheapest) else sorted(shapes, key=_order)
    tied = cfg.tie_word_embeddings and "lm_head.weight" not in shapes
    arch = architecture(cfg)
    plan = [(hf, gguf_tensor_name(hf, arch)) for hf in order]  # also refuses names without a counterpart
    if tied:
        plan.append(("model.embed_tokens.weight", "output.weight"))
    _check_shapes(shapes, cfg, tied)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        _add_metadata(writer, gguf, cfg, vocab, name, dtype, chat_template)
        for hf, gguf_name in plan:
            stored = _stored_dtype(len(shapes[hf]), dtype)
            nbytes = int(np.prod(shapes[hf])) * stored.itemsize
            writer.add_tensor_info(gguf_name, shapes[hf], stored, nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        reads = source.read(order)
        if tied:
            reads = itertools.chain(reads, source.read(["model.embed_tokens.weight"]))
        for (hf, _), (got, tensor) in zip(plan, reads, strict=True):
            if got != hf:
                raise ExportError(f"tensor {got} arrived where {hf} was expected")
            writer.write_tensor_data(_gguf_array(hf, tensor, cfg, dtype))
            del tensor
        writer.close()
    return out


def _stored_dtype(ndim: int, dtype: str) -> np.dtype:
    return np.dtype(np.float32 if ndim == 1 or dtype == "f32" else np.float16)


def _add_metadata(
    writer: Any,
    gguf: Any,
    cfg: TextConfig,
    vocab: Vocab,
    name: str,
    dtype: str = "f16",
    chat_template: str | None = None,
) -> None:
    """The architecture's keys and the vocabulary, each through ``writer.add_<key>`` (which prefixes the
    writer's architecture: ``llama.context_length``, ``qwen3.context_length``)."""
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
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
        "file_type": file_type,
    }
    if isinstance(cfg, Qwen3Config):  # a head width of its own: llama.cpp reads it from these keys
        metadata.update({"key_length": cfg.head_dim, "value_length": cfg.head_dim})
    metadata.update(_vocab_metadata(vocab))
    if chat_template is not None:
        metadata["chat_template"] = chat_template
    for key, value in metadata.items():
        getattr(writer, f"add_{key}")(value)


def _vocab_metadata(vocab: Vocab) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` keys, by ``writer.add_<key>`` name, in the order they are written."""
    if vocab.model == "llama":
        return {
            "tokenizer_model": "llama",
            "token_list": vocab.tokens,
            "token_scores": vocab.scores,
            "token_types": vocab.types,
            "bos_token_id": vocab.bos,
            "eos_token_id": vocab.eos,
            "unk_token_id": vocab.unk,
            "add_bos_token": vocab.add_bos,
            "add_eos_token": False,
        }
    if vocab.model != "gpt2" or not vocab.pre or not vocab.merges:
        raise ExportError(f"vocabulary model {vocab.model!r} (pre {vocab.pre!r}) cannot be written to GGUF")
    metadata: dict[str, Any] = {
        "tokenizer_model": "gpt2",
        "tokenizer_pre": vocab.pre,
        "token_list": vocab.tokens,
        "token_types": vocab.types,
        "token_merges": vocab.merges,
    }
    ids = {"bos": vocab.bos, "eos": vocab.eos, "eot": vocab.eot, "unk": vocab.unk, "pad": vocab.pad}
    metadata.update({f"{key}_token_id": i for key, i in ids.items() if i is not None})
    metadata.update({"add_bos_token": vocab.add_bos, "add_eos_token": False})
    return metadata


def _gguf_array(hf_name: str, tensor: torch.Tensor, cfg: TextConfig, dtype: str = "f16") -> np.ndarray:
    """One tensor as GGUF stores it: q/k rows permuted for llama.cpp's rope, F16 (norms F32) or F32."""
    array = tensor.detach().float().numpy()
    if heads := _rope_heads(hf_name, cfg):
        array = _rope_permute(array, heads)
    return np.ascontiguousarray(array.astype(_stored_dtype(array.ndim, dtype)))


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


def _check_shapes(shapes: dict[str, tuple[int, ...]], cfg: TextConfig, tied: bool) -> None:
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
    if isinstance(cfg, Qwen3Config):
        per_layer.update(
            {"self_attn.q_norm.weight": (cfg.head_dim,), "self_attn.k_norm.weight": (cfg.head_dim,)}
        )
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


TEXT_MODEL_PREFIX = "model.text_model."  # SmolVLM / Idefics3: model.text_model.{embed_tokens,layers,norm}
LANGUAGE_MODEL_PREFIX = "model.language_model."  # InternVL (transformers 5): model.language_model.*
_UNSTORED = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry; recomputed by llama.cpp


def text_model_names(names: list[str] | Iterator[str], prefix: str = TEXT_MODEL_PREFIX) -> dict[str, str]:
    """The text-model tensors of a VLM's keys, as plain Hugging Face LLaMA name -> key: ``{prefix}X`` becomes
    ``model.X`` and a top-level ``lm_head.weight`` stays; every other key (vision tower, connector) is left
    out. An unknown ``{prefix}`` tensor is kept: writing it is refused rather than it being dropped."""
    plain: dict[str, str] = {}
    for key in names:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if not rest.endswith(_UNSTORED):
                plain[f"model.{rest}"] = key
        elif key == "lm_head.weight":
            plain[key] = key
    return plain


def write_text_model_gguf(
    source: TensorSource | Mapping[str, torch.Tensor],
    hf_text_config: Mapping[str, Any],
    vocab: Vocab,
    out: Path,
    name: str = "llama",
    dtype: str = "f16",
    chat_template: str | None = None,
    prefix: str = TEXT_MODEL_PREFIX,
    arch: str = "llama",
) -> Path:
    """A VLM's text model (SmolVLM: ``model.text_model.*``, InternVL: ``model.language_model.*``, and
    ``lm_head.weight``) -> GGUF of llama.cpp's ``arch`` ("llama", or "qwen3" for InternVL3.5's Qwen3).

    ``source``: the whole VLM state dict (in memory) or a :class:`TensorSource` over its checkpoint; only
    the text model's tensors are read. ``hf_text_config``: the ``text_config`` of the VLM's config; a
    ``num_attention_heads`` it lacks is transformers' LLaMA default, 32 (SmolVLM2's config.json omits it),
    and ``tie_word_embeddings`` there (set it from the top-level config if only that one has it) makes the
    output layer the token embeddings: a ``lm_head.weight`` in ``source`` is then not written.
    """
    if arch not in ARCHITECTURES:
        raise ExportError(f"GGUF architecture {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    cfg: TextConfig = (
        Qwen3Config.from_hf(hf_text_config)
        if arch == "qwen3"
        else LlamaConfig.from_hf({"num_attention_heads": 32, **hf_text_config})
    )
    if isinstance(source, Mapping) and not isinstance(source, MappingSource | CheckpointSource):
        names = text_model_names(list(source), prefix)
    else:
        names = text_model_names(list(source.shapes()), prefix)
    if cfg.tie_word_embeddings:
        names.pop("lm_head.weight", None)
    if "model.embed_tokens.weight" not in names:
        raise CheckpointError(f"no {prefix}embed_tokens.weight: not a VLM text model under {prefix!r}")
    if isinstance(source, Mapping) and not isinstance(source, MappingSource | CheckpointSource):
        plain: TensorSource | Mapping[str, torch.Tensor] = {k: source[old] for k, old in names.items()}
    else:
        plain = RenamedSource(source, names)
    return write_llama_gguf(plain, cfg, vocab, out, name, dtype=dtype, chat_template=chat_template)
