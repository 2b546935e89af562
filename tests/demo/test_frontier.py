"""The visual-token budget in the evaluation and the accuracy/cost frontier, on the shipped demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfrt.bench.frontier import format_frontier, read_frontier
from dfrt.demo.evaluate import evaluate_bundle, held_out_set
from dfrt.demo.frontier import FrontierPoint, equal_accuracy, frontier_record, measure_frontier
from dfrt.demo.world import fresh_test_clip, held_out_clip
from dfrt.errors import ConfigError
from dfrt.runtime.pipeline import Pipeline

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def test_fresh_test_clips_are_new_clips() -> None:
    fresh = [fresh_test_clip(i) for i in range(7)]
    old = [held_out_clip(i) for i in range(7)]
    assert [c.kind for c in fresh] == [c.kind for c in old]  # kinds in the same rotation
    assert [c.seed for c in fresh] == [6 * 10**9 + i for i in range(7)]  # no other set draws there
    assert [(c.question, c.answer, c.evidence) for c in fresh] != [
        (c.question, c.answer, c.evidence) for c in old
    ]


def test_frontier_points_cost_what_their_setting_says(bundle: Path, tmp_path: Path) -> None:
    items = held_out_set(4, tmp_path / "clips", clip_of=fresh_test_clip)
    with Pipeline(bundle, backend="onnxruntime") as pipe:
        points = measure_frontier(pipe, items, budgets=(None, 68), frame_counts=(1, 4))
    by_key = {(p.method, p.setting): p for p in points}
    assert set(by_key) == {
        ("dynfocus", None),
        ("dynfocus", 68),
        ("uniform", 1),
        ("uniform", 4),
        ("random", 1),
        ("random", 4),
    }
    # the demo's 16-frame clips: 4 key frames by default (4 x 38 + 12 x 2), one under a budget of 68
    assert by_key["dynfocus", None].tokens == 176 and by_key["dynfocus", 68].tokens == 68
    assert by_key["uniform", 1].tokens == 38 and by_key["uniform", 4].tokens == 152
    assert all(p.questions == 4 and 0 <= p.accuracy <= 1 and p.seconds > 0 for p in points)
    record = frontier_record(points, "fresh", len(items))
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(record))
    text = format_frontier(read_frontier(path))
    assert "equal-accuracy token ratio" in text and "budget 68" in text


def _point(method: str, setting: int | None, accuracy: float, tokens: float, seconds: float) -> FrontierPoint:
    return FrontierPoint(method, setting, accuracy, accuracy, tokens, seconds, 100)


def test_equal_accuracy_interpolates_the_uniform_curve() -> None:
    points = [
        _point("dynfocus", None, 0.80, 100, 1.0),
        _point("uniform", 1, 0.40, 38, 0.5),
        _point("uniform", 4, 0.70, 152, 1.5),
        _point("uniform", 8, 0.90, 304, 3.5),
    ]
    eq = equal_accuracy(points)
    assert eq.reached
    assert eq.uniform_tokens == pytest.approx(152 + 0.5 * 152)  # halfway from 0.70 to 0.90
    assert eq.token_ratio == pytest.approx(2.28) and eq.speedup == pytest.approx(2.5)


def test_equal_accuracy_never_reached_is_a_lower_bound_at_the_last_point() -> None:
    points = [
        _point("dynfocus", None, 0.95, 176, 1.0),
        _point("uniform", 4, 0.80, 152, 0.5),
        _point("uniform", 12, 0.60, 456, 2.0),
    ]
    eq = equal_accuracy(points)
    assert not eq.reached  # uniform would need more than its 456 tokens
    assert eq.token_ratio == pytest.approx(456 / 176) and eq.speedup == pytest.approx(2.0)


def test_a_budget_in_the_evaluation_caps_dynfocus_tokens(bundle: Path, tmp_path: Path) -> None:
    report = evaluate_bundle(bundle, 7, ["dynfocus", "uniform"], clips=tmp_path / "clips", visual_tokens=104)
    scores = report.to_dict()["strategies"]
    assert scores["dynfocus"]["mean_visual_tokens"] == 104  # 2 key frames of 16: 2 x 38 + 14 x 2
    assert scores["uniform"]["mean_visual_tokens"] == 76  # as many cone-only frames as 104 tokens hold
    assert report.to_dict()["visual_token_budget"] == 104 and "budget 104" in report.text()
    with pytest.raises(ConfigError, match="below the 40 tokens of one frame"):
        evaluate_bundle(bundle, 7, ["dynfocus"], clips=tmp_path / "clips", visual_tokens=39)


def test_a_record_that_is_not_one_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"points": []}')
    with pytest.raises(ConfigError, match="not a frontier record"):
        read_frontier(path)


SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"


def _infer(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "infer", str(SAMPLE), "How many shapes can you see?", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DFRT_CACHE_DIR": str(cache)},
        timeout=300,
    )


@pytest.mark.parametrize("budget", [176, 104, 60, 40])
def test_infer_answers_within_its_visual_token_budget(budget: int, tmp_path: Path) -> None:
    result = _infer(tmp_path, "--temperature", "0", "--visual-tokens", str(budget), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    used = document["tokens"]["visual"]
    assert used <= budget and used == sum(f["tokens"] for f in document["frames"])
    plan = document["visual_token_budget"]
    assert plan["budget"] == budget and plan["visual_tokens"] == used
    assert (
        plan["frames_kept"] == len(document["frames"]) and len(document["key_frames"]) == plan["key_frames"]
    )
    assert document["answer"].strip()


@pytest.mark.parametrize("budget", ["39", "0", "-5", "1.5"])
def test_a_budget_that_cannot_hold_a_frame_is_one_line(budget: str, tmp_path: Path) -> None:
    result = _infer(tmp_path, "--visual-tokens", budget)
    assert result.returncode in (1, 2), result.stderr  # 2: argparse refuses "1.5" as an integer
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("dfrt: error:", "usage:", "dfrt infer: error"))
