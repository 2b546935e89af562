"""InternVL3.5's spec and run side without torch: the per-frame layout, the plan at real size, the config's
bounds, and the family in the registry."""

from __future__ import annotations

import pytest

from dfrt import registry
from dfrt.errors import ConfigError
from dfrt.families.frame_runtime import plan_frames
from dfrt.families.internvl.prompt import PROMPT_FORMAT, frame_layout
from dfrt.families.internvl.spec import InternVLConfig, InternVLVision

CONFIG = InternVLConfig()  # InternVL3.5-1B: 448 px, 256 tokens a frame, pooled to 16


def test_the_layout_numbers_frames_and_wraps_their_rows_as_the_processor() -> None:
    assert frame_layout([256, 4, 256]) == (
        ("Frame1: <img>", 256),
        ("</img>\nFrame2: <img>", 4),
        ("</img>\nFrame3: <img>", 256),
        ("</img>", 0),
    )
    assert PROMPT_FORMAT == "<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n"


def test_the_default_plan_at_real_size() -> None:
    assert (CONFIG.tokens_per_frame, CONFIG.default_visual_tokens) == (256, 2048)
    plan = plan_frames(64, CONFIG.default_visual_tokens, CONFIG)
    # 80% buys 6 key frames, the other 512 tokens 32 pooled frames of 16: 38 of the 64 shown
    assert (CONFIG.pooled_tokens, plan.key_frames, plan.frames, plan.tokens) == (16, 6, 38, 6 * 256 + 32 * 16)
    few = plan_frames(12, CONFIG.default_visual_tokens, CONFIG)  # every frame shown: tokens left make keys
    assert (few.key_frames, few.frames, few.tokens) == (7, 12, 7 * 256 + 5 * 16)
    with pytest.raises(ConfigError, match="below the 256 tokens"):
        plan_frames(10, 255, CONFIG)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"scale_factor": 3}, "divisible by scale_factor"),
        ({"vision": InternVLVision(norm="batch_norm")}, "vision.norm"),
        ({"vision": InternVLVision(feature_layer=0)}, "feature_layer"),
        ({"vision": InternVLVision(image_size=450)}, "multiple of vision.patch_size"),
        ({"default_visual_tokens": 100}, "at least one key frame"),
        ({"llm_width": 1 << 20}, "llm_width"),
    ],
)
def test_configs_out_of_bounds_are_one_error(change, match) -> None:
    with pytest.raises(ConfigError, match=match):
        InternVLConfig(**change)


def test_the_registry_finds_internvl_checkpoints() -> None:
    hf = {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl"}
    assert registry.family_of_checkpoint(hf) == "internvl"
    assert registry.family_of_checkpoint({"model_type": "internvl_chat"}) is None  # remote-code layout
    assert registry.spec("internvl").config_from_dict(CONFIG.to_dict()) == CONFIG
