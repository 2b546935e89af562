"""FP16 graphs written by dfrt on CPU: FP16 weights and MatMuls, FP32 islands, the gate, ORT parity."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfrt.calibration.build import build_variants
from dfrt.calibration.dataset import collect
from dfrt.calibration.fp16 import FP16_GRAPHS, convert_graph
from dfrt.manifest import MANIFEST_NAME
from dfrt.metrics import cosine
from dfrt.paths import QUESTIONS_FILE
from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline

onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.mp4"))  # real mp4 clips of the demo world, decoded by OpenCV
QUESTIONS = json.loads((ROOT / "samples" / "questions.json").read_text())
HELD_OUT = SAMPLES[-1]  # the last sample: in the gate half, never calibrated on


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """The seven samples with three of the demo's own questions (the first half calibrates)."""
    folder = tmp_path_factory.mktemp("fp16-calib")
    for path in SAMPLES:
        shutil.copy(path, folder / path.name)
    (folder / QUESTIONS_FILE).write_text("\n".join(q["question"] for q in QUESTIONS[:3]) + "\n")
    return folder


@pytest.fixture(scope="module", params=["tiny", "demo"])
def fp16_bundle(request, videos, tmp_path_factory):
    source = request.getfixturevalue("tiny_bundle") if request.param == "tiny" else ROOT / "dfrt/data/demo"
    out = shutil.copytree(source, tmp_path_factory.mktemp(f"fp16-{request.param}") / "bundle")
    return out, build_variants(out, "fp16", videos)


def _value_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def test_gate_passes_and_variants_are_listed(fp16_bundle):
    out, result = fp16_bundle
    assert result.gate.cosine_min >= 0.999 and result.gate.key_agreement == 1.0  # key frames identical
    assert {"question", "fusion"} <= set(result.kept)  # measured: vision may stay FP32 (clustering flips)
    for graph in result.kept:
        assert result.per_graph[graph].passes(0.999, 1.0)
    assert set(result.conversions) == set(FP16_GRAPHS)
    bundle = Bundle.open(out)
    for name, entry in bundle.manifest.graphs.items():
        assert entry.variants == ({"fp16": f"{name}.fp16.onnx"} if name in result.kept else {})
    assert "fp16" in bundle.precisions


def test_written_graphs_hold_fp16_matmuls_and_fp32_normalisation(fp16_bundle):
    out, result = fp16_bundle
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for graph in result.kept:
        model = onnx.load(str(out / f"{graph}.fp16.onnx"))
        types = _value_types(model)
        weights = {i.name for i in model.graph.initializer}
        heavy = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
        weighted = [name for n in heavy for name in n.input[1:2] if name in weights]
        assert weighted and all(types[w] == F16 for w in weighted), graph  # fails on a no-op conversion
        assert all(types[n.output[0]] == F16 for n in heavy), graph
        islands = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
        assert islands, graph
        for node in islands:
            assert types[node.input[0]] == F32 and types[node.output[0]] == F32, (graph, node.name)
        io_types = {t.type.tensor_type.elem_type for t in [*model.graph.input, *model.graph.output]}
        assert F16 not in io_types and F32 in io_types  # float32 in and out: the contracts hold
        assert sum(n.op_type == "Cast" for n in model.graph.node) > 0  # the seams


def test_fp16_runs_in_onnxruntime_like_fp32_on_a_held_out_video(fp16_bundle):
    out, result = fp16_bundle
    fp32 = VisualPipeline.open(out)
    bundle = fp32.bundle
    runners = dict(fp32.runners)
    for graph in result.kept:
        runners[graph] = OnnxRuntimeGraph(
            bundle.graph_path(graph, "fp16"), bundle.manifest.graphs[graph].spec
        )
    fp16 = VisualPipeline(bundle, runners)
    frames = read_video(
        HELD_OUT, max_frames=32, shortest_edge=bundle.manifest.config.vision.image_size
    ).frames
    question = QUESTIONS[-1]["question"]
    a = fp32.embed(fp32.encode_frames(frames), question)
    b = fp16.embed(fp16.encode_frames(frames), question)
    assert np.array_equal(a.selection.key_frames, b.selection.key_frames)
    assert cosine(a.embeds, b.embeds) >= 0.999
    assert not np.array_equal(a.embeds, b.embeds)  # really another precision


