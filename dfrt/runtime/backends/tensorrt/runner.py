"""TensorRT backend: engines from the bundle's cache (built on first use), name-based I/O, reused buffers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dfrt.contracts import GraphSpec
from dfrt.errors import BackendError, ContractError, EngineMismatchError
from dfrt.runtime.backends import GraphRunner
from dfrt.runtime.backends.tensorrt.cuda_memory import DeviceMemory, device_memory
from dfrt.runtime.backends.tensorrt.engine_builder import (
    build_engine,
    build_recipe,
    current_target,
    graph_precision,
    network_typing,
    tensorrt,
)
from dfrt.runtime.backends.tensorrt.engine_cache import ENGINES_DIR, EngineCache
from dfrt.runtime.bundle import Bundle

log = logging.getLogger(__name__)


class TensorRTGraph:
    """One deserialized engine with its execution context, stream and device buffers (grown, reused);
    it owns ``memory`` (its stream): :meth:`close` frees both."""

    def __init__(self, engine_path: Path, spec: GraphSpec, memory: DeviceMemory) -> None:
        trt = tensorrt()
        self.spec = spec
        self._trt = trt
        self._memory = memory
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(
                f"{engine_path}: TensorRT cannot load this engine (damaged, or built elsewhere)"
            )
        self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != set(spec.input_names) | set(spec.output_names):
            raise ContractError(
                f"{engine_path.name}: engine tensors {sorted(names)} differ from graph {spec.name}"
            )
        self._buffers: dict[str, tuple[int, int]] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                self._memory.free(pointer)
            pointer, size = self._memory.alloc(nbytes), nbytes
            self._buffers[name] = (pointer, size)
        return pointer

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(inputs)
        for name, array in inputs.items():
            expected = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            if array.dtype != expected:
                raise ContractError(
                    f"graph {self.spec.name}: engine input {name} is {expected}, got {array.dtype}"
                )
            array = np.ascontiguousarray(array)
            if not self.context.set_input_shape(name, array.shape):
                raise BackendError(
                    f"graph {self.spec.name}: the engine refuses shape {array.shape} for {name}"
                )
            pointer = self._buffer(name, array.nbytes)
            self._memory.to_device(pointer, array)
            self.context.set_tensor_address(name, pointer)
        outputs = {}
        for name in self.spec.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, dtype=self._trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
            outputs[name] = out
        if not self.context.execute_async_v3(self._memory.stream_handle):
            raise BackendError(f"TensorRT execution of graph {self.spec.name} failed")
        for name, out in outputs.items():
            self._memory.to_host(out, self._buffers[name][0])
        self._memory.synchronize()
        return {name: out.astype(np.float32, copy=False) for name, out in outputs.items()}

    def close(self) -> None:
        """Device buffers, execution context, engine and stream, in that order; idempotent."""
        for pointer, _ in self._buffers.values():
            self._memory.free(pointer)
        self._buffers.clear()
        for name in ("context", "engine", "_runtime"):
            if hasattr(self, name):
                delattr(self, name)  # TensorRT frees with the last reference: context before engine
        self._memory.close()


def engine_precisions(bundle: Bundle, precision: str) -> dict[str, str]:
    """What each graph's engine computes in at ``precision``: the bundle's gated variants decide
    (:func:`~dfrt.runtime.backends.tensorrt.engine_builder.graph_precision`)."""
    return {
        name: graph_precision(name, precision, entry.variants)
        for name, entry in bundle.manifest.graphs.items()
    }


def open_tensorrt_runners(
    bundle: Bundle,
    precision: str,
    workspace_mb: int = 4096,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, GraphRunner]:
    """An engine per graph for this GPU: from the cache, or built now (and cached) when missing or stale."""
    target = current_target()
    cache = EngineCache(bundle)
    gpu = "".join(c if c.isalnum() else "-" for c in target.gpu)
    timing_name = f"timing-{gpu}-sm{target.compute_capability}-trt{target.tensorrt}.cache"
    timing_cache = bundle.root / ENGINES_DIR / timing_name
    for record in cache.foreign(target):
        log.info("ignoring engine %s built for %s / TensorRT %s", record.key, record.gpu, record.tensorrt)
    runners: dict[str, GraphRunner] = {}
    try:
        for name, graph_prec in engine_precisions(bundle, precision).items():
            entry = bundle.manifest.graphs[name]
            engine = cache.lookup(name, graph_prec, target)
            if engine is None:
                recipe = build_recipe(graph_prec, entry.variants, network_typing(tensorrt()))
                progress(f"building the TensorRT engine for graph {name} on {target.gpu}: {recipe.line()}")
                onnx_path = bundle.graph_path(name, recipe.onnx_precision)
                plan = build_engine(onnx_path, entry.spec, recipe, workspace_mb, timing_cache)
                engine = cache.store(name, graph_prec, target, plan)
            runners[name] = TensorRTGraph(engine, entry.spec, device_memory())
    except BaseException:  # a later graph failed: give back what the earlier ones hold
        for runner in runners.values():
            runner.close()
        raise
    return runners
