"""An InternVL3.5 bundle through the CLI: `dfrt infer --json` with question-aware key frames from its scorer,
and `dfrt build --precision int8` (the visual graph converted and gated, the scorer's towers kept FP32)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TOKENS_PER_FRAME, POOLED = 16, 4


def _dfrt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *args], capture_output=True, text=True, timeout=600, check=False
    )


def _infer(bundle: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    question = "How many shapes are there?"
    args = ["--bundle", str(bundle), "--json", "--temperature", "0", "--max-tokens", "6", *extra]
    done = _dfrt("infer", str(SAMPLES / "07-count.mp4"), question, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_infer_answers_within_the_default_budget(internvl_scorer_bundle) -> None:
    document = _infer(internvl_scorer_bundle)
    frames = document["frames"]
    assert document["tokens"]["visual"] == sum(f["tokens"] for f in frames) <= 8 * TOKENS_PER_FRAME
    shown = [f["tokens"] for f in frames if f["tokens"]]
    assert set(shown) == {TOKENS_PER_FRAME, POOLED}  # key frames at full tokens, the rest pooled
    assert shown.count(TOKENS_PER_FRAME) == len(document["key_frames"]) >= 1
    assert document["tokens"]["generated"] >= 1 and document["stop_reason"] in ("eos", "max_tokens")


@pytest.fixture(scope="module")
def built(internvl_scorer_bundle, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("build-internvl") / "bundle"
    shutil.copytree(internvl_scorer_bundle, bundle)
    videos = tmp_path_factory.mktemp("calibration-internvl")
    for clip in sorted(SAMPLES.glob("0[1-4]-*.mp4")):
        shutil.copy(clip, videos / clip.name)
    done = _dfrt("build", str(bundle), "--precision", "int8", "--calib", str(videos))
    assert done.returncode == 0, done.stderr
    return bundle


def test_build_int8_converts_only_the_visual_graph(built) -> None:
    manifest = json.loads((built / "dfrt.json").read_text())
    assert manifest["family"] == "internvl"
    assert manifest["graphs"]["vision"]["variants"] == {"int8": "vision.int8.onnx"}
    assert not manifest["graphs"]["scorer_image"]["variants"]


def test_the_int8_bundle_answers_with_the_same_key_frames(built) -> None:
    reference, converted = _infer(built), _infer(built, "--precision", "int8")
    assert converted["precision"] == "int8"
    assert [k["frame"] for k in converted["key_frames"]] == [k["frame"] for k in reference["key_frames"]]


def test_every_graph_passes_the_static_tensorrt_check(built) -> None:
    done = _dfrt("check", str(built), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["errors"] == 0
    assert {f["graph"] for f in report["files"]} >= {"vision[int8]", "scorer_image", "scorer_text"}
