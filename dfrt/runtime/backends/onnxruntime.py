"""onnxruntime backend: the embedded default (CPU; CUDA/TensorRT providers with onnxruntime-gpu)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dfrt._optional import require
from dfrt.contracts import GraphSpec
from dfrt.errors import BackendError, ContractError

log = logging.getLogger(__name__)


class OnnxRuntimeGraph:
    """One ONNX graph in an ``InferenceSession``; feeds are checked against the graph contract first."""

    def __init__(
        self, path: Path, spec: GraphSpec, providers: list[str] | None = None, threads: int = 0
    ) -> None:
        ort = require("onnxruntime", "onnxruntime")
        self.spec = spec
        options = ort.SessionOptions()
        options.log_severity_level = 0 if log.isEnabledFor(logging.DEBUG) else 3  # errors only, unless -v
        options.intra_op_num_threads = threads
        # no busy-waiting after a run: llama.cpp runs next on the same cores (ORT spins by default)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{path.name}: onnxruntime cannot load graph {spec.name}: {e}") from e
        self.provider: str = self.session.get_providers()[0]  # where onnxruntime placed the graph
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
            raise ContractError(
                f"{path.name}: graph has inputs {inputs} / outputs {outputs}, "
                f"the contract says {spec.input_names} / {spec.output_names}"
            )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(inputs)
        try:
            outputs = self.session.run(self.spec.output_names, inputs)
        except Exception as e:
            raise BackendError(f"graph {self.spec.name} failed in onnxruntime: {e}") from e
        return dict(zip(self.spec.output_names, outputs, strict=True))

    def close(self) -> None:
        """Nothing to free ahead of the session's own lifetime (host memory only)."""
