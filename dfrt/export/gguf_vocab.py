"""Tokenizer vocabularies as GGUF stores them: sentencepiece (LLaMA / Vicuna, ``tokenizer.model``) and
byte-level BPE (SmolLM2 / SmolVLM, ``tokenizer.json``), read from untrusted checkpoint files (size-capped;
anything malformed is one :class:`~dfrt.errors.CheckpointError` line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfrt._optional import require
from dfrt.errors import CheckpointError, ConfigError
from dfrt.jsonio import read_json
from dfrt.runtime.text_tokenizer import QWEN2_SPLIT  # the one free-form regex accepted (llama.cpp's "qwen2")

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
    decoder = data.get("decoder")
    if not isinstance(decoder, dict) or decoder.get("type") != "ByteLevel":
        raise ValueError(f"decoder {_type_name(decoder)}, expected ByteLevel")
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
    normalizer = data.get("normalizer")
    # Qwen2's NFC: llama.cpp has no normalizer, but dfrt tokenizes prompts with the tokenizer.json itself
    # (runtime/text_tokenizer.py) and llama.cpp only decodes, where NFC plays no part
    if normalizer is not None and not (pre == "qwen2" and normalizer == {"type": "NFC"}):
        raise ValueError(f"normalizer {_type_name(normalizer)} is not supported (llama.cpp has none)")
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
    if len(steps) == 2 and is_qwen2_split(steps[0]) and _bytes_only(last):
        return "qwen2"
    kinds = ", ".join(str(s.get("type")) for s in steps)
    raise ValueError(
        f"pre_tokenizer [{kinds}] is not supported: only ByteLevel (use_regex, no prefix space), "
        "optionally after Digits(individual_digits), or Qwen2's exact Split regex then ByteLevel (no regex), "
        "which llama.cpp reproduces as gpt-2 / smollm / qwen2"
    )


def is_qwen2_split(step: Any) -> bool:
    """Whether a pre-tokenizer step is Qwen2's Split, exactly (pattern, behaviour, no inversion)."""
    return isinstance(step, dict) and step == QWEN2_SPLIT


def _bytes_only(step: dict[str, Any]) -> bool:
    """ByteLevel mapping bytes only (no regex of its own, no prefix space), as after Qwen2's Split."""
    return (
        step.get("type") == "ByteLevel"
        and step.get("use_regex") is False
        and step.get("add_prefix_space", False) is False
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
