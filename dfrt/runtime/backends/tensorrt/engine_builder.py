"""Build TensorRT engines from a bundle's ONNX graphs (runs on the target GPU; imports tensorrt lazily).

Precision follows the bundle: a graph runs at the requested precision only where ``dfrt build`` committed
that graph's variant (it passed the accuracy gate), else in FP32; scoring and clustering are always FP32.

Typing. Strongly typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, in every TensorRT dfrt
supports: 10.x has it, 11.x is always strongly typed) take their precision from the ONNX, so an FP16 engine
is built from the bundle's FP16 graph (``vision.fp16.onnx``) and an INT8 one from its Q/DQ graph: the engine
computes what the gate measured in onnxruntime. Weak typing (``BuilderFlag.FP16``, deprecated in 10.12 and
removed in 11) is used only where strong typing is missing, or on request (``DFRT_TRT_TYPING=weak``, 10.x
only, e.g. to compare on JetPack 6's TensorRT 10.3): the FP32 graph with the FP16 flag, which lets TensorRT
pick FP16 anywhere, LayerNorm and softmax included, so it is set only for a graph whose FP16 variant passed
the gate. Weak engines are cached under their own TensorRT label (``10.3.0+weak-typing``).
One optimisation profile per graph comes from its contract; the timing cache persists per TensorRT version.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfrt._optional import require
from dfrt.contracts import GraphSpec
from dfrt.errors import BuildError, ConfigError
from dfrt.fileio import atomic_write_bytes, file_lock
from dfrt.runtime.backends.tensorrt.engine_cache import Target

log = logging.getLogger(__name__)

TRT_PIP = "dfrt[trt]"
FULL_PRECISION_GRAPHS = ("scoring", "encoding")  # discrete decisions downstream: built in FP32
TYPING_ENV = "DFRT_TRT_TYPING"  # "strong" or "weak"; unset: strong wherever TensorRT has it
WEAK_SUFFIX = "+weak-typing"  # appended to the TensorRT version of weakly typed engines (cache key, meta)


def tensorrt() -> Any:
    return require("tensorrt", TRT_PIP)


def network_typing(trt: Any) -> str:
    """``strong`` or ``weak``: strong where this TensorRT has it, unless ``DFRT_TRT_TYPING=weak`` asks for
    the FP16 builder flag (only where it still exists, TensorRT 10.x)."""
    major = int(str(trt.__version__).split(".")[0])
    strong = major >= 11 or hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    weak = hasattr(trt.BuilderFlag, "FP16")
    wanted = os.environ.get(TYPING_ENV, "").strip().lower()
    if wanted not in ("", "strong", "weak"):
        raise ConfigError(f"{TYPING_ENV}={wanted!r}: choose strong or weak")
    if wanted == "weak" and not weak:
        raise ConfigError(f"{TYPING_ENV}=weak: TensorRT {trt.__version__} has no weak typing (removed in 11)")
    if wanted == "strong" and not strong:
        raise ConfigError(f"{TYPING_ENV}=strong: TensorRT {trt.__version__} has no strongly typed networks")
    if wanted:
        return wanted
    return "strong" if strong else "weak"


def current_target() -> Target:
    """The GPU this process would run engines on, and the TensorRT version (plus how it types networks)."""
    from dfrt.runtime.backends.tensorrt.cuda_memory import device_memory

    memory = device_memory()
    try:
        name, capability = memory.device()
    finally:
        memory.close()
    trt = tensorrt()
    suffix = WEAK_SUFFIX if network_typing(trt) == "weak" else ""
    return Target(name, capability, f"{trt.__version__}{suffix}")


def graph_precision(graph: str, requested: str, variants: Collection[str]) -> str:
    """What a graph's engine computes in: ``requested`` where the bundle has that graph's variant (it
    passed the gate), else FP32; scoring and clustering always FP32. The same on every TensorRT."""
    if graph in FULL_PRECISION_GRAPHS or requested == "fp32" or requested not in variants:
        return "fp32"
    return requested


@dataclass(frozen=True)
class BuildRecipe:
    """How one engine is built: from which of the graph's ONNX files, typed how, with which flags."""

    precision: str  # what the engine computes in (the cache's precision)
    onnx_precision: str  # which ONNX file: fp32, or the fp16 / int8 variant
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag names to set (weak typing only)

    def line(self) -> str:
        typing = "strongly typed" if self.strongly_typed else "weakly typed"
        flags = f", flags {'+'.join(self.flags)}" if self.flags else ""
        return f"{self.precision} engine from the {self.onnx_precision} ONNX, {typing}{flags}"


def build_recipe(precision: str, variants: Collection[str], typing: str) -> BuildRecipe:
    """The recipe for an engine at ``precision`` (from :func:`graph_precision`) on ``typing``.

    Strong: the ONNX of that precision, no precision flags (TensorRT refuses them on strongly typed
    networks). Weak: FP16 from the FP32 graph with ``FP16``; INT8 from the Q/DQ graph with ``INT8``, plus
    ``FP16`` only when the graph's FP16 variant passed the gate too (else its float layers stay FP32).
    """
    if typing not in ("strong", "weak"):
        raise ValueError(f"typing must be strong or weak, not {typing!r}")
    if precision == "fp32":
        return BuildRecipe("fp32", "fp32", typing == "strong", ())
    if typing == "strong":
        return BuildRecipe(precision, precision, True, ())
    if precision == "fp16":
        return BuildRecipe("fp16", "fp32", False, ("FP16",))
    return BuildRecipe("int8", "int8", False, ("INT8", "FP16") if "fp16" in variants else ("INT8",))


def build_engine(
    onnx_path: Path, spec: GraphSpec, recipe: BuildRecipe, workspace_mb: int, timing_cache: Path
) -> bytes:
    """Serialized engine (plan) for one graph; errors name the graph and TensorRT's complaint."""
    trt = tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if recipe.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # ignored (always on) in 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in recipe.flags:
        if not hasattr(trt.BuilderFlag, flag):
            raise BuildError(f"TensorRT {trt.__version__} has no BuilderFlag.{flag}: {recipe.line()}")
        config.set_flag(getattr(trt.BuilderFlag, flag))  # INT8: scales come from the Q/DQ nodes
    if recipe.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
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
            raise BuildError(f"TensorRT could not build graph {spec.name}: {recipe.line()}")
        merged = config.get_timing_cache()
        if merged is not None:
            atomic_write_bytes(timing_cache, bytes(merged.serialize()))
    return bytes(plan)
