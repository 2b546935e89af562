"""Model configuration: frozen dataclasses, a registry of named variants, strict dict round-trip.

Only stdlib here: the runtime reads the same config from a bundle's ``dfrt.json`` without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, get_args

from dfrt.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# the perturbed top-k backward (dfrt.model.topk): the whole Jacobian estimate, or its diagonal (the authors')
TopKGradient = Literal["full", "diagonal"]
TOPK_GRADIENTS: tuple[str, ...] = get_args(TopKGradient)


@dataclass(frozen=True)
class VisionConfig:
    """EVA-ViT-g style tower: patch embedding, absolute positions, pre-LN blocks, q/v biases, no final LN."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1408
    depth: int = 39  # the LAVIS checkpoint has 40 blocks; DynFocus uses the first 39
    heads: int = 16
    mlp_ratio: float = 4.3637
    ln_eps: float = 1e-6
    # dfrt's, not EVA's: a learned map of fixed row/column features added to the tower's output tokens,
    # zero at first (the demo's tower, trained on colour and shape, kept too little of where things are)
    output_positions: bool = False

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class QFormerConfig:
    """InstructBLIP-style Q-Former: BERT with learned queries, cross-attention every other layer."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    cross_attention_freq: int = 2
    num_queries: int = 32
    vocab_size: int = 30523  # bert-base-uncased + [DEC]
    max_positions: int = 512
    ln_eps: float = 1e-12
    max_question_tokens: int = 256  # with [CLS]/[SEP]; longer questions lose their start, as in the reference


@dataclass(frozen=True)
class DPEConfig:
    """Dynamic Event Prototype Estimation: pooled grid, prototypes, key-frame ratio, training top-k."""

    pooled_grid: int = 4  # 16x16 patch grid average-pooled to 4x4
    max_prototypes: int = 80  # k-means to this many event prototypes beyond it
    key_ratio: float = 0.45  # k = ceil(key_ratio * T')
    kmeans_iters: int = 10
    topk_samples: int = 500  # perturbed top-k (training only)
    topk_sigma: float = 0.1
    topk_gradient: str = "full"  # "full" Jacobian estimate or the authors' "diagonal" (see dfrt.model.topk)


@dataclass(frozen=True)
class CCEConfig:
    """Compact Cooperative Encoding: two-level DPC-kNN clustering giving the structure tokens."""

    clusters1: int = 16
    knn1: int = 8
    clusters2: int = 6
    knn2: int = 3


ROD_TOKENS = 2


@dataclass(frozen=True)
class DynFocusConfig:
    """Everything that fixes the visual path's shapes, plus the LLM width it projects into."""

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    dpe: DPEConfig = field(default_factory=DPEConfig)
    cce: CCEConfig = field(default_factory=CCEConfig)
    llm_width: int = 4096
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    # dfrt's, not DynFocus's: a learned embedding per cone token slot (which pooled grid cell, which structure
    # row) added after the projector, zero at first (the LM cannot tell a 4 x 4 grid's cells apart otherwise)
    cone_positions: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def pooled_tokens(self) -> int:
        return self.dpe.pooled_grid**2

    @property
    def structure_tokens(self) -> int:
        return self.cce.clusters1 + self.cce.clusters2

    @property
    def cone_tokens(self) -> int:
        return self.pooled_tokens + self.structure_tokens

    def key_frame_count(self, num_prototypes: int) -> int:
        """k = ceil(ratio * T'), at least 1 and at most T'."""
        return key_frame_count(num_prototypes, self.dpe.key_ratio)

    def visual_token_count(self, num_frames: int) -> int:
        """N_vis for a video of ``num_frames`` sampled frames (method.md section 1.1)."""
        if num_frames < 1:
            raise ConfigError(f"a video needs at least one frame, got {num_frames}")
        if num_frames == 1:
            return self.cone_tokens + ROD_TOKENS
        k = self.key_frame_count(min(num_frames, self.dpe.max_prototypes))
        return self.cone_tokens * k + ROD_TOKENS * (num_frames - k)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.vision.output_positions:  # left out when off: runtimes older than the option read it
            del data["vision"]["output_positions"]
        if not self.cone_positions:
            del data["cone_positions"]
        if self.dpe.topk_gradient == "full":  # left out at its default, as above
            del data["dpe"]["topk_gradient"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynFocusConfig:
        """Inverse of :meth:`to_dict`; unknown or mistyped keys raise :class:`ConfigError`."""
        return _from_dict(cls, data, "config")


def key_frame_count(num_prototypes: int, ratio: float) -> int:
    """k = ceil(ratio * T'), clamped to [1, T']."""
    if num_prototypes < 1:
        raise ConfigError(f"need at least one prototype, got {num_prototypes}")
    # round() guards ceil against float noise such as 0.45 * 20 = 9.000000000000002
    return min(num_prototypes, max(1, math.ceil(round(ratio * num_prototypes, 9))))


_T = TypeVar("_T")


def dataclass_from_dict(cls: type[_T], data: dict[str, Any], where: str) -> _T:
    """A frozen config dataclass (fields with defaults, nested dataclasses) from a mapping, strictly:
    unknown or mistyped keys are one :class:`ConfigError` naming ``where``. Every family's config uses it."""
    return _from_dict(cls, data, where)


def _from_dict(cls: type[_T], data: dict[str, Any], where: str) -> _T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name != "name" else ""  # type: ignore[call-arg]
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(float(v) for v in value)
        elif isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
            kwargs[name] = float(value)
        elif type(value) is type(default):
            kwargs[name] = value
        else:
            raise ConfigError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _validate(cfg: DynFocusConfig) -> None:
    v, q, d, c = cfg.vision, cfg.qformer, cfg.dpe, cfg.cce
    sizes = {
        "vision.image_size": v.image_size, "vision.patch_size": v.patch_size, "vision.width": v.width,
        "vision.heads": v.heads, "qformer.hidden": q.hidden, "qformer.heads": q.heads,
        "dpe.pooled_grid": d.pooled_grid,
    }  # fmt: skip
    for name, size in sizes.items():  # the divisors below: zero is one error, not a ZeroDivisionError
        if size < 1:
            raise ConfigError(f"{name} must be at least 1, got {size}")
    checks = [
        (v.image_size % v.patch_size == 0, "vision.image_size must be a multiple of vision.patch_size"),
        (v.width % v.heads == 0, "vision.width must be divisible by vision.heads"),
        (q.hidden % q.heads == 0, "qformer.hidden must be divisible by qformer.heads"),
        (v.grid % d.pooled_grid == 0, "the patch grid must be divisible by dpe.pooled_grid"),
        (0.0 < d.key_ratio <= 1.0, "dpe.key_ratio must be in (0, 1]"),
        (d.max_prototypes >= 1 and d.kmeans_iters >= 1, "dpe.max_prototypes and kmeans_iters must be >= 1"),
        (d.topk_gradient in TOPK_GRADIENTS, f"dpe.topk_gradient must be one of {', '.join(TOPK_GRADIENTS)}"),
        (1 <= c.clusters1 <= v.num_patches, "cce.clusters1 must be in [1, number of patches]"),
        (1 <= c.knn1 <= v.num_patches, "cce.knn1 must be in [1, number of patches]"),
        (1 <= c.clusters2 <= c.clusters1, "cce.clusters2 must be in [1, cce.clusters1]"),
        (1 <= c.knn2 <= c.clusters1, "cce.knn2 must be in [1, cce.clusters1]"),
        (
            2 < q.max_question_tokens <= q.max_positions,
            "qformer.max_question_tokens must be in (2, max_positions]",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# The registry of named variants, as timm registers models: one small function per variant.
def paper() -> DynFocusConfig:
    """The dimensions of DynFocus-7B: EVA-ViT-g (39 blocks), BERT-base Q-Former, Vicuna-7B width."""
    return DynFocusConfig(name="paper")


def tiny() -> DynFocusConfig:
    """Same structure and token counts as ``paper``, small widths (seconds on a CPU), LLM width 576."""
    return DynFocusConfig(
        name="tiny",
        vision=VisionConfig(image_size=112, patch_size=14, width=64, depth=2, heads=4),
        qformer=QFormerConfig(hidden=64, layers=2, heads=4, intermediate=128),
        llm_width=576,
    )


def demo() -> DynFocusConfig:
    """The trained demo model (``dfrt.demo``): 16-frame clips at 112 px, 4 key frames, into the demo LM."""
    return DynFocusConfig(
        name="demo",
        vision=VisionConfig(image_size=112, patch_size=14, width=128, depth=4, heads=4),
        qformer=QFormerConfig(hidden=64, layers=2, heads=4, intermediate=128, num_queries=16),
        dpe=DPEConfig(key_ratio=0.25),
        llm_width=256,  # the demo LM (dfrt.demo.training.lm)
    )


CONFIGS = {"paper": paper, "tiny": tiny, "demo": demo}


def get_config(name: str) -> DynFocusConfig:
    """A named variant; :class:`ConfigError` lists the known names."""
    try:
        return CONFIGS[name]()
    except KeyError:
        raise ConfigError(f"unknown config {name!r}; choose one of {', '.join(sorted(CONFIGS))}") from None
