"""Frames and a question -> embeddings and relevance, with a bundle's scorer graphs. No torch, onnx or
transformers: numpy, OpenCV, ``tokenizers`` and dfrt's graph runners.

Preprocessing follows the checkpoint's Hugging Face processor: SigLIP resizes to S x S (aspect not kept, no
crop), CLIP resizes the shortest edge then centre-crops; both rescale by 1/255 and normalise per channel.
The processors resample with PIL (anti-aliased); OpenCV's area filter is the closest match when shrinking,
the processor's bicubic or bilinear filter when enlarging (as ``dfrt/runtime/preprocess.py`` does).

The tokenizer file comes from an untrusted bundle and ``tokenizers`` runs the regexes it holds
(``Split``, ``Replace``): :func:`load_tokenizer` bounds its size, accepts only known component types and
refuses regexes that can backtrack catastrophically (a quantified group holding a quantifier, back
references), and every id it can produce must fit the text tower's vocabulary.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dfrt._optional import require
from dfrt.contracts import CHUNK
from dfrt.errors import ConfigError, ContractError, InputError
from dfrt.jsonio import read_json
from dfrt.scorers.spec import IMAGE_GRAPH, TEXT_GRAPH, ScorerSpec

MAX_TOKENIZER_BYTES = 64 << 20  # SigLIP2's Gemma tokenizer.json is about 34 MB
MAX_QUESTION_CHARS = 4096  # the start of a question is what fits text_length tokens (64 for SigLIP)
MAX_REGEX_CHARS = 512  # CLIP's Split pattern: 64 characters
_NORMALIZERS = {"Sequence", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "StripAccents", "Replace"}
_NORMALIZERS |= {"Prepend", "BertNormalizer", "Precompiled", "ByteLevel", "Nmt"}
_PRE_TOKENIZERS = {"Sequence", "Split", "ByteLevel", "Metaspace", "Whitespace", "WhitespaceSplit", "Digits"}
_PRE_TOKENIZERS |= {"Punctuation", "BertPreTokenizer", "UnicodeScripts", "CharDelimiterSplit"}
_POST_PROCESSORS = {"TemplateProcessing", "RobertaProcessing", "BertProcessing", "ByteLevel", "Sequence"}
_MODELS = {"BPE", "Unigram", "WordPiece", "WordLevel"}
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_QUANTIFIER = re.compile(r"[*+?]|\{\d*,?\d*\}")


class Runner(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class FrameScorer:
    """A dual encoder's two towers: frame embeddings, question embedding, their cosine."""

    def __init__(
        self, spec: ScorerSpec, image_runner: Runner, text_runner: Runner, tokenizer_path: Path
    ) -> None:
        self.spec = spec
        self.image_runner, self.text_runner = image_runner, text_runner
        self.tokenizer = load_tokenizer(Path(tokenizer_path), spec)
        self._mean = (np.asarray(spec.mean, dtype=np.float32) * 255.0).reshape(1, 1, 3)
        self._inv_std = (1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)).reshape(1, 1, 3)

    @classmethod
    def open(
        cls, directory: Path, spec: ScorerSpec, providers: list[str] | None = None, threads: int = 0
    ) -> FrameScorer:
        """The scorer of a bundle directory, both graphs in onnxruntime (checked against their contracts)."""
        from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph

        directory = Path(directory)
        contracts = spec.graph_specs()
        image = OnnxRuntimeGraph(directory / spec.image_graph, contracts[IMAGE_GRAPH], providers, threads)
        text = OnnxRuntimeGraph(directory / spec.text_graph, contracts[TEXT_GRAPH], providers, threads)
        return cls(spec, image, text, directory / spec.tokenizer)

    def image_embeddings(self, frames: np.ndarray) -> np.ndarray:
        """RGB frames (T, H, W, 3) uint8 -> L2-normalised embeddings (T, D) float32, in chunks of 16."""
        _check_frames(frames)
        out = np.empty((frames.shape[0], self.spec.embed_dim), dtype=np.float32)
        for start, stop in _chunks(frames.shape[0], CHUNK):
            pixels = self.preprocess(frames[start:stop])
            embeds = self.image_runner.run({"pixels": pixels})["image_embeds"]
            out[start:stop] = _embeddings(embeds, stop - start, self.spec.embed_dim, IMAGE_GRAPH)
        return out

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """RGB frames (T, H, W, 3) uint8 -> the image graph's pixels (T, 3, S, S) float32."""
        _check_frames(frames)
        size = self.spec.image_size
        out = np.empty((frames.shape[0], size, size, 3), dtype=np.float32)
        for i, frame in enumerate(frames):
            out[i] = self._resize(frame)
        out -= self._mean
        out *= self._inv_std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def tokenize(self, question: str) -> np.ndarray:
        """The question as the text graph's ``input_ids`` (1, L) int64: cleaned as the checkpoint's tokenizer
        did, truncated to ``text_length`` tokens, and for SigLIP padded to exactly that length."""
        text = _clean(question, self.spec.text_cleanup)
        try:
            ids = self.tokenizer.encode(text).ids
        except Exception as e:  # tokenizers raises bare Exceptions
            raise InputError(f"the question cannot be tokenized ({_one_line(e)})") from e
        length = self.spec.text_length
        if self.spec.padded:
            ids = ids + [self.spec.pad_id] * (length - len(ids))
        if not ids:
            raise InputError("the question gives no tokens")
        return np.asarray(ids[:length], dtype=np.int64)[None]

    def text_embedding(self, question: str) -> np.ndarray:
        """The question's L2-normalised embedding (D,) float32."""
        embeds = self.text_runner.run({"input_ids": self.tokenize(question)})["text_embeds"]
        return _embeddings(embeds, 1, self.spec.embed_dim, TEXT_GRAPH)[0]

    @staticmethod
    def relevance(image_embeds: np.ndarray, text_embed: np.ndarray) -> np.ndarray:
        """Cosine of each frame with the question (T,). Both are L2-normalised, so this is a dot product.

        SigLIP's probability ``sigmoid(logit_scale * cos + logit_bias)`` and CLIP's logit
        ``logit_scale * cos`` are increasing in the cosine (``logit_scale > 0``), so every ranking, top-k and
        threshold on them is one on the cosine; min-max-normalising selectors see the same relevance either
        way.
        """
        image_embeds, text_embed = np.asarray(image_embeds), np.asarray(text_embed)
        if image_embeds.ndim != 2 or text_embed.shape != (image_embeds.shape[1],):
            raise InputError(f"cannot compare embeddings {image_embeds.shape} with {text_embed.shape}")
        return (image_embeds.astype(np.float32) @ text_embed.astype(np.float32)).astype(np.float32)

    def probabilities(self, relevance: np.ndarray) -> np.ndarray:
        """SigLIP: ``sigmoid(logit_scale * cos + logit_bias)``, the model's own match probability per frame.
        CLIP has no calibrated probability: its logits ``logit_scale * cos`` are returned (bias 0)."""
        logits = self.spec.logit_scale * np.asarray(relevance, dtype=np.float64) + self.spec.logit_bias
        if self.spec.kind == "clip":
            return logits.astype(np.float32)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def close(self) -> None:
        for runner in (self.image_runner, self.text_runner):
            close = getattr(runner, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> FrameScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        cv2 = require("cv2", "opencv-python-headless")
        h, w = frame.shape[:2]
        s = self.spec.image_size
        if self.spec.resize == "squash":
            new_w = new_h = s
        else:  # shortest edge to resize_size, the other edge floored as transformers does, then crop
            edge = self.spec.resize_size
            new_w, new_h = (
                (edge, max(edge, int(edge * h / w))) if w <= h else (max(edge, int(edge * w / h)), edge)
            )
        shrink = new_w <= w and new_h <= h
        enlarge = cv2.INTER_CUBIC if self.spec.interpolation == "bicubic" else cv2.INTER_LINEAR
        resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else enlarge)
        top, left = (new_h - s) // 2, (new_w - s) // 2
        return resized[top : top + s, left : left + s]


