"""What a bundle records of its frame scorer (a SigLIP or CLIP dual encoder), and its two graph contracts.

stdlib + numpy only (through :mod:`dfrt.contracts`): ``dfrt/manifest.py`` reads it.
:meth:`ScorerSpec.from_dict` is strict, since a manifest is untrusted: unknown or missing keys, wrong
types and absurd sizes are each one :class:`~dfrt.errors.ConfigError` line.

Text conventions, as each family was trained:

- SigLIP (and fixed-resolution SigLIP2): every question is padded with ``pad_id`` to exactly ``text_length``
  tokens (``padding="max_length"``, 64 for the public checkpoints) and no attention mask is used; the text
  tower pools the last position. Its graph takes ``input_ids`` (1, text_length).
- CLIP: the text tower is causal and pools the end-of-text token, so padding after it changes nothing. The
  runtime feeds the unpadded tokens (truncated to ``text_length``, end-of-text last) and the graph pools the
  last position; its ``text`` axis is dynamic (1 .. text_length). No attention mask either.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from dfrt.contracts import CHUNK, GraphSpec, TensorSpec
from dfrt.errors import ConfigError

KINDS = ("siglip", "clip")
RESIZES = ("squash", "crop")  # SigLIP: S x S, aspect not kept; CLIP: shortest edge, then centre crop
INTERPOLATIONS = ("bicubic", "bilinear")
TEXT_CLEANUPS = ("none", "lower", "siglip")  # "siglip": lowercase, drop ASCII punctuation, squeeze spaces
IMAGE_GRAPH, TEXT_GRAPH = "scorer_image", "scorer_text"

MAX_IMAGE_SIZE = 1024  # public checkpoints: 224 to 512
MIN_IMAGE_SIZE = 8
MAX_TEXT_LENGTH = 1024  # SigLIP 64, CLIP 77
MAX_EMBED_DIM = 16384  # So400m: 1152
MAX_VOCAB = 1 << 20  # SigLIP2's Gemma vocabulary: 256,000
MAX_LOGIT = 1e4
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class ScorerSpec:
    """The scorer of a bundle: preprocessing, tokenisation and the two towers' graph files."""

    kind: str  # "siglip" or "clip"
    image_size: int  # S: the image graph takes (frames, 3, S, S)
    resize_size: int  # "squash": S; "crop": the shortest edge before the centre crop
    resize: str  # one of RESIZES
    interpolation: str  # one of INTERPOLATIONS (the processor's resample)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    text_length: int  # SigLIP: every question padded to it; CLIP: the most tokens fed
    text_cleanup: str  # one of TEXT_CLEANUPS, applied to the question before the tokenizer
    pad_id: int
    vocab_size: int
    embed_dim: int  # D of both towers' normalised embeddings
    logit_scale: float  # exp of the learned scale: similarity logits = logit_scale * cosine + logit_bias
    logit_bias: float  # SigLIP's learned bias; 0 for CLIP
    tokenizer: str = "scorer_tokenizer.json"
    image_graph: str = IMAGE_GRAPH + ".onnx"
    text_graph: str = TEXT_GRAPH + ".onnx"

    def __post_init__(self) -> None:
        _check(self)

    @property
    def padded(self) -> bool:
        """Whether questions are padded to ``text_length`` (SigLIP) or fed as they are (CLIP)."""
        return self.kind == "siglip"

    @property
    def files(self) -> tuple[str, str, str]:
        return (self.image_graph, self.text_graph, self.tokenizer)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ScorerSpec:
        """Strict inverse of :meth:`to_dict`; anything else is one :class:`ConfigError` line."""
        if not isinstance(data, dict):
            raise ConfigError(f"scorer: expected an object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k)[:40] for k in data if k not in names)
        if unknown:
            raise ConfigError(f"scorer: unknown key {unknown[0]!r}")
        missing = [n for n in names if n not in data]
        if missing:
            raise ConfigError(f"scorer: missing key {missing[0]!r}")
        values = dict(data)
        for key in ("mean", "std"):
            value = values[key]
            if not isinstance(value, list) or len(value) != 3:
                raise ConfigError(f"scorer: {key} must be a list of three numbers, got {str(value)[:60]}")
            values[key] = tuple(value)
        return cls(**values)

    def graph_specs(self) -> dict[str, GraphSpec]:
        """The contracts of ``scorer_image`` and ``scorer_text``."""
        s, d, f32 = self.image_size, self.embed_dim, "float32"
        image = GraphSpec(
            IMAGE_GRAPH,
            f"{self.kind} image tower: normalised pixels -> L2-normalised image embeddings.",
            (TensorSpec("pixels", f32, ("frames", 3, s, s)),),
            (TensorSpec("image_embeds", f32, ("frames", d)),),
            (("frames", (1, min(8, CHUNK), CHUNK)),),
            atol=1e-4,
        )
        ids_shape: tuple[int | str, ...] = (1, self.text_length) if self.padded else (1, "text")
        ranges = () if self.padded else (("text", (1, min(16, self.text_length), self.text_length)),)
        text = GraphSpec(
            TEXT_GRAPH,
            f"{self.kind} text tower: token ids -> the L2-normalised question embedding "
            + ("(padded to the text length, no mask)." if self.padded else "(unpadded, end-of-text last)."),
            (TensorSpec("input_ids", "int64", ids_shape, upper=self.vocab_size),),
            (TensorSpec("text_embeds", f32, (1, d)),),
            ranges,
            atol=1e-4,
        )
        return {IMAGE_GRAPH: image, TEXT_GRAPH: text}


def _check(spec: ScorerSpec) -> None:
    _choice("kind", spec.kind, KINDS)
    _choice("resize", spec.resize, RESIZES)
    _choice("interpolation", spec.interpolation, INTERPOLATIONS)
    _choice("text_cleanup", spec.text_cleanup, TEXT_CLEANUPS)
    _size("image_size", spec.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    _size("resize_size", spec.resize_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    if spec.resize == "squash" and spec.resize_size != spec.image_size:
        raise ConfigError(f"scorer: resize_size {spec.resize_size} must equal image_size when squashing")
    if spec.resize == "crop" and spec.resize_size < spec.image_size:
        raise ConfigError(f"scorer: resize_size {spec.resize_size} is below the crop {spec.image_size}")
    _size("text_length", spec.text_length, 1, MAX_TEXT_LENGTH)
    _size("vocab_size", spec.vocab_size, 1, MAX_VOCAB)
    _size("embed_dim", spec.embed_dim, 1, MAX_EMBED_DIM)
    if not (isinstance(spec.pad_id, int) and not isinstance(spec.pad_id, bool)) or not (
        0 <= spec.pad_id < spec.vocab_size
    ):
        raise ConfigError(f"scorer: pad_id {str(spec.pad_id)[:40]} outside [0, {spec.vocab_size})")
    for key, low, high in (("mean", 0.0, 1.0), ("std", 1e-6, 10.0)):
        values = getattr(spec, key)
        if (
            not isinstance(values, tuple)
            or len(values) != 3
            or not all(_number(v, low, high) for v in values)
        ):
            raise ConfigError(f"scorer: {key} {str(values)[:60]}, expected three numbers in [{low}, {high}]")
    if not _number(spec.logit_scale, 1e-6, MAX_LOGIT):
        raise ConfigError(f"scorer: logit_scale {str(spec.logit_scale)[:40]} outside (0, {MAX_LOGIT}]")
    if not _number(spec.logit_bias, -MAX_LOGIT, MAX_LOGIT):
        raise ConfigError(
            f"scorer: logit_bias {str(spec.logit_bias)[:40]} outside [-{MAX_LOGIT}, {MAX_LOGIT}]"
        )
    names = {"tokenizer": ".json", "image_graph": ".onnx", "text_graph": ".onnx"}
    for key, suffix in names.items():
        name = getattr(spec, key)
        if not isinstance(name, str) or not _FILE.fullmatch(name) or not name.endswith(suffix):
            raise ConfigError(f"scorer: {key} {str(name)[:60]!r} is not a plain *{suffix} file name")
    if len({spec.tokenizer, spec.image_graph, spec.text_graph}) != 3:
        raise ConfigError("scorer: the tokenizer and the two graphs need three different file names")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices or not isinstance(value, str):
        raise ConfigError(f"scorer: {key} {str(value)[:40]!r}, expected one of {', '.join(choices)}")


def _size(key: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"scorer: {key} {str(value)[:40]}, expected an integer in [{low}, {high}]")


def _number(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )
