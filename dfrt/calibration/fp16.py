"""FP16 graphs whose precision lives in the ONNX (strongly typed): what TensorRT 10.12+ builds FP16 from.

onnxruntime's converter (``onnxruntime.transformers.float16``) turns weights, MatMul/Gemm/Conv and the
elementwise work into FP16 and inserts a Cast at every seam with the nodes kept in FP32:

- by op: LayerNormalization, Softmax, every Reduce*, Pow, Sqrt, Exp, Log, Reciprocal (normalisation and
  exponentials lose most in FP16: a decomposed LayerNorm squares before it averages), and a Div whose
  divisor is computed (variance, attention scale); a Div by a constant is a multiplication and runs in FP16;
- by measured range: every node whose output, with the FP32 graph run on real feeds, exceeds
  :data:`SAFE_MAGNITUDE` in absolute value (FP16 ends at 65504; attention masks of -1e9, outlier features);
- whole graphs: the scoring head and the clustering graph are never converted (discrete decisions).

Graph inputs and outputs stay float32, so a bundle's graph contracts are the same at every precision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfrt._optional import require
from dfrt.errors import BuildError
from dfrt.runtime.native_log import silenced_native_stderr

log = logging.getLogger(__name__)

FP16_GRAPHS = ("vision", "question", "fusion")  # scoring and encoding (clustering) stay FP32 whole
FP32_OPS = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Reciprocal",
)
SAFE_MAGNITUDE = 1e4  # largest |activation| left in FP16: FP16 ends at 65504, so 6x headroom
PROBE_SUFFIX = "/dfrt_absmax"
ONNX_PIP = "dfrt[export]"


@dataclass(frozen=True)
class Fp16Graph:
    """How one graph was converted, and why nodes were kept in FP32."""

    graph: str
    nodes: int  # compute nodes of the FP32 graph (Constant nodes not counted)
    kept_by_op: dict[str, int]  # op type -> nodes kept FP32 for what they compute
    kept_by_range: dict[str, float]  # node -> largest |output| measured, above SAFE_MAGNITUDE
    max_abs: float  # largest |activation| of any node output over the feeds
    largest: tuple[tuple[str, float], ...]  # the five largest node outputs (tensor, max |value|)
    matmuls: int  # MatMul/Gemm/Conv nodes
    matmuls_fp16: int  # of which run in FP16

    @property
    def kept(self) -> int:
        return sum(self.kept_by_op.values()) + len(self.kept_by_range)

    def line(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.kept_by_op.items())) or "none"
        return (
            f"{self.matmuls_fp16}/{self.matmuls} MatMul/Gemm/Conv in FP16; {self.kept} of {self.nodes} nodes "
            f"kept FP32 (by op: {ops}; by range > {SAFE_MAGNITUDE:g}: {len(self.kept_by_range)}); "
            f"max |activation| {self.max_abs:.4g}"
        )


def activation_ranges(source: Path, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Largest absolute value of every float node output of ``source`` over ``feeds``, in FP32.

    Each float tensor gets an ``Abs -> ReduceMax`` probe exposed as a scalar output, so memory stays that of
    one ordinary run (exposing the tensors themselves would hold every activation of a large graph at once).
    External data is read from beside ``source``; nothing is written.
    """
    onnx = require("onnx", ONNX_PIP)
    ort = require("onnxruntime", "onnxruntime")
    model = onnx.load(str(source), load_external_data=False)
    floats = _float_tensors(model)
    probes = []
    for node in list(model.graph.node):
        for name in node.output:
            if name in floats:
                probe = name + PROBE_SUFFIX
                model.graph.node.extend(
                    [
                        onnx.helper.make_node("Abs", [name], [probe + "_abs"]),
                        onnx.helper.make_node("ReduceMax", [probe + "_abs"], [probe], keepdims=0),
                    ]
                )
                model.graph.output.append(
                    onnx.helper.make_tensor_value_info(probe, onnx.TensorProto.FLOAT, [])
                )
                probes.append(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(source.parent)
    )
    try:
        with silenced_native_stderr():
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        ranges = dict.fromkeys(probes, 0.0)
        for feed in feeds:
            values = session.run([p + PROBE_SUFFIX for p in probes], feed)
            for name, value in zip(probes, values, strict=True):
                value = float(value)
                # NaN compares false: keep it, so a NaN tensor is treated as out of range
                ranges[name] = value if not value <= ranges[name] else ranges[name]
    except Exception as e:  # onnxruntime raises its own types
        raise BuildError(f"measuring activation ranges of {source.name} failed: {e}") from e
    return ranges