def load_tokenizer(path: Path, spec: ScorerSpec) -> Any:
    """A ``tokenizers.Tokenizer`` from an untrusted ``tokenizer.json``, checked first (see the module doc);
    truncation at ``spec.text_length`` tokens (special tokens included), no padding. :class:`ConfigError`."""
    data = read_json(path, MAX_TOKENIZER_BYTES, "tokenizer file")
    try:
        check_tokenizer(data, spec.vocab_size)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        message = str(e) if isinstance(e, ValueError) else f"malformed ({_one_line(e)})"
        raise ConfigError(f"{path}: not a usable scorer tokenizer: {message}") from e
    tokenizers = require("tokenizers", "tokenizers")
    try:
        tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
        tokenizer.no_padding()
        tokenizer.enable_truncation(spec.text_length)
    except Exception as e:  # tokenizers raises bare Exceptions
        raise ConfigError(f"{path}: not a valid tokenizer file ({_one_line(e)})") from e
    return tokenizer


def check_tokenizer(data: Any, vocab_size: int) -> None:
    """Raise ``ValueError`` unless ``data`` is a tokenizer of known components, safe regexes and ids below
    ``vocab_size``."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError("no tokenizer model")
    model = data["model"]
    if model.get("type", "BPE" if "merges" in model else None) not in _MODELS:
        raise ValueError(f"model type {str(model.get('type'))[:40]!r}, expected one of {sorted(_MODELS)}")
    for key, allowed in (
        ("normalizer", _NORMALIZERS),
        ("pre_tokenizer", _PRE_TOKENIZERS),
        ("post_processor", _POST_PROCESSORS),
    ):
        for node in _components(data.get(key)):
            if node.get("type") not in allowed:
                raise ValueError(f"{key} type {str(node.get('type'))[:40]!r} is not accepted")
    for pattern in _regexes(data):
        _check_regex(pattern)
    ids = [_vocab_max(model)]
    for token in data.get("added_tokens") or []:
        ids.append(int(token["id"]))
    if max(ids) >= vocab_size or min(ids) < 0:
        raise ValueError(f"token id {max(ids)} outside the text tower's vocabulary of {vocab_size}")


def _components(node: Any) -> Iterator[dict[str, Any]]:
    if node is None:
        return
    if not isinstance(node, dict):
        raise ValueError(f"component {str(node)[:40]!r}")
    yield node
    for key in ("normalizers", "pretokenizers", "processors"):
        for child in node.get(key) or []:
            yield from _components(child)


def _regexes(node: Any, depth: int = 0) -> Iterator[str]:
    if depth > 32:
        raise ValueError("nested too deep")
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Regex":
                if not isinstance(value, str):
                    raise ValueError("a regex must be text")
                yield value
            elif key not in ("vocab", "merges"):
                yield from _regexes(value, depth + 1)
    elif isinstance(node, list) and depth < 8:  # vocabularies are skipped above; components nest shallowly
        for value in node:
            yield from _regexes(value, depth + 1)


def _check_regex(pattern: str) -> None:
    """Refuse back references and quantified groups that contain a quantifier (``(a+)+``, ``(a|a?)*``):
    the shapes of catastrophic backtracking. Real tokenizers' patterns (CLIP's, GPT-2's) quantify only
    characters and classes."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise ValueError(f"a regex of {len(pattern)} characters (at most {MAX_REGEX_CHARS})")
    if re.search(r"\\[1-9]|\\k<|\\g", pattern):
        raise ValueError(f"regex {pattern[:60]!r} has a back reference")
    stack: list[bool] = []  # per open group: whether it holds a quantifier
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            stack.append(False)
        elif c == ")":
            if not stack:
                raise ValueError(f"regex {pattern[:60]!r} is unbalanced")
            inner = stack.pop()
            match = _QUANTIFIER.match(pattern, i + 1)
            if inner and match and match.group() != "?":
                raise ValueError(f"regex {pattern[:60]!r} quantifies a group holding a quantifier")
            if stack:
                stack[-1] = stack[-1] or inner or bool(match)
        elif stack and _QUANTIFIER.match(pattern, i) and pattern[i - 1] not in "(?":
            stack[-1] = True  # ("(?" opens a special group, "??" is a lazy quantifier already counted)
        i += 1


