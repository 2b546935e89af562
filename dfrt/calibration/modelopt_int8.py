"""Q/DQ INT8 graphs with NVIDIA Model Optimizer (``nvidia-modelopt``'s ONNX quantizer, calibrated on a CPU).

The same contract as :func:`dfrt.calibration.int8.quantize_graph` (same graphs, same calibration feeds, the
same accuracy gate afterwards); what differs is where the Q/DQ pairs go. Model Optimizer places them the
way TensorRT fuses them: MatMul/Gemm/Conv inputs, plus the Add, Mul, pooling and normalisation nodes that
sit in fusible partitions, skipping GEMV-shaped and small MatMuls; activations per tensor, weights per
channel, both symmetric (``max`` calibration = onnxruntime's MinMax). The graph stays FP32 around the Q/DQ
pairs (``high_precision_dtype="fp32"``) so that onnxruntime on a CPU runs it and the gate compares like
with like; its opset becomes 19 (Model Optimizer's minimum for INT8).

``nvidia-modelopt`` is optional (the ``modelopt`` extra, installed without its ``[onnx]`` extra, which would
pull CUDA wheels); ``--quantizer auto`` uses it when it imports, else onnxruntime's quantizer.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from dfrt.errors import BuildError, ConfigError
from dfrt.runtime.native_log import silenced_native_stderr, verbose

log = logging.getLogger(__name__)

QUANTIZERS = ("auto", "modelopt", "onnxruntime")
CALIBRATION_METHOD = "max"  # symmetric max per tensor: the same statistics as onnxruntime's MinMax
INSTALL = "pip install -e '.[modelopt]' (after torch==2.13.0)"


@cache
def _modelopt() -> tuple[ModuleType | None, str]:
    """Model Optimizer's ONNX quantization module and its version, or None and why it does not import."""
    try:
        with contextlib.redirect_stdout(sys.stderr), silenced_native_stderr():
            module = importlib.import_module("modelopt.onnx.quantization")
        if not verbose():  # it configures its own logger (INFO, to stdout) on import
            logging.getLogger("modelopt.onnx").setLevel(logging.CRITICAL)
        from importlib.metadata import version

        return module, version("nvidia-modelopt")
    except Exception as e:  # ImportError, or whatever a half-installed dependency raises
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def modelopt_available() -> bool:
    return _modelopt()[0] is not None


def resolve_quantizer(choice: str) -> str:
    """``modelopt`` or ``onnxruntime`` for ``--quantizer choice`` (auto: Model Optimizer if it imports)."""
    if choice not in QUANTIZERS:
        raise ConfigError(f"unknown quantizer {choice!r}: choose {', '.join(QUANTIZERS)}")
    if choice == "onnxruntime":
        return choice
    module, why = _modelopt()
    if module is not None:
        return "modelopt"
    if choice == "modelopt":
        raise ConfigError(f"--quantizer modelopt: nvidia-modelopt does not import here ({why}): {INSTALL}")
    log.info("nvidia-modelopt does not import (%s): INT8 through onnxruntime's quantizer", why)
    return "onnxruntime"


def describe(quantizer: str) -> str:
    """``nvidia-modelopt 0.47.0`` or ``onnxruntime 1.32.0``: what the build report names."""
    if quantizer == "modelopt":
        return f"nvidia-modelopt {_modelopt()[1]}"
    from importlib.metadata import version

    return f"onnxruntime {version('onnxruntime')}"


class _Reader:
    """The calibration feeds as Model Optimizer reads them (it also asks for the first feed, and rewinds)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def get_first(self) -> dict[str, np.ndarray]:
        return self._feeds[0]

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


@contextlib.contextmanager
def _onnxruntime_restored() -> Iterator[None]:
    """Model Optimizer patches onnxruntime's quantizer classes and registries process-wide; put them back."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer, registry

    patched = [
        calibrate,
        calibrate.CalibraterBase,
        calibrate.MinMaxCalibrater,
        calibrate.HistogramCalibrater,
        calibrate.HistogramCollector,
        qdq_quantizer.QDQQuantizer,
        base_quantizer.BaseQuantizer,
    ]
    saved = [(obj, dict(vars(obj))) for obj in patched]
    registries = [(r, dict(r)) for r in (registry.QDQRegistry, registry.QLinearOpsRegistry)]
    try:
        yield
    finally:
        for obj, attributes in saved:
            for name in set(vars(obj)) - set(attributes):
                delattr(obj, name)
            for name, value in attributes.items():
                if vars(obj).get(name) is not value:
                    setattr(obj, name, value)
        for table, entries in registries:
            table.clear()
            table.update(entries)


def _external_files(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return sorted(
        {
            entry.value
            for tensor in onnx.external_data_helper._get_all_tensors(model)
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )


def quantize_graph(
    source: Path,
    target: Path,
    feeds: list[dict[str, np.ndarray]],
    large: bool = False,
    *,
    op_types: list[str] | None = None,
    calibration_method: str = CALIBRATION_METHOD,
) -> Path:
    """Write the Q/DQ INT8 version of ``source`` to ``target`` with Model Optimizer (``large`` graphs get
    their external data beside it as ``<target>.data``), calibrated on ``feeds`` on the CPU.

    ``op_types``: quantize every node of these types (None: Model Optimizer's own TensorRT-minded placement).
    Model Optimizer rewrites its input in place and leaves intermediate files beside it, so it works on a
    copy in a private folder next to ``target``.
    """
    module, why = _modelopt()
    if module is None:
        raise ConfigError(f"nvidia-modelopt does not import here ({why}): {INSTALL}")
    if not feeds:
        raise BuildError(f"no calibration feeds for {source.name}")
    import onnx

    work = Path(tempfile.mkdtemp(prefix=".modelopt-", dir=target.parent))
    try:
        copy = work / source.name
        shutil.copyfile(source, copy)
        for name in _external_files(source) if large else []:
            shutil.copyfile(source.parent / name, work / name)
        output = work / "quantized.onnx"
        level = "INFO" if verbose() else "CRITICAL"  # it logs a NVML error on machines without a GPU
        try:
            with (
                contextlib.redirect_stdout(sys.stderr),  # its log handler writes to stdout (results' stream)
                silenced_native_stderr(),
                _onnxruntime_restored(),
            ):
                module.quantize(
                    str(copy),
                    quantize_mode="int8",
                    calibration_data_reader=_Reader(feeds),
                    calibration_method=calibration_method,
                    calibration_eps=["cpu"],
                    op_types_to_quantize=list(op_types) if op_types else None,
                    high_precision_dtype="fp32",
                    use_external_data_format=large,
                    output_path=str(output),
                    log_level=level,
                )
        except Exception as e:  # it raises many types, assertions included
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BuildError(
                f"INT8 quantization of {source.name} with nvidia-modelopt failed: {message}"
            ) from e
        if not output.is_file():
            raise BuildError(f"INT8 quantization of {source.name} with nvidia-modelopt wrote no graph")
        model = onnx.load(str(output), load_external_data=False)
        data = target.name + ".data"  # dfrt's name for a graph's external data (Model Optimizer: "_data")
        moved: set[str] = set()
        for tensor in onnx.external_data_helper._get_all_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            for entry in tensor.external_data:
                if entry.key == "location":
                    moved.add(entry.value)
                    entry.value = data
        if len(moved) > 1:
            raise BuildError(f"nvidia-modelopt split {source.name}'s weights over {len(moved)} files")
        if moved:
            shutil.move(str(work / moved.pop()), target.parent / data)
        onnx.save_model(model, str(target))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
