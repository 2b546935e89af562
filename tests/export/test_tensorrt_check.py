"""Static TensorRT readiness: real bundles pass, hostile graphs are refused by graph, node and op."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the TensorRT check reads ONNX with onnx (dfrt[export])")
import onnx
from onnx import TensorProto, helper, numpy_helper

import dfrt
from dfrt.commands import check as check_command
from dfrt.errors import BuildError, ConfigError
from dfrt.export.tensorrt_check import TOPK_MAX_K, Finding, check_bundle, check_model
from dfrt.fileio import sha256_file
from dfrt.manifest import MANIFEST_NAME, FileEntry, Manifest

DEMO = Path(dfrt.__file__).parent / "data" / "demo"
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    ir_version = helper.find_min_ir_version_for(opsets[:1])  # the IR version of the ONNX that has the opset
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _vi(name, dtype=F, shape=(2, 3)):
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _errors(findings, node=None):
    return [f for f in findings if f.severity == "error" and (node is None or f.node == node)]


def _refused(findings, node, op, fragment):
    """The one error finding that names ``node`` and ``op`` and says ``fragment``."""
    hits = [
        f for f in _errors(findings, node) if f.op == op and f.graph == "hostile" and fragment in f.message
    ]
    assert hits, f"no error for {node} ({op}) mentioning {fragment!r}: {[str(f) for f in findings]}"
    return hits[0]


# ---- hostile graphs: each builder returns (model, node, op, what the error must say) ----


def _sequence():
    nodes = [
        helper.make_node("SequenceConstruct", ["x", "x"], ["s"], name="seq"),
        helper.make_node("SequenceAt", ["s", "zero"], ["y"], name="at"),
    ]
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    return _model(nodes, [_vi("x")], [_vi("y")], [zero]), "seq", "SequenceConstruct", "unsupported"


def _topk_dynamic_k():
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1)
    inputs = [_vi("x", shape=(1, 10)), _vi("k", I64, (1,))]
    outputs = [_vi("v", shape=(1, None)), _vi("i", I64, (1, None))]
    return _model([node], inputs, outputs), "topk", "TopK", "K (k) is computed at run time"


def _topk_large_k():
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1)
    outputs = [_vi("v", shape=(1, 4000)), _vi("i", I64, (1, 4000))]
    model = _model([node], [_vi("x", shape=(1, 5000))], outputs, [_ints("k", [4000])])
    return model, "topk", "TopK", f"K = 4000: TensorRT's TopK needs K < {TOPK_MAX_K}"


def _topk_unsorted():
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1, sorted=0)
    outputs = [_vi("v", shape=(1, 3)), _vi("i", I64, (1, 3))]
    model = _model([node], [_vi("x", shape=(1, 10))], outputs, [_ints("k", [3])])
    return model, "topk", "TopK", "sorted=0"


def _reduce_axes_input():
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="reduce", keepdims=1)
    inputs = [_vi("x"), _vi("axes", I64, (1,))]
    return _model([node], inputs, [_vi("y", shape=(None, None))]), "reduce", "ReduceSum", "axes (axes)"


def _float64_initializer():
    w = numpy_helper.from_array(np.ones((2, 3), dtype=np.float64), "w64")
    nodes = [
        helper.make_node("Cast", ["w64"], ["w"], name="cast", to=F),
        helper.make_node("Add", ["x", "w"], ["y"], name="add"),
    ]
    return _model(nodes, [_vi("x")], [_vi("y")], [w]), "cast", "Cast", "initializer w64 is float64"


def _cast_to_double():
    nodes = [helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.DOUBLE)]
    return _model(nodes, [_vi("x")], [_vi("y", TensorProto.DOUBLE)]), "cast", "Cast", "casts to float64"


def _attention_opset23():
    qkv = [_vi(n, shape=(1, 2, 4, 8)) for n in ("q", "k", "v")]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    model = _model([node], qkv, [_vi("y", shape=(1, 2, 4, 8))], opset=23)
    return model, "attn", "Attention", "needs TensorRT >= 10.14"


def _layernorm_three_outputs():
    node = helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean", "inv"], name="ln", axis=-1)
    scale = numpy_helper.from_array(np.ones(3, dtype=np.float32), "scale")
    return _model([node], [_vi("x")], [_vi("y")], [scale]), "ln", "LayerNormalization", "3 outputs"


def _contrib_op():
    node = helper.make_node("FusedMatMul", ["x", "w"], ["y"], name="fused", domain="com.microsoft")
    w = numpy_helper.from_array(np.ones((3, 2), dtype=np.float32), "w")
    model = _model([node], [_vi("x")], [_vi("y", shape=(2, 2))], [w], extra_opsets=[("com.microsoft", 1)])
    return model, "fused", "FusedMatMul", "onnxruntime contrib op"


def _asymmetric_qdq():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant"),
    ]
    init = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        helper.make_tensor("zp", TensorProto.UINT8, [], [128]),
    ]
    model = _model(nodes, [_vi("x")], [_vi("y")], init)
    return model, "quant", "QuantizeLinear", "symmetric Q/DQ only"


HOSTILE = {
    "sequence": _sequence,
    "topk_dynamic_k": _topk_dynamic_k,
    "topk_large_k": _topk_large_k,
    "topk_unsorted": _topk_unsorted,
    "reduce_axes_input": _reduce_axes_input,
    "float64_initializer": _float64_initializer,
    "cast_to_double": _cast_to_double,
    "attention_opset23": _attention_opset23,
    "layernorm_three_outputs": _layernorm_three_outputs,
    "contrib_op": _contrib_op,
    "asymmetric_qdq": _asymmetric_qdq,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_graph_is_refused_naming_graph_node_and_op(name):
    model, node, op, fragment = HOSTILE[name]()
    finding = _refused(check_model(model, "hostile", "10.3"), node, op, fragment)
    assert str(finding).startswith(f"hostile/{node} ({op}): ")


def test_clean_graphs_of_the_same_shapes_pass():
    """The control: the same ops, written the way TensorRT takes them, give no finding at all."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["r"], name="reduce", keepdims=1),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1),
        helper.make_node("LayerNormalization", ["x", "scale"], ["y"], name="ln", axis=-1),
        helper.make_node("Unsqueeze", ["x", "one"], ["u"], name="unsq"),
    ]
    init = [
        _ints("axes", [1]),
        _ints("k", [2]),
        _ints("one", [1]),
        numpy_helper.from_array(np.ones(3, dtype=np.float32), "scale"),
    ]
    outputs = [
        _vi("r", shape=(2, 1)),
        _vi("v", shape=(2, 2)),
        _vi("i", I64, (2, 2)),
        _vi("y"),
        _vi("u", shape=(2, 1, 3)),
    ]
    model = _model(nodes, [_vi("x")], outputs, init)
    for target in ("10.3", "10.15"):
        assert check_model(model, "clean", target) == []


