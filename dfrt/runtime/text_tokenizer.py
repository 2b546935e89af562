"""An LLM's own Hugging Face tokenizer (``tokenizer.json``), for prompts tokenized exactly as the model's
processor does, with the user's text never able to name a special token.

Hugging Face tokenizers split a text at its added tokens first and tokenize each stretch between them on
its own. :meth:`PromptTokenizer.encode` does the same, but finds special tokens only in the template's
pieces: a question that types ``<end_of_utterance>`` gets the plain-text tokens of those characters. Each
stretch is tokenized whole (template and question together), so BPE merges across the seam are the model's;
the tokens are then attributed to the question by their character offsets (for left truncation).

The file is untrusted: it is read bounded (:func:`dfrt.jsonio.read_json`), and since ``tokenizers`` runs
the regexes a file names (``Split``, ``Replace``: a catastrophic one hangs on a question), only components
without a free-form regex are accepted (:func:`check_definition`), and of those with one only the exact
known definitions in :data:`KNOWN_SPLITS` (Qwen2's, which Qwen2.5, Qwen3 and InternVL3.5 share); then
``tokenizers`` is given exactly the definition that was checked. Any problem is one :class:`ConfigError`.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from dfrt._optional import require
from dfrt.errors import ConfigError
from dfrt.jsonio import read_json
from dfrt.manifest import MAX_TOKENIZER_BYTES

MAX_VOCAB = 1 << 20
MAX_ADDED_TOKENS = 4096
MAX_TOKEN_CHARS = 256
# components whose behaviour is fixed by their type and a few flags (no pattern of the file's own)
SAFE_COMPONENTS = {
    "normalizer": {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "Prepend", "Sequence"},
    "pre_tokenizer": {"ByteLevel", "Digits", "Metaspace", "Whitespace", "WhitespaceSplit", "Punctuation",
                      "Sequence"},
    "post_processor": {"ByteLevel", "TemplateProcessing", "Sequence"},
    "decoder": {"ByteLevel", "Metaspace", "ByteFallback", "Fuse", "Strip", "Sequence", "WordPiece",
                "BPEDecoder"},
}  # fmt: skip
MODELS = ("BPE", "WordPiece", "Unigram")
# Split pre-tokenizers accepted, each exactly as its models' tokenizer.json writes it (pattern, behaviour,
# inversion): a known regex, linear on any question; any other Split is refused
QWEN2_SPLIT = {
    "type": "Split",
    "pattern": {
        "Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    },
    "behavior": "Isolated",
    "invert": False,
}
KNOWN_SPLITS = (QWEN2_SPLIT,)

Piece = tuple[str, bool]  # (text, is_template)


class PromptTokenizer:
    """``tokenizer.json`` of the LLM; thread-safe (one lock around the Rust tokenizer's settings)."""

    def __init__(self, path: Path, vocab_limit: int | None = None) -> None:
        tokenizers = require("tokenizers", "tokenizers")
        definition = read_json(path, MAX_TOKENIZER_BYTES, "tokenizer")
        check_definition(definition, str(path))
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(definition))
        except Exception as e:  # the Rust parser raises plain Exception
            raise ConfigError(f"{path}: not a tokenizer.json that `tokenizers` can read ({_short(e)})") from e
        self.path = path
        self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        limit = MAX_VOCAB if vocab_limit is None else vocab_limit
        if not 1 <= self.vocab_size <= limit:
            raise ConfigError(f"{path}: {self.vocab_size} tokens, the LLM has {limit}")
        added = self._tokenizer.get_added_tokens_decoder()
        # longest first, so "<row_1_col_1>" is never read as a shorter token that prefixes it
        self.special = sorted(
            ((t.content, int(i)) for i, t in added.items() if t.special and t.content),
            key=lambda item: -len(item[0]),
        )
        self._by_content = dict(self.special)
        # literal alternatives, longest first: a match at a position is the longest special token there
        self._special_pattern = (
            re.compile("|".join(re.escape(content) for content, _ in self.special)) if self.special else None
        )
        self._lock = threading.Lock()

    def token_id(self, content: str) -> int:
        """The id of a special token, by its text; :class:`ConfigError` when the tokenizer lacks it."""
        if content not in self._by_content:
            raise ConfigError(f"{self.path}: the tokenizer has no special token {content!r}")
        return self._by_content[content]

    def encode(self, pieces: list[Piece]) -> list[tuple[list[int], bool]]:
        """Token ids of consecutive ``pieces``, as chunks ``(ids, is_question)`` in order."""
        chunks: list[tuple[list[int], bool]] = []
        stretch: list[Piece] = []
        for text, is_template in pieces:
            if not text:
                continue
            if not is_template:
                stretch.append((text, False))
                continue
            for part, special in self._split_special(text):
                if special is None:
                    stretch.append((part, True))
                else:
                    chunks += self._encode_stretch(stretch)
                    stretch = []
                    chunks.append(([special], False))
        chunks += self._encode_stretch(stretch)
        return chunks

    def ids(self, pieces: list[Piece]) -> list[int]:
        return [t for ids, _ in self.encode(pieces) for t in ids]

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=False))

    def _split_special(self, text: str) -> list[tuple[str, int | None]]:
        """Template text cut at its special tokens: ``(text, None)`` and ``(token text, id)`` parts."""
        parts: list[tuple[str, int | None]] = []
        plain = 0
        for match in self._special_pattern.finditer(text) if self._special_pattern else ():
            if match.start() > plain:
                parts.append((text[plain : match.start()], None))
            parts.append((match.group(), self._by_content[match.group()]))
            plain = match.end()
        if plain < len(text):
            parts.append((text[plain:], None))
        return parts

    def _encode_stretch(self, stretch: list[Piece]) -> list[tuple[list[int], bool]]:
        """One stretch without special tokens, tokenized whole; tokens ending inside the question are its."""
        if not stretch:
            return []
        text = "".join(t for t, _ in stretch)
        spans, at = [], 0
        for part, is_template in stretch:
            if not is_template:
                spans.append((at, at + len(part)))
            at += len(part)
        with self._lock:
            self._tokenizer.encode_special_tokens = True  # added tokens in this text are plain text
            try:
                encoding = self._tokenizer.encode(text, add_special_tokens=False)
            finally:
                self._tokenizer.encode_special_tokens = False
        chunks: list[tuple[list[int], bool]] = []
        for token, (_, end) in zip(encoding.ids, encoding.offsets, strict=True):
            is_question = any(low < end <= high for low, high in spans)
            if chunks and chunks[-1][1] == is_question:
                chunks[-1][0].append(int(token))
            else:
                chunks.append(([int(token)], is_question))
        return chunks