def _vocab_max(model: dict[str, Any]) -> int:
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        values = vocab.values()
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError("vocabulary ids must be integers")
        return max(values, default=0)
    if isinstance(vocab, list):  # Unigram: [piece, score] pairs, ids by position
        return len(vocab) - 1
    raise ValueError("the model has no vocabulary")


def _clean(question: object, cleanup: str) -> str:
    from dfrt.runtime.text import clean_question

    text = clean_question(question)[:MAX_QUESTION_CHARS]
    if cleanup == "none":
        return text
    text = text.lower()
    if cleanup == "siglip":  # big_vision's canonicalisation, as transformers' SiglipTokenizer applies it
        text = " ".join(text.translate(_PUNCTUATION).split())
    return text


def _check_frames(frames: Any) -> None:
    from dfrt.runtime import options

    if not isinstance(frames, np.ndarray):
        raise InputError(f"expected frames as a numpy array (T, H, W, 3) uint8, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape[:3]:
        raise InputError(f"expected frames (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    options.frame_size(frames.shape[2], frames.shape[1], "frames")


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _embeddings(array: np.ndarray, rows: int, dim: int, graph: str) -> np.ndarray:
    if array.shape != (rows, dim) or not np.isfinite(array).all():
        raise ContractError(
            f"graph {graph} returned {array.shape} or non-finite values, expected ({rows}, {dim})"
        )
    return array.astype(np.float32, copy=False)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."
