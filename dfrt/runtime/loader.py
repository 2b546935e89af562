"""One place that chooses how a bundle's graphs run: backend, precision and execution providers.

``auto`` is TensorRT when tensorrt imports and a CUDA device answers, else onnxruntime. On onnxruntime the
providers are the best the installed package offers (``onnxruntime-gpu``: CUDA; its TensorRT provider only
when asked, ``DFRT_ORT_TENSORRT=1``; plain ``onnxruntime``: the CPU), with the CPU always last as a fallback.
Each graph runs at the requested precision where the bundle has that graph's variant, else in FP32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dfrt.errors import ConfigError
from dfrt.runtime.backends import GraphRunner
from dfrt.runtime.bundle import Bundle

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
ORT_TENSORRT_ENV = "DFRT_ORT_TENSORRT"  # 1: put onnxruntime-gpu's TensorRT provider first


@dataclass
class GraphSet:
    """A bundle's graph runners, how they run, and on which provider each one landed."""

    runners: dict[str, GraphRunner]
    backend: str  # onnxruntime or tensorrt
    precision: str  # fp32, fp16 or int8
    providers: dict[str, str]  # graph -> the provider (or "tensorrt") that runs it
    graph_precisions: dict[str, str] = field(default_factory=dict)  # graph -> what it really runs in

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


def tensorrt_available() -> bool:
    """True when the tensorrt package imports and a CUDA device answers."""
    try:
        from dfrt.runtime.backends.tensorrt.engine_builder import current_target

        current_target()
    except Exception:  # missing packages, no driver, no device: all mean "not here"
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``tensorrt`` or ``onnxruntime``; an explicit backend must be usable here."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: choose {', '.join(BACKENDS)}")
    if backend == "auto":
        return "tensorrt" if tensorrt_available() else "onnxruntime"
    if backend == "tensorrt" and not tensorrt_available():
        raise ConfigError(
            "TensorRT is not usable here (no tensorrt package or no CUDA GPU): use --backend onnxruntime"
        )
    return backend


def default_precision(backend: str) -> str:
    """FP16 on TensorRT (every NVIDIA GPU dfrt targets runs it fast), FP32 elsewhere."""
    return "fp16" if backend == "tensorrt" else "fp32"


def ort_tensorrt_requested() -> bool:
    """True when ``DFRT_ORT_TENSORRT`` asks for onnxruntime-gpu's TensorRT provider (1, true, yes, on)."""
    return os.environ.get(ORT_TENSORRT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def onnxruntime_providers(available: Sequence[str], use_tensorrt_provider: bool | None = None) -> list[str]:
    """The providers to ask onnxruntime for, best first, from those the installed package ``available``:
    CUDA when present (onnxruntime-gpu), its TensorRT provider only on request (``use_tensorrt_provider``,
    default :func:`ort_tensorrt_requested`), the CPU always last."""
    if use_tensorrt_provider is None:
        use_tensorrt_provider = ort_tensorrt_requested()
    chosen = []
    if use_tensorrt_provider and TENSORRT_EP in available:
        chosen.append(TENSORRT_EP)
    if CUDA in available:
        chosen.append(CUDA)
    return [*chosen, CPU]


def _available_providers() -> list[str]:
    from dfrt._optional import require

    return list(require("onnxruntime", "onnxruntime").get_available_providers())


def open_graphs(
    bundle: Bundle,
    backend: str = "auto",
    precision: str | None = None,
    providers: Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda message: None,
    threads: int | None = None,
) -> GraphSet:
    """Runners for every graph of ``bundle``: the one loader behind the pipeline (so eval and bench too).

    ``threads``: onnxruntime's intra-op threads per graph (None: one per core; a Ray replica that reserves
    one CPU passes 1, so replicas sharing a machine do not oversubscribe it).

    ``precision`` (default: :func:`default_precision`) must be one the bundle has graphs for on onnxruntime
    (``dfrt build`` adds fp16 and int8 graphs). Either backend runs a graph at ``precision`` only where the
    bundle has that graph's variant (it passed the gate), else in FP32 (``GraphSet.graph_precisions``).
    """
    backend = resolve_backend(backend)
    precision = precision or default_precision(backend)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if backend == "tensorrt":
        from dfrt.runtime.backends.tensorrt.runner import engine_precisions, open_tensorrt_runners

        chosen = engine_precisions(bundle, precision)
        if precision not in chosen.values() and precision != "fp32":
            progress(f"{bundle.root} has no gated {precision} graphs: the engines run in FP32 (dfrt build)")
        runners = open_tensorrt_runners(bundle, precision, progress=progress)
        return GraphSet(runners, backend, precision, dict.fromkeys(runners, "tensorrt"), chosen)
    if precision not in bundle.precisions:
        hint = f"run dfrt build {bundle.root} --precision {precision} --calib VIDEOS_DIR"
        raise ConfigError(
            f"{bundle.root} has no {precision} graphs (it has {', '.join(sorted(bundle.precisions))}): {hint}"
        )
    from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph

    wanted = list(providers) if providers else onnxruntime_providers(_available_providers())
    runners: dict[str, GraphRunner] = {}
    landed: dict[str, str] = {}
    try:
        for name, entry in bundle.manifest.graphs.items():
            graph = OnnxRuntimeGraph(bundle.graph_path(name, precision), entry.spec, wanted, threads or 0)
            runners[name] = graph
            landed[name] = graph.provider
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    log.debug("graphs on %s", landed)
    chosen = {
        name: precision if precision in e.variants else "fp32" for name, e in bundle.manifest.graphs.items()
    }
    return GraphSet(runners, backend, precision, landed, chosen)
