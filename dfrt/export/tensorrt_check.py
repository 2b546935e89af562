"""Static TensorRT readiness check: what TensorRT's ONNX parser would refuse, found without a GPU.

A real parse needs a CUDA device (no builder can be created without one), so this module checks an ONNX
graph against what onnx-tensorrt documents for a given TensorRT release: the ONNX checker and strict shape
inference pass, the opset and IR version are ones that parser reads, every operator has an importer, and the
constraints seen in real failures hold (constant ``axes`` and ``K``, ``TopK`` sorted with K < 3840, one
``LayerNormalization`` output, no float64, symmetric Q/DQ, external data inside the bundle). ``onnx`` is
imported inside the functions, so importing this module is cheap.

Targets (numbers used below; ``docs/tensorrt-check.md`` says where they come from):

======  =========  ======  ==================  ==================================================
target  JetPack    opsets  parser's ONNX (IR)  operators
======  =========  ======  ==================  ==================================================
10.3    6.x        9-20    1.16 (IR 10)        onnx-tensorrt 10.1 ``docs/operators.md`` "Y" rows
                                               (150 ops; the 10.2 and 10.3 changelogs add none)
10.15   -          9-24    1.19 (IR 12)        the 10.3 set + BlackmanWindow, HammingWindow,
                                               HannWindow (10.4), STFT (10.5), Attention (10.14),
                                               RMSNormalization, RotaryEmbedding, TensorScatter
======  =========  ======  ==================  ==================================================

The IR limit is a warning, not an error: the parser does not test ``ir_version``, but fields newer than
its ONNX are dropped. The opset range is the one onnx-tensorrt's ``operators.md`` states for the release.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dfrt._optional import require
from dfrt.errors import ConfigError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
DEFAULT_TARGET = "10.3"
TOPK_MAX_K = 3840  # TensorRT's TopK: K < 3840 ("`K` input must be less than 3840", operators.md 10.x)
DEFAULT_DOMAINS = ("", "ai.onnx")
ERROR_DOMAINS = {
    "com.microsoft": "an onnxruntime contrib op",
    "com.microsoft.nchwc": "an onnxruntime contrib op",
    "ai.onnx.ml": "an ONNX-ML op",
    "ai.onnx.training": "an ONNX training op",
    "ai.onnx.preview.training": "an ONNX training op",
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# onnx-tensorrt release/10.1 docs/operators.md, rows marked Y (= the importers registered in
# onnxOpImporters.cpp of that release); 10.2 and 10.3 add no operator.
_OPS_10_3 = _words(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler
    InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
    LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
    Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
    Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """
)
# operator -> the first TensorRT release whose parser imports it (onnx-tensorrt changelog, 10.4-10.15)
ADDED_AFTER_10_3 = {
    "BlackmanWindow": "10.4",
    "HammingWindow": "10.4",
    "HannWindow": "10.4",
    "STFT": "10.5",
    "Attention": "10.14",
    "RMSNormalization": "10.15",
    "RotaryEmbedding": "10.15",
    "TensorScatter": "10.15",
}
# Rows marked N in operators.md of 10.1 and 10.15 (10.15 still lacks all of these but the windows and STFT).
UNSUPPORTED = _words(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
    MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
    OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
    SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """
)
REDUCE_OPS = sorted(
    _words(
        "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum "
        "ReduceSumSquare"
    )
)


@dataclass(frozen=True)
class Target:
    """What one TensorRT release's ONNX parser reads."""

    version: str
    opsets: tuple[int, int]  # default-domain opsets, inclusive
    onnx: str  # the ONNX release the parser is built against
    ir_max: int  # that release's IR version
    ops: frozenset[str]
    # op -> (input index, what it is, severity when it is not an initializer or a Constant output, why)
    constant_inputs: Mapping[str, tuple[int, str, Severity, str]]


_NEEDS_CONSTANT = "needs an initializer or Constant (constant-fold it)"
_TOPK_K = f"caps K below {TOPK_MAX_K}, which only an initializer or Constant K proves"
_CONSTANT_10_3: dict[str, tuple[int, str, Severity, str]] = {
    **{op: (1, "axes", "error", _NEEDS_CONSTANT) for op in REDUCE_OPS},
    "Squeeze": (1, "axes", "error", _NEEDS_CONSTANT),  # computed axes from 10.7
    "Unsqueeze": (1, "axes", "error", _NEEDS_CONSTANT),
    "CumSum": (1, "axis", "error", _NEEDS_CONSTANT),  # computed axis from 10.8
    "Pad": (3, "axes", "error", _NEEDS_CONSTANT),  # tensor axes from 10.4
    "Slice": (3, "axes", "warning", "parses since 10.3; TensorRT 10.0-10.2 need an initializer"),
    "TopK": (1, "K", "error", _TOPK_K),
}
_CONSTANT_10_15: dict[str, tuple[int, str, Severity, str]] = {
    **{op: (1, "axes", "error", _NEEDS_CONSTANT) for op in REDUCE_OPS},
    "Squeeze": (1, "axes", "warning", "parses only if TensorRT can resolve it to a constant"),
    "Unsqueeze": (1, "axes", "warning", "parses only if TensorRT can resolve it to a constant"),
    "TopK": (1, "K", "error", _TOPK_K),
}
TARGETS: dict[str, Target] = {
    "10.3": Target("10.3", (9, 20), "1.16", 10, _OPS_10_3, _CONSTANT_10_3),
    "10.15": Target("10.15", (9, 24), "1.19", 12, _OPS_10_3 | frozenset(ADDED_AFTER_10_3), _CONSTANT_10_15),
}
# TensorProto.DataType -> name, for the types TensorRT has no equivalent of
BAD_DTYPES = {4: "uint16", 5: "int16", 8: "string", 11: "float64", 12: "uint32", 13: "uint64"}
BAD_DTYPES.update({14: "complex64", 15: "complex128"})
DOUBLE = 11


@dataclass(frozen=True)
class Finding:
    """One thing TensorRT's parser would refuse (error) or might (warning)."""

    graph: str
    node: str  # "" for the model as a whole
    op: str  # "" for the model as a whole
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.graph}/{self.node} ({self.op})" if self.node or self.op else self.graph
        return f"{where}: {self.message}" + (" [warning]" if self.severity == "warning" else "")

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CheckReport:
    """The findings for every ONNX file of a bundle."""

    bundle: Path
    target: str
    files: tuple[tuple[str, str], ...]  # (graph label, file name) in the order checked
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        e, w = len(self.errors), len(self.warnings)
        return (
            f"TensorRT {self.target}: {len(self.files)} ONNX files checked, "
            f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "tensorrt": self.target,
            "ok": self.ok,
            "files": [{"graph": g, "file": f} for g, f in self.files],
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }


