"""INT8 through NVIDIA Model Optimizer: the quantizer choice, the fallback to onnxruntime's quantizer, and
(where nvidia-modelopt imports) Model Optimizer's Q/DQ graphs through the same accuracy gate."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dfrt.calibration import modelopt_int8
from dfrt.calibration.build import build_precision, build_variants
from dfrt.errors import BuildError, ConfigError
from dfrt.manifest import MANIFEST_NAME
from dfrt.metrics import cosine
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline
from tests.media import vtest, write_clip


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Calibration half: a generated clip; gate half: vtest.avi (real pedestrians)."""
    folder = tmp_path_factory.mktemp("calib")
    write_clip(folder / "a_clip.mp4", seconds=10, fps=10, size=(160, 120))
    shutil.copy(vtest(), folder / "b_vtest.avi")
    return folder


@pytest.fixture
def without_modelopt(monkeypatch):
    monkeypatch.setattr(
        modelopt_int8, "_modelopt", lambda: (None, "ModuleNotFoundError: No module named 'x'")
    )


def test_quantizer_choice(without_modelopt):
    assert modelopt_int8.resolve_quantizer("onnxruntime") == "onnxruntime"
    assert modelopt_int8.resolve_quantizer("auto") == "onnxruntime"  # falls back
    with pytest.raises(ConfigError, match=r"nvidia-modelopt does not import here .*\.\[modelopt\]"):
        modelopt_int8.resolve_quantizer("modelopt")
    with pytest.raises(ConfigError, match="unknown quantizer 'tensorrt'"):
        modelopt_int8.resolve_quantizer("tensorrt")
    assert modelopt_int8.describe("onnxruntime").startswith("onnxruntime 1.")


def test_auto_is_modelopt_when_it_imports():
    expected = "modelopt" if modelopt_int8.modelopt_available() else "onnxruntime"
    assert modelopt_int8.resolve_quantizer("auto") == expected


def test_fallback_builds_with_onnxruntime(tiny_bundle, videos, tmp_path, without_modelopt):
    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    lines: list[str] = []
    report = build_precision(out, "int8", videos, progress=lines.append, quantizer="auto")
    assert report.graphs is not None and report.graphs.quantizer.startswith("onnxruntime ")
    assert "quantized by onnxruntime" in lines[0]
    assert {"question", "fusion"} <= set(report.graphs.kept)
    with pytest.raises(ConfigError, match="--quantizer chooses how INT8"):
        build_precision(out, "fp16", videos, quantizer="onnxruntime")


def _dfrt(*args):
    command = [sys.executable, "-m", "dfrt.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_cli_quantizer_flag(tiny_bundle, videos):
    fp16 = _dfrt("build", tiny_bundle, "--precision", "fp16", "--quantizer", "modelopt")
    assert fp16.returncode == 1 and fp16.stderr.count("\n") == 1
    assert "--quantizer chooses how INT8 graphs are quantized" in fp16.stderr
    bad = _dfrt("build", tiny_bundle, "--precision", "int8", "--calib", videos, "--quantizer", "x")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# -- Model Optimizer itself (skips where nvidia-modelopt does not import) ---------------------------------


@pytest.fixture(scope="module")
def modelopt_bundle(tiny_bundle, videos, tmp_path_factory):
    pytest.importorskip("modelopt.onnx.quantization", exc_type=ImportError)
    from onnxruntime.quantization import registry

    before = dict(registry.QDQRegistry)
    out = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("modelopt") / "bundle")
    result = build_variants(out, "int8", videos, quantizer="modelopt")
    assert registry.QDQRegistry == before  # Model Optimizer's patches to onnxruntime are undone
    return out, result


def test_modelopt_graphs_pass_the_gate(modelopt_bundle):
    import onnx

    out, result = modelopt_bundle
    assert result.quantizer.startswith("nvidia-modelopt 0.")
    assert result.gate.cosine_min >= 0.99 and result.gate.key_agreement >= 0.90
    assert {"question", "fusion"} <= set(result.kept)
    bundle = Bundle.open(out)  # verifies every hash: the FP32 graphs were not rewritten in place
    for graph in result.kept:
        model = onnx.load(str(out / bundle.manifest.graphs[graph].variants["int8"]))
        ops = {node.op_type for node in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert not [p.name for p in out.iterdir() if "modelopt" in p.name or p.name.startswith(".staging")]
    fp32, int8 = VisualPipeline.open(out), VisualPipeline.open(out, precision="int8")
    frames = read_video(vtest(), max_frames=16, shortest_edge=112).frames
    a = fp32.embed(fp32.encode_frames(frames), "Where do the people walk?")
    b = int8.embed(int8.encode_frames(frames), "Where do the people walk?")
    assert np.array_equal(a.selection.key_frames, b.selection.key_frames)
    assert cosine(a.embeds, b.embeds) >= 0.99


def test_modelopt_graphs_failing_the_gate_leave_the_bundle_untouched(tiny_bundle, videos, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization", exc_type=ImportError)
    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")

    def snapshot():  # the verification stamp (.verified.json) aside
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}

    before = snapshot()
    with pytest.raises(BuildError, match="accuracy gate failed"):
        build_variants(out, "int8", videos, min_cosine=1.01, quantizer="modelopt")
    assert snapshot() == before and not [p for p in out.iterdir() if p.name.startswith(".staging")]
    assert json.loads((out / MANIFEST_NAME).read_text())["graphs"]["fusion"]["variants"] == {}


def test_modelopt_errors_are_one_build_error(tmp_path):
    pytest.importorskip("modelopt.onnx.quantization", exc_type=ImportError)
    broken = tmp_path / "fusion.onnx"
    broken.write_bytes(b"not an onnx graph")
    feeds = [{"x": np.zeros((1, 4), np.float32)}]
    with pytest.raises(
        BuildError, match=r"^INT8 quantization of fusion.onnx with nvidia-modelopt failed: "
    ) as e:
        modelopt_int8.quantize_graph(broken, tmp_path / "out.onnx", feeds)
    assert "\n" not in str(e.value)
    with pytest.raises(BuildError, match="no calibration feeds"):
        modelopt_int8.quantize_graph(broken, tmp_path / "out.onnx", [])


def test_modelopt_external_data_is_named_as_dfrt_names_it(tiny_bundle, videos, tmp_path):
    """A ``large`` graph's weights end up in ``<target>.data`` (Model Optimizer writes ``<name>_data``)."""
    pytest.importorskip("modelopt.onnx.quantization", exc_type=ImportError)
    import onnxruntime as ort

    from dfrt.calibration.dataset import collect

    reference = VisualPipeline.open(tiny_bundle)
    feeds = collect(reference, [videos / "a_clip.mp4"], ["What moves?"]).feeds["fusion"]
    target = tmp_path / "fusion.int8.onnx"
    modelopt_int8.quantize_graph(reference.bundle.graph_path("fusion"), target, feeds, large=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fusion.int8.onnx", "fusion.int8.onnx.data"]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    out = session.run(None, feeds[0])
    assert all(np.isfinite(o).all() for o in out)
