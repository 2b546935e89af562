"""`dfrt eval --dataset` on a tiny random SmolVLM2 bundle: the plumbing of every strategy for an open VLM
(its answers are noise: the model is random), through the CLI and the Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dfrt import cli
from dfrt.runtime.bundle import Bundle

pytestmark = pytest.mark.runtime

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
CTX = 512  # uniform-full: fewer frames than sampled fit
BUDGET = 96  # the tiny model's frames are 16 tokens: 4 key frames and 8 pooled ones (4 tokens each)


def _dataset(root: Path) -> Path:
    shutil.copyfile(SAMPLE, root / "clip.mp4")
    lines = [
        {"id": "mc", "video": "clip.mp4", "question": "How many shapes are there?",
         "options": ["one", "two", "three", "four"], "answer": "B", "type": "count"},
        {"id": "free", "video": "clip.mp4", "question": "How many shapes are there?", "answer": "two"},
    ]  # fmt: skip
    path = root / "dataset.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_every_strategy_runs_on_a_smolvlm_bundle(smolvlm_bundle, tmp_path, capsys) -> None:
    config = Bundle.open(smolvlm_bundle).manifest.config
    full = config.tokens_per_frame
    dataset, out = _dataset(tmp_path), tmp_path / "rows.jsonl"
    code = cli.main(
        ["eval", "--dataset", str(dataset), "--out", str(out), "--bundle", str(smolvlm_bundle), "--json",
         "--ctx", str(CTX), "--max-frames", "16", "--visual-tokens", str(BUDGET), "--no-progress"]
    )  # fmt: skip
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["lines"] == 2 and summary["videos"] == 1
    rows = {(r["id"], r["strategy"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 6 and not any("error" in r for r in rows.values())
    for name in ("mc", "free"):
        own, uniform, widest = (rows[name, s] for s in ("dfrt", "uniform", "uniform-full"))
        assert own["sampled_frames"] == 16
        assert own["visual_tokens"] == BUDGET and len(own["full_frames"]) == 4 and own["frames_shown"] == 12
        # uniform: frames at full tokens alone, as many as the bundle's own selection's tokens hold
        count = max(1, own["visual_tokens"] // full)
        assert uniform["frames_shown"] == len(uniform["full_frames"]) == count
        assert uniform["visual_tokens"] == full * count <= max(full, own["visual_tokens"])
        # uniform-full: frames at full tokens filling the context with the prompt and the answer
        shown = widest["frames_shown"]
        assert widest["visual_tokens"] == full * shown and shown == len(widest["full_frames"])
        assert widest["visual_tokens"] + widest["tokens"]["prompt"] + 1 + 16 <= CTX
        assert count < shown < 16
    assert rows["mc", "dfrt"]["prediction"] in (None, "A", "B", "C", "D")
    assert summary["strategies"]["uniform-full"]["per_type"]["count"]["answered"] == 1


def test_the_python_api_with_an_open_pipeline(smolvlm_bundle, tmp_path) -> None:
    from dfrt.evaluation import EvalOptions, run_eval
    from dfrt.runtime.pipeline import Pipeline

    dataset = _dataset(tmp_path)
    seen: list[dict] = []
    with Pipeline(smolvlm_bundle, n_ctx=CTX, threads=2) as pipe:
        options = EvalOptions(dataset, tmp_path / "rows.jsonl", strategies=("dfrt", "uniform"), max_frames=8)
        summary = run_eval(options, pipe, on_row=seen.append)
        assert not pipe.closed
    assert [(r["id"], r["strategy"]) for r in seen] == [
        ("mc", "dfrt"), ("mc", "uniform"), ("free", "dfrt"), ("free", "uniform")
    ]  # fmt: skip
    assert summary.written == 4 and summary.scores["dfrt"].answered == 2
