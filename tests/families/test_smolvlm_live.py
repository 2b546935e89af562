"""`dfrt watch` with SmolVLM2 bundles: the live window keeps each frame at the encoder's size (and its scorer
embedding), a question over the window shows the same frames at the same tokens as the file path, frames
shown once are not encoded again, and the CLI answers standing questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfrt.live import Watcher
from dfrt.runtime.generate import SamplingConfig
from tests.live.conftest import wait_until

CLIP = Path(__file__).resolve().parents[2] / "samples" / "06-left.mp4"
QUESTION = "A shape disappeared and did not come back. What color was it?"
GREEDY = SamplingConfig(max_tokens=6, temperature=0.0)


@pytest.mark.runtime
def test_watch_answers_over_the_window_as_the_file_path(smolvlm_bundle) -> None:
    from dfrt.runtime.pipeline import Pipeline

    with Pipeline(smolvlm_bundle, threads=2) as pipe:
        video = pipe.load_video(CLIP, visual_tokens=100)
        expected = pipe.ask(video, QUESTION, GREEDY)
        with Watcher(pipe, CLIP, window=16, fps=1, visual_tokens=100) as watcher:
            assert wait_until(lambda: watcher.ended, 60)
            first = watcher.ask(QUESTION, GREEDY)
            second = watcher.ask(QUESTION, GREEDY)
    assert first.window.times.tolist() == video.sampled.timestamps.tolist()
    shown = first.result.visual.tokens_per_frame
    assert shown.tolist() == expected.visual.tokens_per_frame.tolist()
    assert first.result.answer.visual_tokens == expected.answer.visual_tokens <= 100
    assert "vision" in first.result.visual.timings and "vision" not in second.result.visual.timings
    assert np.allclose(first.result.visual.embeds, second.result.visual.embeds)


def test_watch_selects_key_frames_with_the_scorer(smolvlm_scorer_bundle) -> None:
    from dfrt.runtime.pipeline import Pipeline

    with Pipeline(smolvlm_scorer_bundle, threads=2, selection="aks") as pipe:
        video = pipe.load_video(CLIP, visual_tokens=100)
        expected = pipe.embed(video, QUESTION)
        with Watcher(pipe, CLIP, window=16, fps=1, visual_tokens=100) as watcher:
            assert wait_until(lambda: watcher.ended, 60)
            answer = watcher.ask(QUESTION, GREEDY)
    # the window's relevance is the file path's (up to the graphs' batch sizes), and the key frames are the
    # method's choice from it (a random tiny scorer has near-ties, so the two choices may differ by one)
    np.testing.assert_allclose(answer.result.visual.scores, expected.scores, atol=1e-3)
    from dfrt.scorers.selection import choose_frames

    features = answer.result.video.features
    chosen = choose_frames(
        answer.result.visual.scores, features.scorer_embeds, features.plan.key_frames, "aks"
    )
    assert answer.result.selection.key_frames.tolist() == chosen.tolist()


@pytest.mark.runtime
def test_the_cli_answers_a_standing_question(smolvlm_bundle) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "watch", str(CLIP), "--bundle", str(smolvlm_bundle), "--realtime",
         "--window", "16s", "--every", "3s", QUESTION, "--duration", "7.5s", "--no-stdin",
         "--max-tokens", "4", "--temperature", "0", "--visual-tokens", "40", "--selection", "uniform"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["kind"] for line in lines] == ["every"] * 2
    for line in lines:
        assert line["question"] == QUESTION and line["window"]["frames"] >= 3
        assert line["visual_tokens"] <= 40 and line["key_frame_times"]