def check_definition(data: Any, where: str) -> None:
    """A ``tokenizer.json`` whose every component is in :data:`SAFE_COMPONENTS`, with a known model type
    and bounded added tokens; anything else is one :class:`ConfigError` naming ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a tokenizer.json object")
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") not in MODELS:
        kind = model.get("type") if isinstance(model, dict) else None
        raise ConfigError(f"{where}: tokenizer model {str(kind)[:40]!r}, expected one of {', '.join(MODELS)}")
    for key, allowed in SAFE_COMPONENTS.items():
        known = KNOWN_SPLITS if key == "pre_tokenizer" else ()
        _check_component(data.get(key), allowed, f"{where}: {key}", known=known)
    added = data.get("added_tokens") or []
    if not isinstance(added, list) or len(added) > MAX_ADDED_TOKENS:
        raise ConfigError(f"{where}: added_tokens must be a list of at most {MAX_ADDED_TOKENS}")
    for token in added:
        content = token.get("content") if isinstance(token, dict) else None
        if not isinstance(content, str) or not 0 < len(content) <= MAX_TOKEN_CHARS:
            raise ConfigError(f"{where}: an added token without text of at most {MAX_TOKEN_CHARS} characters")


def _check_component(
    component: Any, allowed: set[str], where: str, depth: int = 0, known: tuple[dict[str, Any], ...] = ()
) -> None:
    if component is None:
        return
    if known and component in known:
        return  # a known regex, compared whole: nothing of the file's own runs
    kind = component.get("type") if isinstance(component, dict) else None
    if kind not in allowed or depth > 4:
        raise ConfigError(
            f"{where} {str(kind)[:40]!r} is not accepted (allowed: {', '.join(sorted(allowed))})"
        )
    if kind == "Sequence":
        parts = next((component[k] for k in ("normalizers", "pretokenizers", "processors", "decoders")
                      if k in component), None)  # fmt: skip
        if not isinstance(parts, list) or len(parts) > 16:
            raise ConfigError(f"{where}: a Sequence of at most 16 parts")
        for part in parts:
            _check_component(part, allowed, where, depth + 1, known)


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."
