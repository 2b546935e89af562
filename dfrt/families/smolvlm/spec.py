"""SmolVLM2 / Idefics3's manifest side: config, the visual graph's contract, preprocessing. stdlib + numpy.

The visual graph is the SigLIP tower plus the pixel-shuffle connector: pixels (frames, 3, S, S) in
[-1, 1] -> (frames, (S / patch / scale)^2, LLM width) rows, one block per frame. Everything else (frame
choice, pooling of non-key frames, the prompt with per-frame timestamps) runs on the host
(:mod:`dfrt.families.smolvlm.runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dfrt.contracts import GraphSpec, TensorSpec
from dfrt.families.frame_spec import FrameConfig, FrameVision, check_frame_config

ARCHITECTURES = ("SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration")
MODEL_TYPES = ("smolvlm", "idefics3")
SCORING_MODES = ("uniform", "scorer")  # key frames spread evenly, or chosen by the bundle's dual encoder
FRAME_CHUNK = 8  # frames per call of the visual graph: its axis maximum
# the graphs `dfrt build` converts to FP16 / INT8; the scorer's stay FP32 (they choose the key frames)
PRECISION_GRAPHS = {"int8": ("vision",), "fp16": ("vision",)}
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# caps on what a manifest may say (SmolVLM2-2.2B's value in the comment)
LIMITS = {
    "vision.image_size": 2048,  # 384
    "vision.patch_size": 64,  # 14
    "vision.width": 8192,  # 1152
    "vision.depth": 128,  # 27
    "vision.heads": 256,  # 16
    "vision.intermediate": 65536,  # 4304
    "scale_factor": 16,  # 3
    "llm_width": 65536,  # 2048
    "pooled_grid": 64,  # dfrt's: 2
    "max_patches": 16384,  # 729
}


@dataclass(frozen=True)
class SmolVLMVision(FrameVision):
    """The SigLIP tower as SmolVLM configures it (``vision_config``)."""

    image_size: int = 512
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    intermediate: int = 3072
    ln_eps: float = 1e-6


@dataclass(frozen=True)
class SmolVLMConfig(FrameConfig):
    """Shapes of the visual path, the LLM width, and dfrt's default plan for a video's visual tokens.

    A key frame gets the model's full ``tokens_per_frame`` rows; every other frame shown is pooled to
    ``pooled_grid`` x ``pooled_grid`` rows. ``default_visual_tokens`` is the budget when none is asked for.
    """

    name: str = "smolvlm2-500m-video"
    vision: SmolVLMVision = field(default_factory=SmolVLMVision)
    scale_factor: int = 4
    llm_width: int = 960
    image_mean: tuple[float, float, float] = SIGLIP_MEAN
    image_std: tuple[float, float, float] = SIGLIP_STD
    pooled_grid: int = 2
    # four frames' worth: 3 key frames + 16 pooled ones for the 500M (benchmarks/RESULTS.md: 4.5x fewer prompt
    # tokens than 32 uniform frames at 2 min; 320, the first default, gave 3.96x)
    default_visual_tokens: int = 256
    key_share: float = 0.8  # of a budget spent on key frames first; the rest on pooled frames

    def __post_init__(self) -> None:
        check_config(self)


def config_from_dict(data: Any) -> SmolVLMConfig:
    return SmolVLMConfig.from_dict(data)


def check_config(config: SmolVLMConfig) -> None:
    """Every size positive and within :data:`LIMITS`, and the shapes consistent; one :class:`ConfigError`."""
    # SigLIP drops a remainder (2.2B: 384 px at patch 14 is 27 x 27 patches)
    grid = (config.vision.grid >= 1, "vision.image_size must be at least vision.patch_size")
    check_frame_config(config, LIMITS, [grid])


def graph_specs(config: SmolVLMConfig, scoring: str = "uniform") -> dict[str, GraphSpec]:
    """The one visual graph (the scorer's graphs, if any, come from the bundle's scorer entry)."""
    s, d = config.vision.image_size, config.llm_width
    vision = GraphSpec(
        "vision",
        "SigLIP vision tower and the pixel-shuffle connector: each frame's rows in the LLM width.",
        (TensorSpec("pixels", "float32", ("frames", 3, s, s)),),
        (TensorSpec("frame_embeds", "float32", ("frames", config.tokens_per_frame, d)),),
        (("frames", (1, 4, FRAME_CHUNK)),),
        atol=1e-3,
    )
    return {"vision": vision}


def preprocess(config: SmolVLMConfig) -> Any:
    """Frames squashed to S x S (the video processor resizes to a square), scaled to [-1, 1]."""
    from dfrt.manifest import Preprocess

    return Preprocess(
        config.vision.image_size, config.image_mean, config.image_std, resize="square_lanczos", crop="none"
    )