def test_the_sequence_graph_names_both_sequence_ops():
    model, *_ = _sequence()
    ops = {f.op for f in _errors(check_model(model, "hostile"))}
    assert {"SequenceConstruct", "SequenceAt"} <= ops


def test_opset_23_attention_parses_on_10_15_but_not_on_10_3():
    model, *_ = _attention_opset23()
    old = check_model(model, "hostile", "10.3")
    assert any(f.node == "" and "opset 23" in f.message and "9-20" in f.message for f in _errors(old))
    assert _errors(old, "attn")
    assert check_model(model, "hostile", "10.15") == []


def test_targets_differ_where_the_parsers_do():
    """Computed Squeeze axes: an error for 10.3, a warning for 10.15; RMSNormalization: 10.15 only."""
    squeeze = helper.make_node("Squeeze", ["x", "axes"], ["y"], name="squeeze")
    model = _model([squeeze], [_vi("x", shape=(2, 1)), _vi("axes", I64, (1,))], [_vi("y", shape=(2,))])
    assert [f.severity for f in check_model(model, "m", "10.3")] == ["error"]
    assert [f.severity for f in check_model(model, "m", "10.15")] == ["warning"]
    rms = helper.make_node("RMSNormalization", ["x", "scale"], ["y"], name="rms", axis=-1)
    scale = numpy_helper.from_array(np.ones(3, dtype=np.float32), "scale")
    model = _model([rms], [_vi("x")], [_vi("y")], [scale], opset=23)
    assert any(
        "needs TensorRT >= 10.15" in f.message for f in _errors(check_model(model, "m", "10.3"), "rms")
    )
    assert check_model(model, "m", "10.15") == []
    sliced = helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice")
    inputs = [_vi("x"), _vi("axes", I64, (1,))]
    model = _model([sliced], inputs, [_vi("y", shape=(2, 1))], [_ints("starts", [0]), _ints("ends", [1])])
    assert [(f.severity, f.node) for f in check_model(model, "m", "10.3")] == [("warning", "slice")]
    assert check_model(model, "m", "10.15") == []