@pytest.mark.parametrize("fp16_bundle", ["demo"], indirect=True)  # the tiny bundle's LM is untrained
def test_demo_answers_on_35_held_out_clips_are_unchanged_in_fp16(fp16_bundle, tmp_path):
    """The issue's slice: the demo's greedy answers and key frames, FP16 graphs against FP32, clip by clip."""
    from dfrt.demo.world import held_out_clip
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    out, result = fp16_bundle
    assert result.kept  # some graph really runs in FP16
    greedy = SamplingConfig(temperature=0.0)
    answers: dict[str, list[tuple[str, list[int]]]] = {}
    clips = [held_out_clip(i).write(tmp_path / f"clip-{i:02d}.mp4") for i in range(35)]
    questions = [held_out_clip(i).question for i in range(35)]
    for precision in ("fp32", "fp16"):
        with Pipeline(out, backend="onnxruntime", precision=precision) as pipe:
            assert pipe.precision == precision
            answers[precision] = [
                (r.answer.text, r.selection.key_frames.tolist())
                for r in (pipe.ask(clip, q, greedy) for clip, q in zip(clips, questions, strict=True))
            ]
    changed = [i for i, (a, b) in enumerate(zip(answers["fp32"], answers["fp16"], strict=True)) if a != b]
    assert not changed, f"FP16 changed the answer or key frames of held-out clips {changed}"


def test_nodes_over_the_safe_magnitude_stay_fp32(tmp_path, videos):
    """The range rule on the demo's vision graph: with a bound of 1.0 the large outputs must stay FP32."""
    bundle = Bundle.open(ROOT / "dfrt/data/demo")
    pipeline = VisualPipeline.open(bundle.root)
    feeds = collect(pipeline, SAMPLES[:1], ("What moved?",)).feeds["vision"]
    normal = convert_graph("vision", bundle.graph_path("vision"), tmp_path / "a.onnx", feeds)
    assert normal.kept_by_range == {} and 1.0 < normal.max_abs < 1e4
    assert normal.matmuls_fp16 == normal.matmuls > 0 and normal.kept_by_op["LayerNormalization"] > 0
    strict = convert_graph(
        "vision", bundle.graph_path("vision"), tmp_path / "b.onnx", feeds, max_magnitude=1.0
    )
    assert strict.kept_by_range and all(v > 1.0 for v in strict.kept_by_range.values())
    model = onnx.load(str(tmp_path / "b.onnx"))
    types = _value_types(model)
    for node in model.graph.node:
        if node.name in strict.kept_by_range:
            assert all(types.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for o in node.output)


def _dfrt(*args):
    command = [sys.executable, "-m", "dfrt.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_cli_writes_fp16_graphs_without_a_gpu(tmp_path, videos):
    from dfrt.runtime.loader import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is usable here: engines would be built too")
    out = shutil.copytree(ROOT / "dfrt/data/demo", tmp_path / "bundle")
    no_calib = _dfrt("build", out, "--precision", "fp16")
    assert no_calib.returncode == 1 and no_calib.stderr.count("\n") == 1 and "--calib" in no_calib.stderr
    result = _dfrt("build", out, "--precision", "fp16", "--calib", videos, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"question", "fusion"} <= set(report["fp16"]["graphs"]) and "engines" not in report
    assert report["fp16"]["gate"]["cosine_min"] >= 0.999
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["graphs"]["question"]["variants"] == {"fp16": "question.fp16.onnx"}
