"""The visual-token budget rule: within budget, maximal in the documented order, today's plan without one."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfrt.config import DPEConfig, paper
from dfrt.errors import ConfigError
from dfrt.runtime.budget import (
    TokenPlan,
    default_key_frames,
    plan_for_config,
    plan_visual_tokens,
    token_count,
)
from dfrt.runtime.selection import EventPrototypes, evenly_spaced, fixed_selection, tokens_per_frame

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

PROPERTY = settings(max_examples=400, deadline=None)
PAPER = paper()
CONE = PAPER.cone_tokens  # 38
frames_st = st.integers(1, 2000)
budgets_st = st.integers(1, 20_000)
# the paper's and the demo's ratios, plus any ratio up to 0.5 (above it the default may make every frame key)
ratios_st = st.one_of(st.sampled_from([0.45, 0.25]), st.floats(0.01, 0.5))


def _config(ratio: float):
    return dataclasses.replace(PAPER, dpe=DPEConfig(key_ratio=ratio))


def _emitted(plan: TokenPlan) -> int:
    """What the runtime's selection emits for this many frames and key frames."""
    key_frames = evenly_spaced(plan.frames, plan.key_frames)
    identity = np.arange(plan.frames, dtype=np.int64)
    selection = fixed_selection(key_frames, EventPrototypes(seeds=identity, assignment=identity))
    return int(tokens_per_frame(selection, CONE).sum())


@PROPERTY
@given(frames=frames_st, budget=budgets_st, ratio=ratios_st)
def test_the_plan_fits_and_is_maximal(frames, budget, ratio):
    config = _config(ratio)
    if budget < CONE + 2:
        with pytest.raises(ConfigError, match=f"budget of {budget} is below the 40 tokens of one frame"):
            plan_for_config(config, frames, budget)
        return
    plan = plan_for_config(config, frames, budget)
    assert plan.budget == budget
    assert plan.tokens <= budget
    assert plan.tokens == token_count(plan.frames, plan.key_frames, CONE) == _emitted(plan)
    assert 1 <= plan.frames <= frames
    default_k = default_key_frames(plan.frames, ratio, config.dpe.max_prototypes)
    assert 1 <= plan.key_frames <= min(default_k, plan.frames, config.dpe.max_prototypes)
    if plan.key_frames < default_k:  # one more key frame would not fit
        assert token_count(plan.frames, plan.key_frames + 1, CONE) > budget
    if plan.frames < frames:  # frames are dropped only when one key frame among all of them does not fit
        assert token_count(frames, 1, CONE) > budget
        assert token_count(plan.frames + 1, 1, CONE) > budget
        assert plan.key_frames == 1


@PROPERTY
@given(frames=frames_st, ratio=ratios_st, extra=st.integers(0, 10_000))
def test_no_budget_or_a_large_one_is_todays_behaviour(frames, ratio, extra):
    config = _config(ratio)
    today = TokenPlan(
        frames, config.key_frame_count(min(frames, 80)), config.visual_token_count(frames), None
    )
    assert plan_for_config(config, frames) == today
    large = today.tokens + extra
    assert plan_for_config(config, frames, large) == dataclasses.replace(today, budget=large)


@PROPERTY
@given(frames=frames_st, budget=budgets_st, ratio=st.floats(0.5, 1.0), cone=st.integers(3, 64))
def test_any_ratio_and_cone_size_fits(frames, budget, ratio, cone):
    """Ratios above 0.5 can make every frame key (each then carries a rod too); other cone sizes."""
    args = {"key_ratio": ratio, "max_prototypes": 80, "cone_tokens": cone}
    if budget < cone + 2:
        with pytest.raises(ConfigError):
            plan_visual_tokens(frames, budget, **args)
        return
    plan = plan_visual_tokens(frames, budget, **args)
    assert plan.tokens == token_count(plan.frames, plan.key_frames, cone) <= budget
    default_k = default_key_frames(plan.frames, ratio, 80)
    if plan.key_frames < default_k:
        assert token_count(plan.frames, plan.key_frames + 1, cone) > budget
    if plan.frames < frames:
        assert token_count(plan.frames + 1, 1, cone) > budget


@pytest.mark.parametrize(
    ("frames", "budget", "expected"),
    [
        (1, None, (1, 1, 40)),
        (1, 40, (1, 1, 40)),
        (32, None, (32, 15, 604)),  # method.md section 1.1
        (32, 500, (32, 12, 496)),  # fewer key frames: 13 would cost 532
        (200, None, (200, 36, 1696)),  # beyond 80 frames: k from the 80 prototypes
        (1000, 2048, (1000, 1, 2036)),  # 2 key frames would cost 2072
        (2000, 2048, (1006, 1, 2048)),  # one key frame among 2000 costs 4036: fewer frames
        (2000, 41, (2, 1, 40)),  # two frames cost what one does
    ],
)
def test_worked_examples(frames, budget, expected):
    plan = plan_for_config(PAPER, frames, budget)
    assert (plan.frames, plan.key_frames, plan.tokens) == expected


def test_refusals_are_one_line_config_errors():
    with pytest.raises(
        ConfigError, match=r"^a visual-token budget of 39 is below the 40 tokens of one frame"
    ) as e:
        plan_for_config(PAPER, 10, 39)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="at least one frame"):
        plan_for_config(PAPER, 0, 100)
    with pytest.raises(ConfigError, match="1 <= key frames <= frames"):
        token_count(3, 4, CONE)


def test_a_plan_under_its_budget_says_why():
    from dfrt.runtime.budget import plan_visual_tokens

    kwargs = {"key_ratio": 0.25, "max_prototypes": 80, "cone_tokens": 38}
    short = plan_visual_tokens(16, 100, **kwargs)
    assert (short.tokens, short.unused) == (68, "one more key frame would cost 36 tokens, 32 are left")
    roomy = plan_visual_tokens(16, 1000, **kwargs)
    assert roomy.tokens == 176 and "need only 176" in roomy.unused
    assert plan_visual_tokens(16, 176, **kwargs).unused == ""