def test_the_checker_and_shape_inference_findings_come_from_onnx():
    node = helper.make_node("Add", ["x", "y"], ["z"], name="add")
    model = _model([node], [_vi("x", shape=(2, 3)), _vi("y", shape=(4, 5))], [_vi("z", shape=(2, 3))])
    assert any("shape inference" in f.message for f in _errors(check_model(model, "m")))
    broken = _model([helper.make_node("Add", ["x", "nowhere"], ["z"], name="add")], [_vi("x")], [_vi("z")])
    assert any("ONNX checker" in f.message for f in _errors(check_model(broken, "m")))


def test_nodes_inside_subgraphs_are_checked():
    seq = helper.make_node("SequenceConstruct", ["x"], ["s"], name="inner_seq")
    at = helper.make_node("SequenceAt", ["s", "zero"], ["y_then"], name="inner_at")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    then = helper.make_graph([seq, at], "then", [], [_vi("y_then")], [zero])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [], [_vi("y_else")])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)
    model = _model([node], [_vi("x"), _vi("c", TensorProto.BOOL, ())], [_vi("y")])
    assert _errors(check_model(model, "m"), "branch/then_branch/inner_seq")


def test_external_data_must_stay_inside_the_model_directory(tmp_path):
    node = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    w = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "w")
    model = _model([node], [_vi("x")], [_vi("y")], [w])
    onnx.save(
        model, tmp_path / "good.onnx", save_as_external_data=True, location="good.data", size_threshold=0
    )
    assert check_model(tmp_path / "good.onnx", "m") == []
    in_memory = check_model(onnx.load(tmp_path / "good.onnx", load_external_data=False), "m")
    assert [(f.severity, "not checked" in f.message) for f in in_memory] == [("warning", True)]
    cases = (
        ("../good.data", "leaves the bundle"),
        ("/etc/passwd", "leaves the bundle"),
        ("gone.data", "missing"),
    )
    for location, says in cases:
        evil = onnx.load(tmp_path / "good.onnx", load_external_data=False)
        for entry in evil.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / "evil.onnx").write_bytes(evil.SerializeToString())
        findings = check_model(tmp_path / "sub" / "evil.onnx", "m")
        assert len(findings) == 1 and says in findings[0].message and location in findings[0].message, (
            findings
        )


