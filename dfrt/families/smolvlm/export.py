"""SmolVLM2 / Idefics3 checkpoint (a Hugging Face directory) -> a dfrt bundle. Needs torch and transformers.

The flow is shared by frame VLMs (:mod:`dfrt.families.frame_export`); SmolVLM gives its visual module,
config and prompt. The bundle holds: the SigLIP tower + pixel-shuffle connector as one ONNX graph
(validated in onnxruntime against the loaded model, TensorRT-10.3 ready), the SmolLM2 language model as
GGUF (F16, or quantised by llama.cpp), the model's own ``tokenizer.json``, the preprocessing of its video
processor, its video prompt format, and optionally a dual-encoder frame scorer (``--scorer HF_DIR``:
:mod:`dfrt.scorers.export`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dfrt.errors import CheckpointError
from dfrt.families.frame_export import (
    LLM_NAME,
    QUANTIZE_TYPES,
    TOKENIZER_NAME,
    FrameFamily,
    load_model,
    text_config,
)
from dfrt.families.frame_spec import pooled_grid_for
from dfrt.families.smolvlm import prompt as video_prompt
from dfrt.families.smolvlm.spec import SIGLIP_MEAN, SIGLIP_STD, SmolVLMConfig, SmolVLMVision

__all__ = [
    "LLM_NAME",
    "QUANTIZE_TYPES",
    "TOKENIZER_NAME",
    "VisualGraph",
    "config_from_model",
    "export_checkpoint",
    "load_model",
    "text_config",
]


class VisualGraph(nn.Module):
    """SmolVLM's ``get_image_features`` for whole, unpadded frames: patch embedding plus every position
    (all patches are real), the encoder with no mask, the post-layernorm, the connector."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        inner = model.model
        self.embeddings = inner.vision_model.embeddings
        self.encoder = inner.vision_model.encoder
        self.post_layernorm = inner.vision_model.post_layernorm
        self.connector = inner.connector

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (T, P, W)
        hidden = patches + self.embeddings.position_embedding.weight[None]
        hidden = self.encoder(inputs_embeds=hidden).last_hidden_state
        return self.connector(self.post_layernorm(hidden))  # (T, tokens, D)


def config_from_model(model_config: Any, preprocessor: dict[str, Any], name: str) -> SmolVLMConfig:
    """dfrt's config from the checkpoint's (a transformers ``SmolVLMConfig``) and its preprocessor."""
    v = model_config.vision_config
    vision = SmolVLMVision(
        image_size=int(v.image_size),
        patch_size=int(v.patch_size),
        width=int(v.hidden_size),
        depth=int(v.num_hidden_layers),
        heads=int(v.num_attention_heads),
        intermediate=int(v.intermediate_size),
        ln_eps=float(v.layer_norm_eps),
    )
    mean = tuple(float(x) for x in preprocessor.get("image_mean", SIGLIP_MEAN))
    std = tuple(float(x) for x in preprocessor.get("image_std", SIGLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError("preprocessor_config.json: image_mean and image_std need three numbers each")
    grid = vision.grid // int(model_config.scale_factor)
    return SmolVLMConfig(
        name=name[:255] or "smolvlm",
        vision=vision,
        scale_factor=int(model_config.scale_factor),
        llm_width=int(model_config.text_config.hidden_size),
        image_mean=mean,  # type: ignore[arg-type]
        image_std=std,  # type: ignore[arg-type]
        pooled_grid=pooled_grid_for(grid),
        default_visual_tokens=4 * grid * grid,  # four frames' worth (spec.py)
    )


def _describe(config: SmolVLMConfig) -> str:
    return (
        f"{config.name}: SigLIP {config.vision.width} wide x {config.vision.depth} blocks at "
        f"{config.vision.image_size}px, {config.tokens_per_frame} tokens a frame, "
        f"LLM width {config.llm_width}"
    )


FAMILY = FrameFamily(
    name="smolvlm",
    config_from_model=config_from_model,
    visual=VisualGraph,
    prompt=video_prompt.PROMPT,
    describe=_describe,
)


export_checkpoint = FAMILY.export  # the bundle from a checkpoint directory (module docstring)