def convert_graph(
    graph: str,
    source: Path,
    target: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    large: bool = False,
    max_magnitude: float = SAFE_MAGNITUDE,
) -> Fp16Graph:
    """Write the FP16 version of ``source`` to ``target`` (float32 inputs and outputs; ``large`` graphs get
    their external data beside it as ``<target>.data``); ``feeds`` are real inputs to measure ranges on."""
    onnx = require("onnx", ONNX_PIP)
    float16 = require("onnxruntime.transformers.float16", ONNX_PIP)
    if graph not in FP16_GRAPHS:
        raise BuildError(f"graph {graph} is kept in FP32 whole (discrete decisions downstream)")
    if not feeds:
        raise BuildError(f"no feeds to measure the activation ranges of {source.name} on")
    ranges = activation_ranges(source, feeds)
    bare = onnx.load(str(source), load_external_data=False)
    try:  # on the graph without its weights: shape inference cannot take a proto over 2 GB
        model = onnx.shape_inference.infer_shapes(bare)
    except Exception as e:  # the checker raises its own types
        raise BuildError(f"ONNX shape inference of {source.name} failed: {e}") from e
    onnx.external_data_helper.load_external_data_for_model(model, str(source.parent))
    constants = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    by_op: dict[str, int] = {}
    by_range: dict[str, float] = {}
    blocked: list[str] = []  # nodes kept FP32 beyond the op types
    for index, node in enumerate(model.graph.node):
        if not node.name:  # the converter blocks nodes by name
            node.name = f"dfrt_node_{index}"
        computed_div = node.op_type == "Div" and node.input[1] not in constants
        if node.op_type in FP32_OPS or computed_div:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + 1
            blocked += [node.name] if computed_div else []
            continue
        largest = max((ranges.get(o, 0.0) for o in node.output), default=0.0)
        if not largest <= max_magnitude:  # NaN included
            by_range[node.name] = largest
            blocked.append(node.name)
    try:
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            disable_shape_infer=True,  # done above
            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
            node_block_list=blocked,
        )
    except Exception as e:  # the converter raises many types
        raise BuildError(f"FP16 conversion of {source.name} failed: {e}") from e
    # the converter appends the casts of graph inputs after their users when an input feeds a node directly
    # (SmolVLM's pixels -> Conv): ONNX and TensorRT want the nodes in topological order
    require("onnxruntime.transformers.onnx_model", ONNX_PIP).OnnxModel(converted).topological_sort()
    _save(onnx, converted, target, large)
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    heavy = [n.name for n in nodes if n.op_type in ("MatMul", "Gemm", "Conv")]
    top = sorted(ranges.items(), key=lambda item: item[1], reverse=True)[:5]
    return Fp16Graph(
        graph,
        len(nodes),
        by_op,
        by_range,
        max(ranges.values(), default=0.0),
        tuple(top),
        len(heavy),
        sum(name not in by_range for name in heavy),
    )


def _float_tensors(model: Any) -> set[str]:
    """Names of the float32 tensors that nodes produce (types from ONNX shape inference)."""
    onnx = require("onnx", ONNX_PIP)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # the checker raises its own types
        raise BuildError(f"ONNX shape inference failed: {e}") from e
    typed = [*inferred.graph.value_info, *inferred.graph.output]
    floats = {v.name for v in typed if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    produced = {o for n in model.graph.node for o in n.output}
    return floats & produced


def _save(onnx: Any, model: Any, target: Path, large: bool) -> None:
    try:
        if large:
            onnx.save_model(
                model,
                str(target),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=f"{target.name}.data",
            )
        else:
            onnx.save_model(model, str(target))
    except Exception as e:
        raise BuildError(f"cannot write {target}: {e}") from e
