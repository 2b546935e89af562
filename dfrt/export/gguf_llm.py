"""The LLaMA-family language model of a checkpoint -> GGUF (F16, or F32 for exact parity tests) with its
vocabulary: sentencepiece (LLaMA / Vicuna, ``tokenizer.model``) or byte-level BPE (SmolLM2 / SmolVLM,
``tokenizer.json``).

Hugging Face names map onto llama.cpp's; q and k projections are permuted from the rotate-half layout of
Hugging Face to the interleaved-pair layout llama.cpp's rotary embedding expects. Norm weights stay F32.
A VLM's text model (SmolVLM: ``model.text_model.*``) is written by :func:`write_text_model_gguf`.
Quantisation (Q8_0, Q4_K_M) is llama.cpp's own, through :func:`dfrt.runtime.llm.quantize_gguf`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dfrt._optional import require
from dfrt.errors import CheckpointError, ConfigError, ExportError
from dfrt.fileio import atomic_path
from dfrt.jsonio import read_json
from dfrt.model.llama import LlamaConfig
from dfrt.model.weights import CheckpointReader, is_llm_key

DTYPES = ("f16", "f32")
MAX_BPE_TOKENIZER_BYTES = 64 << 20  # SmolLM2's tokenizer.json is 3.5 MB, Llama 3's 9 MB, Gemma 3's 33 MB
MAX_BPE_CONFIG_BYTES = 1 << 20  # tokenizer_config.json / generation_config.json (chat templates: ~20 KB)
MAX_BPE_VOCAB = 1 << 20  # Gemma 3: 262,144
MAX_BPE_MERGES = 1 << 21
MAX_BPE_TOKEN_CHARS = 4096
# the chat-turn end tokens llama.cpp also recognises by name; the first present is written as the EOT token
EOT_TOKENS = ("<end_of_utterance>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>")


@dataclass(frozen=True)
class Vocab:
    """A tokenizer as GGUF stores it.

    ``model`` "llama" is sentencepiece (``scores`` per piece, pieces with U+2581 for spaces); "gpt2" is
    byte-level BPE (pieces as their byte-level strings, ``merges`` "left right" in rank order, no scores),
    with ``pre`` naming llama.cpp's pre-tokenizer (e.g. "smollm").
    """

    tokens: list[bytes]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    bos: int | None
    eos: int
    unk: int | None
    model: str = "llama"
    pre: str | None = None
    merges: list[str] = field(default_factory=list)
    eot: int | None = None
    pad: int | None = None
    add_bos: bool = True


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


def read_bpe_vocab(
    tokenizer_json: Path,
    tokenizer_config: Path | None = None,
    generation_config: Path | None = None,
    vocab_size: int | None = None,
) -> Vocab:
    """The byte-level BPE vocabulary of a Hugging Face ``tokenizer.json`` (SmolLM2, SmolVLM, GPT-2 style).

    Tokens in id order as their byte-level strings (added tokens as their text), typed CONTROL (special added
    tokens), USER_DEFINED (other added tokens) or NORMAL; ids without a token up to ``vocab_size`` (the
    model's embedding rows) are ``[PAD<id>]`` UNUSED, as llama.cpp's converter writes them. bos/eos/pad come
    from ``tokenizer_config.json`` (token strings), else ``generation_config.json`` (ids). The pre-tokenizer
    must be one llama.cpp reproduces: SmolLM2's (digits split, then byte-level; "smollm") or GPT-2's
    byte-level alone ("gpt-2"). The files are untrusted: anything else is one :class:`CheckpointError`.
    """
    gguf = require("gguf", "dfrt[export]")
    data = _read_untrusted_json(tokenizer_json, MAX_BPE_TOKENIZER_BYTES, "tokenizer file")
    try:
        pieces, special, merges, pre = _bpe_model(data)
    except (TypeError, ValueError, KeyError) as e:
        message = str(e) if isinstance(e, ValueError) else f"malformed ({type(e).__name__}: {e})"
        raise CheckpointError(f"{tokenizer_json}: not a byte-level BPE tokenizer: {message}") from e
    top = max(pieces) + 1
    if vocab_size is not None and not top <= vocab_size <= MAX_BPE_VOCAB:
        raise CheckpointError(
            f"{tokenizer_json}: the tokenizer has ids up to {top - 1}, the model's vocabulary is {vocab_size}"
        )
    size = top if vocab_size is None else vocab_size
    kinds = {None: gguf.TokenType.NORMAL, True: gguf.TokenType.CONTROL, False: gguf.TokenType.USER_DEFINED}
    tokens, types = [], []
    for i in range(size):
        if i not in pieces:
            tokens.append(f"[PAD{i}]".encode())
            types.append(int(gguf.TokenType.UNUSED))
        else:
            tokens.append(pieces[i].encode("utf-8"))
            types.append(int(kinds[special.get(i)]))
    ids = {text: i for i, text in sorted(pieces.items(), reverse=True)}  # the lowest id of a duplicate
    settings = _bpe_settings(tokenizer_config, generation_config, ids, size, data)
    eot = next((ids[t] for t in EOT_TOKENS if t in ids and special.get(ids[t])), None)
    return Vocab(tokens, [], types, unk=None, model="gpt2", pre=pre, merges=merges, eot=eot, **settings)


def _read_untrusted_json(path: Path, max_bytes: int, what: str) -> Any:
    try:
        return read_json(path, max_bytes, what)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e


def _bpe_model(data: Any) -> tuple[dict[int, str], dict[int, bool], list[str], str]:
    """id -> text, id -> special (added tokens only), merges "left right", llama.cpp pre-tokenizer name."""
    if not isinstance(data, dict):
        raise ValueError("the top level is not an object")
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise ValueError(f"model type {_type_name(model)}, expected BPE")
    unsupported = ("byte_fallback", "ignore_merges", "continuing_subword_prefix", "end_of_word_suffix")
    if any(model.get(k) for k in unsupported):
        raise ValueError("byte_fallback, ignore_merges or a subword affix: not GPT-2 style byte-level BPE")
    if data.get("normalizer") is not None:
        raise ValueError(f"normalizer {_type_name(data['normalizer'])} is not supported (llama.cpp has none)")
    decoder = data.get("decoder")
    if not isinstance(decoder, dict) or decoder.get("type") != "ByteLevel":
        raise ValueError(f"decoder {_type_name(decoder)}, expected ByteLevel")
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
    vocab = model["vocab"]
    if not isinstance(vocab, dict) or not 0 < len(vocab) <= MAX_BPE_VOCAB:
        raise ValueError(f"the vocabulary must map 1 to {MAX_BPE_VOCAB} tokens to ids")
    pieces: dict[int, str] = {}
    for text, i in vocab.items():
        _check_token(text, i)
        if i in pieces:
            raise ValueError(f"id {i} is both {pieces[i]!r} and {text!r}")
        pieces[i] = text
    added = data.get("added_tokens") or []
    if not isinstance(added, list) or len(added) > MAX_BPE_VOCAB:
        raise ValueError("added_tokens is not a list of tokens")
    special: dict[int, bool] = {}
    for token in added:
        if not isinstance(token, dict):
            raise ValueError("an added token is not an object")
        text, i = token["content"], token["id"]
        _check_token(text, i)
        pieces[i] = text  # an added token may also be in the model's vocabulary (SmolLM2's <|endoftext|>)
        special[i] = bool(token.get("special", False))
    merges = model.get("merges", [])
    if not isinstance(merges, list) or len(merges) > MAX_BPE_MERGES:
        raise ValueError(f"merges must be a list of at most {MAX_BPE_MERGES}")
    return pieces, special, [_merge(m) for m in merges], pre


def _type_name(value: Any) -> str:
    return repr(value.get("type")) if isinstance(value, dict) else type(value).__name__


def _check_token(text: Any, i: Any) -> None:
    if not isinstance(text, str) or not 0 < len(text) <= MAX_BPE_TOKEN_CHARS:
        raise ValueError(f"a token must be text of 1 to {MAX_BPE_TOKEN_CHARS} characters, got {text!r:.60}")
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < MAX_BPE_VOCAB:
        raise ValueError(f"token {text!r:.60} has id {i!r:.30}, not in [0, {MAX_BPE_VOCAB})")


def _merge(merge: Any) -> str:
    """A merge as GGUF stores it, "left right" (tokenizers >= 0.20 writes [left, right])."""
    if isinstance(merge, str):
        parts = merge.split(" ")
    elif isinstance(merge, list):
        parts = merge
    else:
        raise ValueError(f"merge {merge!r:.60} is neither 'left right' nor [left, right]")
    if len(parts) != 2 or not all(isinstance(p, str) and p and " " not in p for p in parts):
        raise ValueError(f"merge {merge!r:.60} is not two space-free pieces")
    return f"{parts[0]} {parts[1]}"


def _pre_tokenizer_name(pre: Any) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer it reproduces exactly, else ValueError."""
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        raise ValueError(f"pre_tokenizer {_type_name(pre)} is not supported")
    last = steps[-1]
    byte_level = (
        last.get("type") == "ByteLevel"
        and last.get("use_regex", True) is True
        and last.get("add_prefix_space", False) is False
    )
    digits = [{"type": "Digits", "individual_digits": True}]
    if byte_level and len(steps) == 1:
        return "gpt-2"
    if byte_level and [{k: s.get(k) for k in digits[0]} for s in steps[:-1]] == digits:
        return "smollm"
    kinds = ", ".join(str(s.get("type")) for s in steps)
    raise ValueError(
        f"pre_tokenizer [{kinds}] is not supported: only ByteLevel (use_regex, no prefix space), "
        "optionally after Digits(individual_digits), which llama.cpp reproduces as gpt-2 / smollm"
    )


def _bpe_settings(
    tokenizer_config: Path | None,
    generation_config: Path | None,
    ids: dict[str, int],
    size: int,
    data: dict[str, Any],
) -> dict[str, Any]:
    """bos, eos, pad and add_bos from the tokenizer config (token strings), else the generation config."""
    settings: dict[str, Any] = {"bos": None, "eos": None, "pad": None}
    config: dict[str, Any] = {}
    if tokenizer_config is not None:
        config = _read_untrusted_json(tokenizer_config, MAX_BPE_CONFIG_BYTES, "tokenizer config")
        if not isinstance(config, dict):
            raise CheckpointError(
                f"{tokenizer_config}: not a tokenizer config (the top level is not an object)"
            )
        for key in settings:
            token = config.get(f"{key}_token")
            if isinstance(token, dict):  # the old {"__type": "AddedToken", "content": ...} form
                token = token.get("content")
            if token is None or (key == "pad" and token not in ids):  # transformers would add a pad token
                continue
            if not isinstance(token, str) or token not in ids:
                raise CheckpointError(
                    f"{tokenizer_config}: {key}_token {token!r:.60} is not in the vocabulary"
                )
            settings[key] = ids[token]
    if generation_config is not None and (settings["bos"] is None or settings["eos"] is None):
        generation = _read_untrusted_json(generation_config, MAX_BPE_CONFIG_BYTES, "generation config")
        if not isinstance(generation, dict):
            raise CheckpointError(f"{generation_config}: not a generation config (not an object)")
        for key in ("bos", "eos", "pad"):
            value = generation.get(f"{key}_token_id")
            value = value[0] if isinstance(value, list) and value else value
            if settings[key] is None and value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
                    raise CheckpointError(
                        f"{generation_config}: {key}_token_id {value!r:.30} is not a token id"
                    )
                settings[key] = value
    if settings["eos"] is None:
        where = " or ".join(str(p) for p in (tokenizer_config, generation_config) if p is not None)
        raise CheckpointError(f"{where or 'the tokenizer'}: no end-of-sequence token (eos_token) named")
    add_bos = config.get("add_bos_token")
    if not isinstance(add_bos, bool):  # without the flag, only a post-processor that prepends bos adds it
        add_bos = settings["bos"] is not None and _template_starts_with(data, settings["bos"], ids)
    return {**settings, "add_bos": add_bos}


def _template_starts_with(data: dict[str, Any], token: int, ids: dict[str, int]) -> bool:
    post = data.get("post_processor")
    steps = post.get("processors") if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    for step in steps if isinstance(steps, list) else []:
        single = (
            step.get("single")
            if isinstance(step, dict) and step.get("type") == "TemplateProcessing"
            else None
        )
        if isinstance(single, list) and single and isinstance(single[0], dict):
            first = single[0].get("SpecialToken")
            return isinstance(first, dict) and ids.get(first.get("id")) == token
    return False


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
    cfg: LlamaConfig,
    vocab: Vocab,
    out: Path,
    name: str = "llama",
    dtype: str = "f16",
    chat_template: str | None = None,
) -> Path:
    """Write an F16 (norms F32) or, with ``dtype="f32"``, an all-F32 GGUF to ``out`` atomically (temporary
    file, then rename). ``chat_template`` (Jinja text) is stored as ``tokenizer.chat_template``.

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
    plan = [(hf, gguf_tensor_name(hf)) for hf in order]  # also refuses names without a GGUF counterpart
    if tied:
        plan.append(("model.embed_tokens.weight", "output.weight"))
    _check_shapes(shapes, cfg, tied)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
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
    cfg: LlamaConfig,
    vocab: Vocab,
    name: str,
    dtype: str = "f16",
    chat_template: str | None = None,
) -> None:
    """The llama architecture's keys and the vocabulary, each through ``writer.add_<key>``."""
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


def _gguf_array(hf_name: str, tensor: torch.Tensor, cfg: LlamaConfig, dtype: str = "f16") -> np.ndarray:
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


TEXT_MODEL_PREFIX = "model.text_model."  # SmolVLM / Idefics3: model.text_model.{embed_tokens,layers,norm}
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
) -> Path:
    """A VLM's LLaMA-architecture text model (SmolVLM: ``model.text_model.*`` and ``lm_head.weight``) -> GGUF.

    ``source``: the whole VLM state dict (in memory) or a :class:`TensorSource` over its checkpoint; only
    the text model's tensors are read. ``hf_text_config``: the ``text_config`` of the VLM's config; a
    ``num_attention_heads`` it lacks is transformers' LLaMA default, 32 (SmolVLM2's config.json omits it),
    and ``tie_word_embeddings`` there (set it from the top-level config if only that one has it) makes the
    output layer the token embeddings: a ``lm_head.weight`` in ``source`` is then not written.
    """
    cfg = LlamaConfig.from_hf({"num_attention_heads": 32, **hf_text_config})
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