def get_target(version: str) -> Target:
    """The target for ``10.3``, ``10.3.0.26``, ``10.15``, ...; unknown releases are a :class:`ConfigError`."""
    key = ".".join(str(version).strip().split(".")[:2])
    if key not in TARGETS:
        raise ConfigError(f"no TensorRT parser table for {version!r}; known: {', '.join(TARGETS)}")
    return TARGETS[key]


def check_model(
    model: str | Path | onnx.ModelProto, graph: str = "model", target: str = DEFAULT_TARGET
) -> list[Finding]:
    """Everything the ``target`` TensorRT's ONNX parser would refuse in one model, as findings.

    Given a path, external data must lie in the model's directory (and is not loaded); given a
    ``ModelProto``, external data cannot be checked and is reported as a warning.
    """
    spec = get_target(target)
    if isinstance(model, str | Path):
        return _check(Path(model), graph, spec, None)
    return _check(model, graph, spec, None)


def check_bundle(bundle_dir: str | Path, target: str = DEFAULT_TARGET, verify: bool = True) -> CheckReport:
    """Check every ONNX file the bundle's manifest lists: each graph and its precision variants."""
    from dfrt.runtime.bundle import Bundle

    spec = get_target(target)
    bundle = Bundle.open(bundle_dir, verify=verify)
    listed = frozenset(bundle.manifest.files)
    files: list[tuple[str, str]] = []
    findings: list[Finding] = []
    for name, entry in bundle.manifest.graphs.items():
        for precision, file in [("fp32", entry.file), *sorted(entry.variants.items())]:
            label = name if precision == "fp32" else f"{name}[{precision}]"
            files.append((label, file))
            findings += _check(bundle.path(file), label, spec, listed)
    return CheckReport(bundle.root, spec.version, tuple(files), tuple(findings))


