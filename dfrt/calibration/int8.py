"""Q/DQ INT8 graphs with onnxruntime's static quantizer (runs on a CPU; TensorRT builds the same ONNX).

Only MatMul, Gemm and Conv are quantized (per-channel weights, symmetric INT8 activations); LayerNorm,
Softmax, GELU and residual adds stay in float. The scoring head and the clustering graph are not quantized
at all: a score flip changes which frames are key, and the clustering makes discrete decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dfrt._optional import require
from dfrt.errors import BuildError
from dfrt.runtime.native_log import silenced_native_stderr

log = logging.getLogger(__name__)

QUANTIZED_GRAPHS = ("vision", "question", "fusion")
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]


def quantize_graph(
    source: Path, target: Path, feeds: list[dict[str, np.ndarray]], large: bool = False
) -> Path:
    """Write the Q/DQ INT8 version of ``source`` to ``target`` (in a staging directory: ``large`` graphs get
    their external data beside it as ``<target>.data``), calibrated on ``feeds``."""
    quantization = require("onnxruntime.quantization", "dfrt[export]")
    if not feeds:
        raise BuildError(f"no calibration feeds for {source.name}")

    class Reader(quantization.CalibrationDataReader):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with silenced_native_stderr():
        try:
            quantization.quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                activation_type=quantization.QuantType.QInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                use_external_data_format=large,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
        except Exception as e:  # the quantizer raises many types
            raise BuildError(f"INT8 quantization of {source.name} failed: {e}") from e
    return target
