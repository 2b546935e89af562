"""InternVL3.5's manifest side: config, the visual graph's contract, preprocessing. stdlib + numpy.

The visual graph is the InternViT tower (CLS token, absolute positions, layer-scaled pre-norm blocks), the
pixel shuffle and the MLP projector (LayerNorm, Linear, GELU, Linear): pixels (frames, 3, S, S), ImageNet-
normalised -> (frames, (S / patch * ratio)^2, LLM width) rows, one block per frame (InternVL3.5-1B/2B:
448 px, 32 x 32 patches, 256 rows). Everything else (frame choice, pooling, the "FrameN: <img>...</img>"
prompt) runs on the host (:mod:`dfrt.families.internvl.runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dfrt.contracts import GraphSpec, TensorSpec
from dfrt.families.frame_spec import FrameConfig, FrameVision, check_frame_config

ARCHITECTURES = ("InternVLForConditionalGeneration",)  # the -HF checkpoints (transformers' own class)
MODEL_TYPES = ("internvl",)  # not "internvl_chat": the remote-code checkpoints are another layout
SCORING_MODES = ("uniform", "scorer")  # key frames spread evenly, or chosen by the bundle's dual encoder
FRAME_CHUNK = 8  # frames per call of the visual graph: its axis maximum
PRECISION_GRAPHS = {"int8": ("vision",), "fp16": ("vision",)}  # the scorer's stay FP32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMS = ("layer_norm", "rms_norm")  # InternViT-300M (1B-4B) / InternViT-6B

# caps on what a manifest may say (InternVL3.5-2B's value in the comment)
LIMITS = {
    "vision.image_size": 2048,  # 448
    "vision.patch_size": 64,  # 14
    "vision.width": 8192,  # 1024
    "vision.depth": 128,  # 24
    "vision.heads": 256,  # 16
    "vision.intermediate": 65536,  # 4096
    "scale_factor": 16,  # 2 (downsample_ratio 0.5)
    "llm_width": 65536,  # 2048
    "pooled_grid": 64,  # dfrt's: 4
    "max_patches": 16384,  # 1024
}


@dataclass(frozen=True)
class InternVLVision(FrameVision):
    """The InternViT tower as InternVL configures it (``vision_config``)."""

    image_size: int = 448
    patch_size: int = 14
    width: int = 1024
    depth: int = 24
    heads: int = 16
    intermediate: int = 4096
    ln_eps: float = 1e-6
    norm: str = "layer_norm"
    qk_norm: bool = False
    feature_layer: int = -1  # the hidden state the projector reads (-1: the last, after the tower's norm)


@dataclass(frozen=True)
class InternVLConfig(FrameConfig):
    """Shapes of the visual path, the LLM width, and dfrt's default plan for a video's visual tokens.

    A key frame gets the model's full ``tokens_per_frame`` rows; every other frame shown is pooled to
    ``pooled_grid`` x ``pooled_grid`` rows: 4 x 4 of the 16 x 16 grid, a sixteenth of a frame's tokens as
    SmolVLM2's 2 x 2 of 8 x 8 (each pooled frame costs a full encode: 2 x 2 bought so many of them that the
    encoder ran 4x longer than uniform 32 frames, benchmarks/RESULTS.md). ``default_visual_tokens`` is the
    budget when none is asked for (InternVL3.5's own video demo shows 8 frames of 256 tokens: 2048).
    """

    name: str = "internvl3.5-1b"
    vision: InternVLVision = field(default_factory=InternVLVision)
    scale_factor: int = 2  # 1 / downsample_ratio
    llm_width: int = 1024
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    pooled_grid: int = 4
    default_visual_tokens: int = 2048
    key_share: float = 0.8  # of a budget spent on key frames first; the rest on pooled frames

    def __post_init__(self) -> None:
        check_config(self)


def config_from_dict(data: Any) -> InternVLConfig:
    return InternVLConfig.from_dict(data)


def check_config(config: InternVLConfig) -> None:
    """Every size positive and within :data:`LIMITS`, and the shapes consistent; one :class:`ConfigError`."""
    v = config.vision
    feature = v.feature_layer
    check_frame_config(
        config,
        LIMITS,
        [
            (v.norm in NORMS, f"config.vision.norm must be one of {', '.join(NORMS)}"),
            (isinstance(v.qk_norm, bool), "config.vision.qk_norm must be true or false"),
            (
                isinstance(feature, int) and not isinstance(feature, bool) and -v.depth <= feature < 0,
                "config.vision.feature_layer must name one of the tower's layers from the end (-1: the last)",
            ),
            (v.image_size % v.patch_size == 0, "vision.image_size must be a multiple of vision.patch_size"),
        ],
    )


def graph_specs(config: InternVLConfig, scoring: str = "uniform") -> dict[str, GraphSpec]:
    """The one visual graph (the scorer's graphs, if any, come from the bundle's scorer entry)."""
    s, d = config.vision.image_size, config.llm_width
    vision = GraphSpec(
        "vision",
        "InternViT tower, pixel shuffle and MLP projector: each frame's rows in the LLM width.",
        (TensorSpec("pixels", "float32", ("frames", 3, s, s)),),
        (TensorSpec("frame_embeds", "float32", ("frames", config.tokens_per_frame, d)),),
        (("frames", (1, 4, FRAME_CHUNK)),),
        atol=1e-3,
    )
    return {"vision": vision}


def preprocess(config: InternVLConfig) -> Any:
    """Frames squashed to S x S (InternVL's video processor resizes to a square, bicubic), normalised with
    ImageNet's mean and std."""
    from dfrt.manifest import Preprocess

    return Preprocess(
        config.vision.image_size, config.image_mean, config.image_std, resize="square_bicubic", crop="none"
    )
