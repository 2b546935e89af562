"""InternVL3.5 checkpoint (a Hugging Face ``-HF`` directory: transformers'
``InternVLForConditionalGeneration``) -> a dfrt bundle. Needs torch and transformers.

The flow is shared by frame VLMs (:mod:`dfrt.families.frame_export`); InternVL gives its visual module
(InternViT, pixel shuffle, MLP projector: one ONNX graph), its config, its prompt, and its Qwen3 language
model as llama.cpp's "qwen3" GGUF with the Qwen2 byte-level BPE vocabulary (pre-tokenizer "qwen2", padded
to the model's embedding rows as Qwen's are).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dfrt.errors import CheckpointError
from dfrt.export.gguf_llm import LANGUAGE_MODEL_PREFIX
from dfrt.families.frame_export import FrameFamily
from dfrt.families.frame_spec import pooled_grid_for
from dfrt.families.internvl import prompt as video_prompt
from dfrt.families.internvl.spec import IMAGENET_MEAN, IMAGENET_STD, InternVLConfig, InternVLVision

# the video processor's file first (its size and normalisation are the frames'), else the image processor's
PREPROCESSORS = ("video_preprocessor_config.json", "preprocessor_config.json")


class VisualGraph(nn.Module):
    """InternVL's ``get_image_features`` for whole frames at the tower's own size: the patch embedding, the
    CLS token and absolute positions (no interpolation at that size), the blocks up to the feature layer,
    the CLS token dropped, the pixel shuffle (as transformers orders it) and the projector."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        inner, config = model.model, model.config
        tower = inner.vision_tower
        depth = len(tower.encoder.layer)
        feature = int(config.vision_feature_layer)
        self.embeddings = tower.embeddings
        self.layers = nn.ModuleList(tower.encoder.layer[: depth + 1 + feature])
        self.norm = tower.layernorm if feature == -1 else nn.Identity()  # the last hidden state's only
        self.projector = inner.multi_modal_projector
        self.grid = int(config.vision_config.image_size[0]) // int(config.vision_config.patch_size[0])
        self.scale = round(1 / float(config.downsample_ratio))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        patches = e.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)  # (T, P, W)
        hidden = torch.cat([e.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)  # (T, 1 + P, W)
        if e.position_embeddings is not None:
            hidden = hidden + e.position_embeddings
        for layer in self.layers:
            hidden = layer(hidden)
        hidden = self.norm(hidden)[:, 1:]  # (T, P, W)
        g, s, w = self.grid, self.scale, hidden.shape[-1]
        # transformers' pixel_shuffle: merge s columns, transpose, merge s rows, transpose back
        x = hidden.reshape(-1, g, g // s, w * s).permute(0, 2, 1, 3)  # (T, g/s, g, W s)
        x = x.reshape(-1, g // s, g // s, w * s * s).permute(0, 2, 1, 3)  # (T, g/s, g/s, W s^2)
        return self.projector(x.reshape(-1, (g // s) ** 2, w * s * s))  # (T, tokens, D)


def config_from_model(model_config: Any, preprocessor: dict[str, Any], name: str) -> InternVLConfig:
    """dfrt's config from the checkpoint's (a transformers ``InternVLConfig``) and its video processor's;
    what dfrt's graph does not reproduce is one :class:`CheckpointError`."""
    v, text = model_config.vision_config, model_config.text_config
    size, patch = tuple(v.image_size), tuple(v.patch_size)
    if size[0] != size[1] or patch[0] != patch[1]:
        raise CheckpointError(f"InternViT image size {size} / patch {patch}: only square ones are supported")
    if model_config.vision_feature_select_strategy != "default" or not isinstance(
        model_config.vision_feature_layer, int
    ):
        raise CheckpointError(
            "vision_feature_select_strategy must be 'default' (CLS dropped), vision_feature_layer one layer"
        )
    if getattr(text, "model_type", None) != "qwen3":
        raise CheckpointError(
            f"the language model is {getattr(text, 'model_type', None)!r}: dfrt converts InternVL3.5's Qwen3 "
            "(InternVL3's Qwen2.5 needs llama.cpp's qwen2 architecture, not written yet)"
        )
    ratio = float(model_config.downsample_ratio)
    scale = round(1 / ratio)
    if abs(scale * ratio - 1) > 1e-6:
        raise CheckpointError(f"downsample_ratio {ratio} is not 1 / an integer")
    vision = InternVLVision(
        image_size=int(size[0]),
        patch_size=int(patch[0]),
        width=int(v.hidden_size),
        depth=int(v.num_hidden_layers),
        heads=int(v.num_attention_heads),
        intermediate=int(v.intermediate_size),
        ln_eps=float(v.layer_norm_eps),
        norm=str(v.norm_type),
        qk_norm=bool(v.use_qk_norm),
        feature_layer=int(model_config.vision_feature_layer),
    )
    frame = preprocessor.get("size") or {}
    if not isinstance(frame, dict) or {frame.get(k, size[0]) for k in ("height", "width")} != {size[0]}:
        raise CheckpointError(
            f"the video processor resizes frames to {frame}, the tower is {size[0]} px: not supported"
        )
    mean = tuple(float(x) for x in preprocessor.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(x) for x in preprocessor.get("image_std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError("the video processor's image_mean and image_std need three numbers each")
    grid = vision.grid // scale
    return InternVLConfig(
        name=name[:255] or "internvl",
        vision=vision,
        scale_factor=scale,
        llm_width=int(text.hidden_size),
        image_mean=mean,  # type: ignore[arg-type]
        image_std=std,  # type: ignore[arg-type]
        pooled_grid=pooled_grid_for(grid),
        default_visual_tokens=8 * grid * grid,  # InternVL's video demo: 8 frames at full tokens
    )


def _describe(config: InternVLConfig) -> str:
    return (
        f"{config.name}: InternViT {config.vision.width} wide x {config.vision.depth} blocks at "
        f"{config.vision.image_size}px, {config.tokens_per_frame} tokens a frame, "
        f"Qwen3 LLM width {config.llm_width}"
    )


FAMILY = FrameFamily(
    name="internvl",
    config_from_model=config_from_model,
    visual=VisualGraph,
    prompt=video_prompt.PROMPT,
    describe=_describe,
    preprocessors=PREPROCESSORS,
    pixel_range=2.0,  # ImageNet-normalised pixels span about [-2.1, 2.6]
    text_prefix=LANGUAGE_MODEL_PREFIX,
    arch="qwen3",
    pad_vocab=True,
)


export_checkpoint = FAMILY.export  # the bundle from a checkpoint directory (module docstring)
