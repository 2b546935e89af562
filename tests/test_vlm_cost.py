"""The cost benchmark's shared flow (``benchmarks/vlm_cost.py``) end to end on a tiny random InternVL and a
tiny SigLIP scorer: checkpoint, export, graph timing, every configuration's prompt through llama.cpp, the
goal, the record and the plot. Cost figures themselves live in ``benchmarks/RESULTS.md``, not here."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cost_modules():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(BENCHMARKS))
    import internvl_cost
    import smolvlm_cost
    import vlm_cost

    return vlm_cost, internvl_cost, smolvlm_cost


def test_both_entry_points_share_the_measuring(cost_modules) -> None:
    vlm_cost, internvl_cost, smolvlm_cost = cost_modules
    assert internvl_cost.main is smolvlm_cost.main is vlm_cost.main
    assert set(internvl_cost.FAMILY.models) == {"1b", "2b"}
    assert set(smolvlm_cost.FAMILY.models) == {"500m", "2.2b"}
    assert internvl_cost.FAMILY.export().export_checkpoint
    with pytest.raises(SystemExit):
        vlm_cost.main(internvl_cost.FAMILY, ["--models", "7b", "--build-only"])


def test_the_internvl_flow_runs_end_to_end_on_a_tiny_model(cost_modules, tmp_path) -> None:
    vlm_cost, internvl_cost, _ = cost_modules
    from tests.tiny_internvl import TOKENS_PER_FRAME, tiny_internvl
    from tests.tiny_scorer import build

    family = dataclasses.replace(
        internvl_cost.FAMILY,
        models={"tiny": {"name": "tiny-internvl", "quantize": "f16"}},
        build_checkpoint=lambda key, directory: tiny_internvl(directory),
        build_scorer=lambda directory: build(directory, "siglip"),
        n_ctx=2048,
    )
    out = tmp_path / "cost.json"
    argv = ["--cache", str(tmp_path / "cache"), "--json", str(out), "--plot", str(tmp_path / "cost.png")]
    argv += ["--durations", "30,120", "--uniform", "8,32", "--batch", "2", "--threads", "2"]
    argv += ["--max-prefill-tokens", "tiny=400"]
    assert vlm_cost.main(family, argv) == 0
    record = json.loads(out.read_text())["models"]["tiny"]
    assert (tmp_path / "cost.png").stat().st_size > 0
    rows = {(r["video_seconds"], r["config"]): r for r in record["rows"]}
    assert set(rows) == {(s, c) for s in (30, 120) for c in ("dfrt", "uniform-8", "uniform-32")}
    budget = record["config"]["default_visual_tokens"]
    for (_, config), row in rows.items():
        if config == "dfrt":
            assert row["visual_tokens"] <= budget and row["key_frames"] >= 1 and row["scorer_seconds"] > 0
        else:
            count = min(int(config.split("-")[1]), row["sampled_frames"])
            assert row["frames_encoded"] == row["key_frames"] == count
            assert row["visual_tokens"] == count * TOKENS_PER_FRAME
        assert row["prompt_tokens"] > row["visual_tokens"]  # the frame lines and the question
        if row["prompt_tokens"] > 400:
            assert row["prefill_seconds"] is None and row["end_to_end_seconds"] is None
        else:
            assert row["prefill_seconds"] > 0 and row["generated_tokens"] >= 1
            parts = row["decode_seconds"] + row["visual_seconds"] + row["host_seconds"] + row["llm_seconds"]
            assert row["end_to_end_seconds"] == pytest.approx(parts, abs=2e-3)
    ours, base = rows[(120, "dfrt")], rows[(120, "uniform-32")]
    goal = record["goal"]
    assert goal["prefill_token_ratio"] == pytest.approx(base["prompt_tokens"] / ours["prompt_tokens"], 1e-3)
    assert goal["met"] == (goal["tokens_met"] and goal["time_met"])
    assert record["graphs"]["seconds_per_frame"]["vlm_ort"] > 0
    assert any(w["default_visual_tokens"] == budget for w in record["what_if"])
    # a second run reuses the cached bundle
    assert vlm_cost.main(family, [*argv, "--build-only"]) == 0