def _check(
    model: Path | onnx.ModelProto, graph: str, spec: Target, listed: frozenset[str] | None
) -> list[Finding]:
    onnx = require("onnx", "dfrt[export]")
    path, proto = (model, None) if isinstance(model, Path) else (None, model)
    if path is not None:
        try:
            proto = onnx.load(str(path), load_external_data=False)  # weights stay on disk
        except Exception as e:  # protobuf's DecodeError and OSError: a file that is not ONNX
            return [Finding(graph, "", "", f"{path.name}: not a readable ONNX model ({e})")]
    findings = _versions(proto, graph, spec)
    external = _external_data(proto, graph, path, listed)
    findings += external
    has_external = any(t.data_location == 1 for t in proto.graph.initializer)
    if path is not None and not external:
        findings += _checker(onnx, str(path), graph)  # also reads > 2 GB models, data beside the file
    else:  # never let the checker resolve data against the working directory or outside the bundle
        findings += _checker(onnx, _without_external_data(proto) if has_external else proto, graph)
    if proto.functions:  # TensorRT imports model-local functions by inlining them: check their bodies
        try:
            proto = require("onnx.inliner", "dfrt[export]").inline_local_functions(proto)
        except Exception as e:  # onnx's inliner raises plain RuntimeError on bad functions
            findings.append(Finding(graph, "", "", f"local functions cannot be inlined: {e}"))
    inferred = proto
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        findings.append(Finding(graph, "", "", f"ONNX shape inference failed: {_first_line(e)}"))
    ranks = _ranks(inferred.graph)
    for node, label, constants in _nodes(proto.graph, frozenset(), ""):
        findings += _node(onnx, node, label, constants, graph, spec, ranks)
    findings += _dtypes(inferred.graph, graph, "")
    unique = list(dict.fromkeys(findings))
    log.debug("%s: %d findings for TensorRT %s", graph, len(unique), spec.version)
    return unique


def _versions(proto: onnx.ModelProto, graph: str, spec: Target) -> list[Finding]:
    findings = []
    low, high = spec.opsets
    opsets = [o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS]
    if not opsets:
        findings.append(Finding(graph, "", "", "no default-domain (ai.onnx) opset import"))
    for opset in opsets:
        if not low <= opset <= high:
            findings.append(
                Finding(
                    graph,
                    "",
                    "",
                    f"opset {opset}: TensorRT {spec.version}'s parser reads opsets {low}-{high}",
                )
            )
    if proto.ir_version < 3:
        findings.append(
            Finding(graph, "", "", f"IR version {proto.ir_version}: too old for TensorRT's parser")
        )
    elif proto.ir_version > spec.ir_max:
        findings.append(
            Finding(
                graph,
                "",
                "",
                f"IR version {proto.ir_version} is newer than ONNX {spec.onnx} (IR {spec.ir_max}) that "
                f"TensorRT {spec.version}'s parser is built with: fields it does not know are dropped; "
                "pin ir_version",
                "warning",
            )
        )
    return findings


def _checker(onnx: Any, model: Any, graph: str) -> list[Finding]:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        return [Finding(graph, "", "", f"ONNX checker: {_first_line(e)}")]
    return []


