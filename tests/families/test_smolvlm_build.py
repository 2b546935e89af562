"""FP16 and INT8 graphs for a SmolVLM2 bundle through `dfrt build` and its accuracy gate: the visual graph
is converted, the scorer's towers (they choose the key frames) stay FP32, and every graph passes the static
TensorRT 10.3 check."""

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


def _dfrt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def built(smolvlm_scorer_bundle, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("build") / "bundle"
    shutil.copytree(smolvlm_scorer_bundle, bundle)
    videos = tmp_path_factory.mktemp("calibration")
    for clip in sorted(SAMPLES.glob("0[1-4]-*.mp4")):
        shutil.copy(clip, videos / clip.name)
    for precision in ("fp16", "int8"):
        done = _dfrt("build", str(bundle), "--precision", precision, "--calib", str(videos))
        assert done.returncode == 0, done.stderr
    return bundle


def test_only_the_visual_graph_gets_fp16_and_int8_variants(built) -> None:
    manifest = json.loads((built / "dfrt.json").read_text())
    assert manifest["graphs"]["vision"]["variants"] == {
        "fp16": "vision.fp16.onnx",
        "int8": "vision.int8.onnx",
    }
    assert (
        not manifest["graphs"]["scorer_image"]["variants"]
        and not manifest["graphs"]["scorer_text"]["variants"]
    )


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_converted_bundle_answers_with_the_same_key_frames(built, precision) -> None:
    args = ["infer", str(SAMPLES / "05-changed.mp4"), "What changed?", "--bundle", str(built), "--json",
            "--temperature", "0", "--max-tokens", "3"]  # fmt: skip
    reference, converted = _dfrt(*args), _dfrt(*args, "--precision", precision)
    assert reference.returncode == converted.returncode == 0, converted.stderr
    ref, got = json.loads(reference.stdout), json.loads(converted.stdout)
    assert got["precision"] == precision
    assert [k["frame"] for k in got["key_frames"]] == [k["frame"] for k in ref["key_frames"]]


def test_every_graph_passes_the_static_tensorrt_check(built) -> None:
    done = _dfrt("check", str(built), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["errors"] == 0
    assert {f["graph"] for f in report["files"]} >= {
        "vision[fp16]",
        "vision[int8]",
        "scorer_image",
        "scorer_text",
    }
