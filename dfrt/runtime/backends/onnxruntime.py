"""onnxruntime backend: the embedded default (CPU; CUDA/TensorRT providers with onnxruntime-gpu).

The graph is untrusted (it comes from a bundle): its real inputs and outputs must be what the contract says
(names, element types, ranks, fixed sizes) before it ever runs, feeds are checked against the contract
(token ids within the vocabulary included), and onnxruntime's own log lines stay off stderr unless ``-v``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dfrt._optional import require
from dfrt.contracts import GraphSpec, TensorSpec
from dfrt.errors import BackendError, ConfigError, ContractError
from dfrt.manifest import MAX_GRAPH_BYTES
from dfrt.runtime.native_log import silenced_native_stderr

log = logging.getLogger(__name__)

# onnxruntime's element type names for the numpy dtypes a contract may name
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OnnxRuntimeGraph:
    """One ONNX graph in an ``InferenceSession``; feeds are checked against the graph contract first."""

    def __init__(
        self, path: Path, spec: GraphSpec, providers: list[str] | None = None, threads: int = 0
    ) -> None:
        ort = require("onnxruntime", "onnxruntime")
        self.spec = spec
        options = ort.SessionOptions()
        # nothing of onnxruntime's own on stderr unless -v: its errors reach the user as dfrt's one line (the
        # exception carries the message), and a run never redirects fd 2 (other threads may be writing there)
        options.log_severity_level = 0 if log.isEnabledFor(logging.DEBUG) else 4
        options.intra_op_num_threads = threads
        # no busy-waiting after a run: llama.cpp runs next on the same cores (ORT spins by default)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ConfigError(f"{path}: unreadable ({e.strerror or e})") from e
        if size > MAX_GRAPH_BYTES:
            raise ConfigError(f"{path}: {size} bytes, over the {MAX_GRAPH_BYTES}-byte cap of an ONNX graph")
        try:
            with silenced_native_stderr():
                self.session = ort.InferenceSession(
                    str(path), options, providers=providers or ["CPUExecutionProvider"]
                )
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(
                f"{path.name}: onnxruntime cannot load graph {spec.name}: {_one_line(e)}"
            ) from e
        self.provider: str = self.session.get_providers()[0]  # where onnxruntime placed the graph
        check_io(path.name, spec, self.session.get_inputs(), self.session.get_outputs())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(inputs)
        try:
            outputs = self.session.run(self.spec.output_names, inputs)
        except Exception as e:
            raise BackendError(f"graph {self.spec.name} failed in onnxruntime: {_one_line(e)}") from e
        return dict(zip(self.spec.output_names, outputs, strict=True))

    def close(self) -> None:
        """Nothing to free ahead of the session's own lifetime (host memory only)."""


def check_io(where: str, spec: GraphSpec, inputs: list[Any], outputs: list[Any]) -> None:
    """The graph's inputs and outputs (onnxruntime ``NodeArg``: name, type, shape) against ``spec``: the same
    names, element types and ranks; a size the graph fixes must be the contract's (a fixed size, or an axis
    whose range is that one size); :class:`ContractError` otherwise."""
    for io, args, tensors in (("inputs", inputs, spec.inputs), ("outputs", outputs, spec.outputs)):
        names, declared = [a.name for a in args], [t.name for t in tensors]
        if sorted(names) != sorted(declared):
            raise ContractError(
                f"{where}: graph has {io} {names}, the contract of {spec.name} says {declared}"
            )
        by_name = {a.name: a for a in args}
        for tensor in tensors:
            _check_arg(where, spec, tensor, by_name[tensor.name])


def _check_arg(where: str, spec: GraphSpec, tensor: TensorSpec, arg: Any) -> None:
    dtype = ORT_TYPES.get(str(arg.type), str(arg.type))
    if dtype != tensor.dtype:
        raise ContractError(f"{where}: {tensor.name} is {dtype} in the graph, {tensor.dtype} in the contract")
    shape = arg.shape
    if shape is None:
        return  # rank unknown to onnxruntime: the feed checks still hold
    if len(shape) != len(tensor.shape):
        raise ContractError(
            f"{where}: {tensor.name} has rank {len(shape)} in the graph, {len(tensor.shape)} in the contract"
        )
    ranges = spec.axis_ranges
    for actual, declared in zip(shape, tensor.shape, strict=True):
        if not isinstance(actual, int) or actual < 0:
            continue  # dynamic in the graph: the contract's size or range applies
        low, _, high = (declared,) * 3 if isinstance(declared, int) else ranges[declared]
        if not low == high == actual:
            raise ContractError(
                f"{where}: {tensor.name} has shape {list(shape)} in the graph, the contract says "
                f"{list(tensor.shape)}"
            )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