def _without_external_data(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose external initializers are graph inputs of the same type, for the checker alone."""
    onnx = require("onnx", "dfrt[export]")
    copy = type(proto)()
    copy.CopyFrom(proto)
    kept = [t for t in copy.graph.initializer if t.data_location != 1]
    moved = [t for t in copy.graph.initializer if t.data_location == 1]
    known = {i.name for i in copy.graph.input}
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    copy.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in moved
        if t.name not in known
    )
    return copy


def _external_data(
    proto: onnx.ModelProto, graph: str, path: Path | None, listed: frozenset[str] | None
) -> list[Finding]:
    """External data must be a plain relative name inside the model's directory, present and long enough."""
    findings = []
    for tensor in _tensors(proto.graph):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        info = {e.key: e.value for e in tensor.external_data}
        where = info.get("location", "")
        if path is None:
            findings.append(
                Finding(
                    graph,
                    "",
                    "",
                    f"{tensor.name}: external data {where!r} not checked (no model path)",
                    "warning",
                )
            )
            continue
        location = Path(where)
        if not where or location.is_absolute() or ".." in location.parts or "\\" in where:
            findings.append(
                Finding(graph, "", "", f"{tensor.name}: external data {where!r} leaves the bundle")
            )
            continue
        file = path.parent / location
        if not file.is_file():
            findings.append(Finding(graph, "", "", f"{tensor.name}: external data file {where} is missing"))
            continue
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > file.stat().st_size:
            findings.append(
                Finding(
                    graph, "", "", f"{tensor.name}: external data {where} ends at byte {end}, past its end"
                )
            )
        if listed is not None and where not in listed:
            findings.append(
                Finding(
                    graph, "", "", f"{tensor.name}: external data {where} is not listed (hashed) in dfrt.json"
                )
            )
    return findings


def _nodes(graph: Any, outer: frozenset[str], prefix: str) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """Every node, subgraphs included, with its label and the constants (name -> TensorProto) in its scope."""
    inputs = {i.name for i in graph.input}
    constants: dict[str, Any] = {name: None for name in outer - inputs}
    constants.update({t.name: t for t in graph.initializer if t.name not in inputs})
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            constants[node.output[0]] = _constant_value(node)
    for index, node in enumerate(graph.node):
        label = prefix + (node.name or f"{node.op_type}#{index}")
        yield node, label, constants
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == 5 else list(attr.graphs) if attr.type == 10 else []:
                yield from _nodes(sub, frozenset(constants), f"{label}/{attr.name}/")


def _constant_value(node: Any) -> Any:
    """A Constant node's value as a TensorProto (``value``), a Python scalar/list, or None."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name == "value_int":
            return attr.i
        if attr.name == "value_ints":
            return list(attr.ints)
    return None


def _node(
    onnx: Any,
    node: Any,
    label: str,
    constants: dict[str, Any],
    graph: str,
    spec: Target,
    ranks: dict[str, int],
) -> list[Finding]:
    op = node.op_type

    def finding(message: str, severity: Severity = "error") -> Finding:
        return Finding(graph, label, op, message, severity)

    if node.domain not in DEFAULT_DOMAINS:
        what = ERROR_DOMAINS.get(node.domain)
        if what:
            return [finding(f"{what} (domain {node.domain}): TensorRT's parser has no importer for it")]
        return [
            finding(
                f"custom domain {node.domain!r}: parses only as a TensorRT plugin named {op} "
                "registered at build time",
                "warning",
            )
        ]
    if op not in spec.ops:
        if op in ADDED_AFTER_10_3:
            reason = f"needs TensorRT >= {ADDED_AFTER_10_3[op]}"
        elif op in UNSUPPORTED:
            reason = "unsupported by TensorRT's ONNX parser"
        else:
            reason = "not in its operator table"
        return [finding(f"TensorRT {spec.version} cannot import {op}: {reason}")]
    findings = []
    outputs = [o for o in node.output if o]
    inputs = list(node.input)
    if op in spec.constant_inputs:
        index, what, severity, why = spec.constant_inputs[op]
        if len(inputs) > index and inputs[index] and inputs[index] not in constants:
            message = f"{what} ({inputs[index]}) is computed at run time: TensorRT {spec.version} {why}"
            findings.append(finding(message, severity))
    if op == "TopK":
        findings += [finding(m) for m in _topk(onnx, node, inputs, constants)]
    elif op == "LayerNormalization" and len(outputs) > 1:
        findings.append(
            finding(f"{len(outputs)} outputs: TensorRT imports only the first (Y); drop Mean/InvStdDev")
        )
    elif op == "MaxPool" and len(outputs) > 1:
        findings.append(finding("the Indices output is unsupported by TensorRT"))
    elif op in ("QuantizeLinear", "DequantizeLinear") and len(inputs) > 2 and inputs[2]:
        findings += [finding(m, s) for m, s in _zero_point(onnx, inputs[2], constants)]
    elif op == "Attention":
        findings += [finding(m) for m in _attention(node, inputs, outputs, ranks)]
    elif op == "Cast" and _attr(node, "to") == DOUBLE:
        findings.append(finding("casts to float64, which TensorRT does not have"))
    elif op == "Constant":
        for attr in node.attribute:
            if attr.name in ("sparse_value", "value_string", "value_strings"):
                findings.append(finding(f"Constant with {attr.name} is unsupported by TensorRT"))
            elif attr.name == "value" and attr.t.data_type in BAD_DTYPES:
                findings.append(finding(f"a {BAD_DTYPES[attr.t.data_type]} constant: no TensorRT type"))
    return findings


def _topk(onnx: Any, node: Any, inputs: list[str], constants: dict[str, Any]) -> list[str]:
    messages = []
    if _attr(node, "sorted", 1) != 1:
        messages.append("sorted=0: TensorRT's TopK always sorts (needs sorted=1)")
    k: Any = _attr(node, "k") if len(inputs) < 2 else None  # opset < 10: K is an attribute
    if len(inputs) >= 2 and inputs[1] in constants:
        k = _values(onnx, constants[inputs[1]])
        k = k[0] if k and len(k) == 1 else None
    if k is not None and int(k) >= TOPK_MAX_K:
        messages.append(f"K = {int(k)}: TensorRT's TopK needs K < {TOPK_MAX_K}")
    return messages


def _zero_point(onnx: Any, name: str, constants: dict[str, Any]) -> list[tuple[str, Severity]]:
    if name not in constants:
        return [(f"zero point {name} is computed at run time: TensorRT needs a constant 0", "warning")]
    values = _values(onnx, constants[name])
    if values is not None and any(v != 0 for v in values):
        return [(f"zero point {name} is not 0: TensorRT takes symmetric Q/DQ only", "error")]
    return []


def _attention(node: Any, inputs: list[str], outputs: list[str], ranks: dict[str, int]) -> list[str]:
    messages = []
    names = ("past_key", "past_value", "nonpad_kv_seqlen")
    messages += [
        f"input {names[i - 4]} is unsupported by TensorRT" for i in (4, 5, 6) if len(inputs) > i and inputs[i]
    ]
    if len(outputs) > 1:
        messages.append("only the first output is supported (no present_key/value or qk_matmul_output)")
    for name in ("softcap", "qk_matmul_output_mode"):
        if _attr(node, name, 0):
            messages.append(f"attribute {name} is unsupported by TensorRT")
    for i, what in enumerate(("Q", "K", "V")):
        rank = ranks.get(inputs[i]) if len(inputs) > i else None
        if rank is not None and rank != 4:
            messages.append(f"{what} is {rank}-D: TensorRT's Attention needs 4-D Q, K and V")
    return messages


def _dtypes(graph: Any, label: str, prefix: str) -> list[Finding]:
    """Tensors of a type TensorRT lacks: initializers (named by their consumers), inputs, outputs, and
    intermediates from shape inference (named by their producers; Cast and Constant report themselves)."""
    findings = []
    producers, consumers = {}, {}
    for index, node in enumerate(graph.node):
        where = (prefix + (node.name or f"{node.op_type}#{index}"), node.op_type)
        producers.update({out: where for out in node.output})
        for name in node.input:
            consumers.setdefault(name, []).append(where)
    for tensor in list(graph.initializer) + [s.values for s in graph.sparse_initializer]:
        if tensor.data_type in BAD_DTYPES:
            message = (
                f"initializer {tensor.name} is {BAD_DTYPES[tensor.data_type]}: TensorRT has no such type"
            )
            for node, op in consumers.get(tensor.name, [("", "")]):
                findings.append(Finding(label, node, op, message))
    for kind, infos in (("input", graph.input), ("output", graph.output), ("tensor", graph.value_info)):
        for info in infos:
            elem = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
            node, op = producers.get(info.name, ("", ""))
            if elem in BAD_DTYPES and (kind != "tensor" or op not in ("Cast", "Constant")):
                message = f"{kind} {info.name} is {BAD_DTYPES[elem]}: TensorRT has no such type"
                findings.append(Finding(label, node, op, message))
    for index, node in enumerate(graph.node):
        node_label = prefix + (node.name or f"{node.op_type}#{index}")
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == 5 else list(attr.graphs) if attr.type == 10 else []:
                findings += _dtypes(sub, label, f"{node_label}/{attr.name}/")
    return findings


def _tensors(graph: Any) -> Iterator[Any]:
    """Initializers and Constant values of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == 4:  # TENSOR
                yield attr.t
            for sub in [attr.g] if attr.type == 5 else list(attr.graphs) if attr.type == 10 else []:
                yield from _tensors(sub)


def _ranks(graph: Any) -> dict[str, int]:
    ranks = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    return ranks


def _values(onnx: Any, value: Any) -> list[float] | None:
    """The numbers of a constant (TensorProto or Constant scalar/list); None when unknown or not loaded."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list):
        return value
    if value.data_location == 1:  # external: not loaded
        return None
    try:
        return [float(v) for v in onnx.numpy_helper.to_array(value).reshape(-1)]
    except (ValueError, TypeError):
        return None


def _attr(node: Any, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return attr.i if attr.type == 2 else attr.f if attr.type == 1 else None
    return default


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