def test_a_file_that_is_not_onnx_is_one_error(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00 definitely not protobuf" * 10)
    findings = check_model(tmp_path / "junk.onnx", "junk")
    assert (
        len(findings) == 1
        and findings[0].severity == "error"
        and "not a readable ONNX model" in findings[0].message
    )


def test_an_unknown_target_is_a_config_error():
    model, *_ = _sequence()
    with pytest.raises(ConfigError, match=r"10\.3, 10\.15"):
        check_model(model, "m", "9.9")
    assert check_model(model, "m", "10.3.0.26") == check_model(model, "m", "10.3")


# ---- bundles ----


def test_the_shipped_demo_passes_at_10_3_and_10_15():
    for target in ("10.3", "10.15"):
        report = check_bundle(DEMO, target, verify=False)
        assert [f for f, _ in report.files] == ["vision", "scoring", "encoding", "question", "fusion"]
        assert report.findings == (), [str(f) for f in report.findings]


def test_the_tiny_export_passes_at_10_3(tiny_bundle):
    report = check_bundle(tiny_bundle, "10.3")
    assert len(report.files) == 5 and report.ok, [str(f) for f in report.findings]
    assert report.findings == (), [str(f) for f in report.findings]


@pytest.fixture
def hostile_bundle(tmp_path):
    """The demo with its scoring graph made hostile and a hostile INT8 variant of the fusion graph."""
    root = tmp_path / "bundle"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns(".verified.json"))
    onnx.save(_reduce_axes_input()[0], root / "scoring.onnx")
    onnx.save(_layernorm_three_outputs()[0], root / "fusion.int8.onnx")
    manifest = Manifest.from_json((root / MANIFEST_NAME).read_text(), "test")
    files = dict(manifest.files)
    for name in ("scoring.onnx", "fusion.int8.onnx"):
        files[name] = FileEntry(sha256_file(root / name), (root / name).stat().st_size)
    graphs = dict(manifest.graphs)
    graphs["fusion"] = dataclasses.replace(graphs["fusion"], variants={"int8": "fusion.int8.onnx"})
    manifest = dataclasses.replace(manifest, files=files, graphs=graphs)
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return root


def test_every_listed_file_is_checked_variants_included(hostile_bundle):
    report = check_bundle(hostile_bundle, "10.3")
    assert ("fusion[int8]", "fusion.int8.onnx") in report.files and len(report.files) == 6
    bad = {(f.graph, f.node, f.op) for f in report.errors}
    assert bad == {("scoring", "reduce", "ReduceSum"), ("fusion[int8]", "ln", "LayerNormalization")}


def test_the_command_prints_one_line_per_finding_and_fails(hostile_bundle, capsys):
    args = argparse.Namespace(bundle=str(hostile_bundle), tensorrt="10.3", json=False)
    with pytest.raises(BuildError, match=r"TensorRT 10\.3 would refuse it: scoring/reduce") as raised:
        check_command.run(args)
    assert "\n" not in str(raised.value) and "1 more error" in str(raised.value)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("scoring/reduce (ReduceSum): axes (axes)")
    assert lines[1].startswith("fusion[int8]/ln (LayerNormalization): 3 outputs")
    assert lines[-1] == "TensorRT 10.3: 6 ONNX files checked, 2 errors, 0 warnings"


def test_the_command_json_is_one_document(capsys):
    parser = argparse.ArgumentParser()
    check_command.register(parser)
    args = parser.parse_args([str(DEMO), "--tensorrt", "10.15", "--json"])
    assert args.run(args) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] and document["tensorrt"] == "10.15" and document["findings"] == []
    assert [f["graph"] for f in document["files"]] == ["vision", "scoring", "encoding", "question", "fusion"]


def test_building_the_parser_imports_nothing_heavy():
    code = (
        "import argparse, sys\n"
        "from dfrt.commands import check\n"
        "check.register(argparse.ArgumentParser())\n"
        "print(sorted(m for m in ('onnx', 'numpy', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_finding_reads_as_one_line():
    finding = Finding("encoding", "/structure/TopK", "TopK", "K = 4000")
    assert str(finding) == "encoding//structure/TopK (TopK): K = 4000"
    assert str(Finding("vision", "", "", "opset 23", "warning")) == "vision: opset 23 [warning]"


def test_export_refuses_a_graph_tensorrt_could_not_parse(tiny_model, tmp_path, monkeypatch):
    """`dfrt export`'s validation includes the TensorRT 10.3 check: a finding stops the export before
    anything is committed."""
    from dfrt.errors import ExportError
    from dfrt.export import bundle_writer, tensorrt_check

    def refuse(path, graph="model", target="10.3"):
        return [tensorrt_check.Finding(graph, "/n", "Unique", "not in TensorRT 10.3's ONNX parser")]

    monkeypatch.setattr(tensorrt_check, "check_model", refuse)
    with pytest.raises(ExportError, match=r"would not parse in TensorRT 10\.3: vision//n \(Unique\)"):
        bundle_writer.export_bundle(tiny_model, tmp_path / "b", {"source": "random"}, progress=False)
    assert not (tmp_path / "b" / "dfrt.json").exists()
