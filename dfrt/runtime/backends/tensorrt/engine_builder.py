"""Build TensorRT engines from a bundle's ONNX graphs (runs on the target GPU; imports tensorrt lazily).

TensorRT 10.x (10.3 on JetPack 6 included) builds weakly typed networks with ``BuilderFlag.FP16`` /
``BuilderFlag.INT8``; where weak typing is gone (TensorRT 11) networks are strongly typed and take their
precision from the ONNX (the Q/DQ INT8 graphs work; FP16 needs FP16 graphs, which dfrt does not write yet).
One optimisation profile per graph comes from its contract; the timing cache persists per TensorRT version.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dfrt._optional import require
from dfrt.contracts import GraphSpec
from dfrt.errors import BuildError
from dfrt.fileio import atomic_write_bytes, file_lock
from dfrt.runtime.backends.tensorrt.engine_cache import Target

log = logging.getLogger(__name__)

TRT_PIP = "dfrt[trt]"
FULL_PRECISION_GRAPHS = ("scoring", "encoding")  # discrete decisions downstream: built in FP32


def tensorrt() -> Any:
    return require("tensorrt", TRT_PIP)


def current_target() -> Target:
    """The GPU this process would run engines on, and the TensorRT version."""
    from dfrt.runtime.backends.tensorrt.cuda_memory import device_memory

    name, capability = device_memory().device()
    return Target(name, capability, str(tensorrt().__version__))


def graph_precision(graph: str, requested: str, has_int8_graph: bool) -> str:
    """What a graph is built in: scoring and clustering in FP32; INT8 only where a Q/DQ graph exists."""
    if graph in FULL_PRECISION_GRAPHS or requested == "fp32":
        return "fp32"
    if requested == "int8" and has_int8_graph:
        return "int8"
    return "fp16"


def build_engine(
    onnx_path: Path, spec: GraphSpec, precision: str, workspace_mb: int, timing_cache: Path
) -> bytes:
    """Serialized engine (plan) for one graph; errors name the graph and TensorRT's complaint."""
    trt = tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_typing = hasattr(trt.BuilderFlag, "FP16")
    flags = 0 if weak_typing else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if not weak_typing and precision == "fp16":
        raise BuildError(
            f"TensorRT {trt.__version__} builds strongly typed networks only: FP16 needs FP16 ONNX "
            "graphs, which this dfrt does not write yet; use --precision int8 or TensorRT 10"
        )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if weak_typing and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if weak_typing and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default: really full precision here
    profile = builder.create_optimization_profile()
    ranges = spec.axis_ranges
    for tensor in spec.inputs:
        shapes = [tuple(d if isinstance(d, int) else ranges[d][i] for d in tensor.shape) for i in range(3)]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    with file_lock(timing_cache):
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("timing cache %s does not fit this GPU; starting a new one", timing_cache.name)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BuildError(f"TensorRT could not build an engine for graph {spec.name} ({precision})")
        merged = config.get_timing_cache()
        if merged is not None:
            atomic_write_bytes(timing_cache, bytes(merged.serialize()))
    return bytes(plan)
