"""SmolVLM2's run side: the token plan, pooling, question-aware key frames through the bundle's scorer,
each frame encoded once, the CLI and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfrt.errors import ConfigError
from dfrt.families.smolvlm.runtime import adaptive_pool, plan_frames
from dfrt.families.smolvlm.spec import SmolVLMConfig, SmolVLMVision

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
CONFIG = SmolVLMConfig()  # SmolVLM2-500M: 64 tokens a frame, pooled to 4


@pytest.mark.parametrize(
    ("frames", "budget", "keys", "kept", "tokens"),
    [
        (120, 320, 4, 20, 320),  # the default: 4 key frames, 16 pooled
        (4, 320, 4, 4, 256),  # every frame fits at full tokens
        (120, 100, 1, 10, 100),  # one key frame, nine pooled
        (120, 64, 1, 1, 64),  # one key frame alone
        (3, 150, 2, 3, 132),  # fewer frames than the budget could pool
    ],
)
def test_the_plan_stays_within_the_budget(frames, budget, keys, kept, tokens) -> None:
    plan = plan_frames(frames, budget, CONFIG)
    assert (plan.key_frames, plan.frames, plan.tokens) == (keys, kept, tokens)
    assert plan.tokens <= budget


def test_a_budget_below_one_frame_is_refused() -> None:
    with pytest.raises(ConfigError, match="below the 64 tokens of one"):
        plan_frames(10, 63, CONFIG)


def test_pooling_averages_the_token_grid_as_adaptive_avg_pool() -> None:
    rows = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    pooled = adaptive_pool(rows, 8, 2)
    grid = rows.reshape(8, 8, 3)
    assert pooled.shape == (4, 3)
    np.testing.assert_allclose(pooled[0], grid[:4, :4].mean(axis=(0, 1)))
    np.testing.assert_allclose(pooled[3], grid[4:, 4:].mean(axis=(0, 1)))
    # a 9 x 9 grid (SmolVLM2-2.2B) into 2 x 2: overlapping bins, as PyTorch's
    nine = np.random.default_rng(0).standard_normal((81, 5)).astype(np.float32)
    torch = pytest.importorskip("torch")
    reference = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(nine.reshape(9, 9, 5)).permute(2, 0, 1), 2
    )
    np.testing.assert_allclose(adaptive_pool(nine, 9, 2), reference.permute(1, 2, 0).reshape(4, 5), atol=1e-6)


def test_configs_out_of_bounds_are_one_error() -> None:
    with pytest.raises(ConfigError, match="scale_factor"):
        SmolVLMConfig(vision=SmolVLMVision(image_size=512, patch_size=16), scale_factor=3)
    with pytest.raises(ConfigError, match=r"vision\.width"):
        SmolVLMConfig.from_dict({**CONFIG.to_dict(), "vision": {**CONFIG.to_dict()["vision"], "width": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        SmolVLMConfig.from_dict({**CONFIG.to_dict(), "shell": "rm -rf /"})


@pytest.fixture(scope="module")
def scored(smolvlm_scorer_bundle):
    from dfrt.runtime.pipeline import Pipeline

    results = {}
    for method in ("dpe", "bolt", "aks", "uniform"):
        with Pipeline(smolvlm_scorer_bundle, threads=2, selection=method) as pipe:
            video = pipe.load_video(SAMPLE, max_frames=16, visual_tokens=100)
            first = pipe.embed(video, "Which shape is red?")
            encoded = len(video.features.encoded)
            second = pipe.embed(video, "Which shape is red?")
            results[method] = (pipe, video, first, second, encoded)
    return results


@pytest.mark.parametrize("method", ["dpe", "bolt", "aks"])
def test_key_frames_are_the_scorers_choice(scored, method) -> None:
    from dfrt.scorers.selection import choose_frames

    pipe, video, result, _, _ = scored[method]
    scorer = pipe.visual.scorer
    relevance = scorer.relevance(video.features.scorer_embeds, scorer.text_embedding("Which shape is red?"))
    plan = video.plan
    expected = choose_frames(relevance, video.features.scorer_embeds, plan.key_frames, method)
    assert result.selection.key_frames.tolist() == expected.tolist()
    np.testing.assert_allclose(result.scores, relevance, rtol=1e-5)


def test_only_the_shown_frames_are_encoded_once(scored) -> None:
    _, video, first, second, encoded = scored["dpe"]
    plan = video.plan
    assert (plan.key_frames, plan.frames) == (5, 10)  # 100 tokens: 80% on key frames at 16, 5 pooled at 4
    per_frame = first.tokens_per_frame
    assert per_frame[first.selection.key_frames].tolist() == [16] * plan.key_frames
    assert sorted(set(per_frame.tolist())) == [0, 4, 16]
    assert int((per_frame > 0).sum()) == plan.frames == encoded
    assert first.num_tokens == per_frame.sum() <= 100
    assert "vision" in first.timings and "vision" not in second.timings  # the second question reused them
    np.testing.assert_array_equal(first.embeds, second.embeds)


def test_uniform_selection_spreads_the_key_frames(scored) -> None:
    _, _, result, _, _ = scored["uniform"]
    assert result.scores is None
    assert result.selection.key_frames.tolist() == [1, 4, 8, 11, 14]  # the centres of 5 segments of 16


def _dfrt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_infer_json_reports_scores_and_tokens_per_frame(smolvlm_scorer_bundle) -> None:
    done = _dfrt(
        "infer", str(SAMPLE), "Which shape is red?", "--bundle", str(smolvlm_scorer_bundle), "--json",
        "--temperature", "0", "--max-tokens", "4", "--max-frames", "16", "--selection", "bolt",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["tokens"]["visual"] == 320 or document["tokens"]["visual"] <= 320
    keys = document["key_frames"]
    assert keys and all(k["score"] is not None for k in keys)
    tokens = [f["tokens"] for f in document["frames"]]
    assert sum(tokens) == document["tokens"]["visual"]
    assert "scorer_text" in document["timings"] and "vision" in document["timings"]


def test_selection_without_a_scorer_and_on_dynfocus_is_one_error(smolvlm_f32_bundle) -> None:
    done = _dfrt("infer", str(SAMPLE), "What?", "--bundle", str(smolvlm_f32_bundle), "--selection", "bolt")
    assert done.returncode == 1
    assert "--selection bolt: " in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    done = _dfrt("infer", str(SAMPLE), "What?", "--selection", "aks")  # the demo bundle: DynFocus
    assert done.returncode == 1 and "own DPE" in done.stderr and "Traceback" not in done.stderr


def test_demo_only_verbs_refuse_a_smolvlm_bundle_in_one_line(smolvlm_f32_bundle) -> None:
    done = _dfrt("eval", "--bundle", str(smolvlm_f32_bundle), "--count", "1")
    assert done.returncode == 1 and "this is a smolvlm bundle" in done.stderr
    assert "Traceback" not in done.stderr
