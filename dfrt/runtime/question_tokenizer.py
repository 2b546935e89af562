"""The question tokenizer of a bundle (BERT WordPiece + [DEC], truncated on the left), via ``tokenizers``.

The tokenizer JSON comes from an untrusted bundle, and ``tokenizers`` accepts components with arbitrary
regexes (``Split``, ``Replace``, ...): a catastrophic one hangs on a question. :func:`load_definition` accepts
only the structure ``dfrt export`` writes (BertNormalizer, BertPreTokenizer, WordPiece, TemplateProcessing,
a WordPiece decoder; no regex-bearing component), with size caps, and ``tokenizers`` is then given exactly
the definition that was checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dfrt._optional import require
from dfrt.errors import ConfigError, InputError
from dfrt.jsonio import read_json
from dfrt.manifest import MAX_TOKENIZER_BYTES
from dfrt.runtime.text import clean_question

__all__ = ["QuestionTokenizer", "clean_question", "load_definition"]

MAX_VOCAB = 1_000_000  # BERT: 30,522
MAX_TOKEN_CHARS = 200  # one vocabulary entry or added token
MAX_WORD_CHARS = 1000  # WordPiece's max_input_chars_per_word (BERT: 100): its matching is quadratic in it
MAX_ADDED_TOKENS = 1024
MAX_TEMPLATE_PIECES = 16


class QuestionTokenizer:
    def __init__(self, path: Path, vocab_size: int | None = None, max_tokens: int | None = None) -> None:
        """``vocab_size``/``max_tokens``: also check that every id fits the Q-Former's vocabulary and that
        questions are truncated to at most ``max_tokens`` (as :class:`~dfrt.runtime.bundle.Bundle` does)."""
        definition = load_definition(path, vocab_size, max_tokens)
        tokenizers = require("tokenizers", "tokenizers")
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(definition))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(f"{path}: not a valid tokenizer file ({_one_line(e)})") from e

    def __call__(self, question: str) -> tuple[np.ndarray, np.ndarray]:
        """Question text -> (input_ids, attention_mask), each int64 (1, L). The reference strips ``<image>``
        and newlines from the conditioning text; so do we. Invalid text is cleaned (:func:`clean_question`)
        first."""
        text = " ".join(clean_question(question).replace("<image>", " ").split())
        try:
            encoding = self._tokenizer.encode(text)
        except Exception as e:  # tokenizers' errors are bare Exceptions
            raise InputError(f"the question cannot be tokenized ({_one_line(e)})") from e
        ids = np.asarray(encoding.ids, dtype=np.int64)[None]
        return ids, np.ones_like(ids)


def load_definition(
    path: Path, vocab_size: int | None = None, max_tokens: int | None = None
) -> dict[str, Any]:
    """The tokenizer JSON at ``path``, read bounded and checked to be dfrt's question tokenizer structure.

    Any other structure, an id outside ``[0, vocab_size)`` or truncation beyond ``max_tokens`` (when given)
    is one :class:`ConfigError` naming the file.
    """
    data = read_json(path, MAX_TOKENIZER_BYTES, "tokenizer file")
    try:
        _check(data, vocab_size, max_tokens)
    except (ValueError, TypeError, KeyError) as e:
        message = str(e) if isinstance(e, ValueError) else f"malformed ({_one_line(e)})"
        raise ConfigError(f"{path}: not a dfrt question tokenizer: {message}") from e
    return data


_TOP = {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor"}
_TOP |= {"decoder", "model"}


def _check(data: Any, vocab_size: int | None, max_tokens: int | None) -> None:
    _keys(data, _TOP, "the tokenizer", required=_TOP)
    if data.get("version", "1.0") != "1.0":
        raise ValueError(f"version {str(data['version'])[:20]!r}, expected 1.0")
    limit = vocab_size if vocab_size is not None else MAX_VOCAB
    model = data["model"]
    _component(
        model,
        "WordPiece",
        {"unk_token", "continuing_subword_prefix", "max_input_chars_per_word", "vocab"},
        "model",
    )
    vocab = model["vocab"]
    if not isinstance(vocab, dict) or not 0 < len(vocab) <= MAX_VOCAB:
        raise ValueError(f"the vocabulary must map 1 to {MAX_VOCAB} tokens to ids")
    for token, token_id in vocab.items():
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError(f"vocabulary token of {len(token)} characters")
        _id(token_id, limit, f"vocabulary id of {token[:20]!r}")
    if _text(model["unk_token"], "unk_token") not in vocab:
        raise ValueError("unk_token is not in the vocabulary")
    _text(model["continuing_subword_prefix"], "continuing_subword_prefix", 16)
    _int(model["max_input_chars_per_word"], 1, MAX_WORD_CHARS, "max_input_chars_per_word")

    normalizer = data.get("normalizer")
    if normalizer is not None:
        flags = {"clean_text", "handle_chinese_chars", "strip_accents", "lowercase"}
        _component(normalizer, "BertNormalizer", flags, "normalizer")
        for key in flags & set(normalizer):
            if key != "strip_accents" or normalizer[key] is not None:
                _bool(normalizer[key], key)
    if data.get("pre_tokenizer") is not None:
        _component(data["pre_tokenizer"], "BertPreTokenizer", set(), "pre_tokenizer")
    decoder = data.get("decoder")
    if decoder is not None:
        _component(decoder, "WordPiece", {"prefix", "cleanup"}, "decoder")
        _text(decoder.get("prefix", "##"), "decoder prefix", 16)
        _bool(decoder.get("cleanup", True), "decoder cleanup")
    if data.get("padding") is not None:
        raise ValueError("padding must be null (questions are never padded)")
    _check_truncation(data.get("truncation"), max_tokens)
    _check_added_tokens(data.get("added_tokens", []), limit)
    _check_post_processor(data.get("post_processor"), limit)


def _check_truncation(truncation: Any, max_tokens: int | None) -> None:
    if truncation is None:
        if max_tokens is not None:
            raise ValueError(f"no truncation: questions must be cut to {max_tokens} tokens")
        return
    keys = {"direction", "max_length", "strategy", "stride"}
    _keys(truncation, keys, "truncation", required=keys)
    if truncation.get("direction", "Right") not in ("Left", "Right"):
        raise ValueError("truncation direction must be Left or Right")
    if truncation.get("strategy", "LongestFirst") not in ("LongestFirst", "OnlyFirst", "OnlySecond"):
        raise ValueError("unknown truncation strategy")
    _int(truncation.get("stride", 0), 0, 0, "truncation stride")
    _int(truncation.get("max_length"), 3, max_tokens or 8192, "truncation max_length")


def _check_added_tokens(tokens: Any, limit: int) -> None:
    if not isinstance(tokens, list) or len(tokens) > MAX_ADDED_TOKENS:
        raise ValueError(f"added_tokens must be a list of at most {MAX_ADDED_TOKENS}")
    flags = {"single_word", "lstrip", "rstrip", "normalized", "special"}
    for token in tokens:
        _keys(token, {"id", "content"} | flags, "added token", required={"id", "content"} | flags)
        _id(token["id"], limit, "added token id")
        if not 0 < len(_text(token["content"], "added token")) <= MAX_TOKEN_CHARS:
            raise ValueError("an added token must be 1 to 200 characters")
        for key in flags & set(token):
            _bool(token[key], f"added token {key}")


def _check_post_processor(post: Any, limit: int) -> None:
    if post is None:
        return
    _component(post, "TemplateProcessing", {"single", "pair", "special_tokens"}, "post_processor")
    for key in ("single", "pair"):
        pieces = post[key]
        if not isinstance(pieces, list) or len(pieces) > MAX_TEMPLATE_PIECES:
            raise ValueError(f"post_processor {key}: at most {MAX_TEMPLATE_PIECES} pieces")
        for piece in pieces:
            _keys(piece, {"SpecialToken", "Sequence"}, "template piece")
            if len(piece) != 1:
                raise ValueError("a template piece is one SpecialToken or Sequence")
            ((kind, body),) = piece.items()
            _keys(body, {"id", "type_id"}, "template piece", required={"id", "type_id"})
            _text(body["id"], "template piece id", 64)
            if kind == "SpecialToken" and body["id"] not in post["special_tokens"]:
                raise ValueError(f"template special token {body['id'][:20]!r} is not defined")
            if kind == "Sequence" and body["id"] not in ("A", "B"):
                raise ValueError("a template sequence is A or B")
            _int(body["type_id"], 0, 1, "type_id")
    specials = post["special_tokens"]
    if not isinstance(specials, dict) or len(specials) > MAX_TEMPLATE_PIECES:
        raise ValueError(f"post_processor special_tokens: at most {MAX_TEMPLATE_PIECES}")
    for special in specials.values():
        _keys(special, {"id", "ids", "tokens"}, "special token", required={"id", "ids", "tokens"})
        _text(special["id"], "special token id", 64)
        ids, tokens = special["ids"], special["tokens"]
        if not isinstance(ids, list) or not isinstance(tokens, list) or not len(ids) == len(tokens) <= 8:
            raise ValueError("a special token has up to 8 ids and as many tokens")
        for token_id, token in zip(ids, tokens, strict=True):
            _id(token_id, limit, "special token id")
            _text(token, "special token", 64)


def _keys(
    value: Any, allowed: set[str], what: str, required: frozenset[str] | set[str] = frozenset()
) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{what}: unexpected key {unknown[0][:40]!r}")
    missing = sorted(set(required) - set(value))
    if missing:
        raise ValueError(f"{what}: missing {missing[0]!r}")


def _component(value: Any, kind: str, allowed: set[str], what: str) -> None:
    """A ``{"type": kind, ...}`` object with no key beyond ``allowed`` (where regexes would hide)."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    if value.get("type") != kind:
        raise ValueError(f"{what} {str(value.get('type'))[:40]!r}, only {kind} is accepted")
    _keys(value, allowed | {"type"}, what, required=allowed)  # all present: no defaults to second-guess


def _id(value: Any, limit: int, what: str) -> None:
    _int(value, 0, limit - 1, what)


def _int(value: Any, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} {str(value)[:20]!r}, expected an integer in [{low}, {high}]")
    return value


def _bool(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false")


def _text(value: Any, what: str, cap: int = MAX_TOKEN_CHARS) -> str:
    if not isinstance(value, str) or len(value) > cap:
        raise ValueError(f"{what} must be text of at most {cap} characters")
    return value


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]
