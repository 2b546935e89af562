"""What the runtime holds is given back: every graph runner closes with its pipeline, and the cuda-python
memory layer creates its stream only when work needs one and destroys it exactly once."""

from __future__ import annotations

import sys
import types
from enum import Enum

import numpy as np
import pytest

from dfrt.runtime.backends.tensorrt.cuda_memory import CudaPythonMemory
from dfrt.runtime.visual import VisualPipeline
from tests.conftest import frames

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


class _Recording:
    """Wraps a runner, counting closes."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.spec = runner.spec
        self.closed = 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(inputs)

    def close(self) -> None:
        self.closed += 1
        self.runner.close()


def test_visual_pipeline_closes_every_graph(tiny_bundle) -> None:
    opened = VisualPipeline.open(tiny_bundle)
    runners = {name: _Recording(runner) for name, runner in opened.runners.items()}
    with VisualPipeline(opened.bundle, runners) as pipeline:
        pixels = frames(3, pipeline.config.vision.image_size).numpy()
        pipeline.encode_pixels(pixels)
    assert set(runners) == set(opened.bundle.manifest.graphs) and len(runners) >= 4
    assert all(r.closed == 1 for r in runners.values())


class _FakeCudart(types.ModuleType):
    """The few cuda-python runtime calls the memory layer makes, recording streams."""

    class cudaError_t(Enum):
        cudaSuccess = 0
        cudaErrorNoDevice = 100

    def __init__(self, devices: int) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        self.created: list[int] = []
        self.destroyed: list[int] = []

    def cudaGetDeviceCount(self):
        if not self.devices:
            return (self.cudaError_t.cudaErrorNoDevice, 0)
        return (self.cudaError_t.cudaSuccess, self.devices)

    def cudaStreamCreate(self):
        self.created.append(len(self.created) + 1)
        return (self.cudaError_t.cudaSuccess, self.created[-1])

    def cudaStreamDestroy(self, stream):
        self.destroyed.append(stream)
        return (self.cudaError_t.cudaSuccess,)


@pytest.fixture
def fake_cudart(monkeypatch: pytest.MonkeyPatch):
    def install(devices: int) -> _FakeCudart:
        runtime = _FakeCudart(devices)
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = runtime  # type: ignore[attr-defined]
        cuda = types.ModuleType("cuda")
        cuda.bindings = bindings  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
        return runtime

    return install


def test_cuda_stream_is_created_on_first_use_and_destroyed_once(fake_cudart) -> None:
    runtime = fake_cudart(devices=1)
    memory = CudaPythonMemory()
    assert runtime.created == []  # a device query needs no stream
    assert memory.stream_handle == memory.stream_handle == 1
    memory.close()
    memory.close()
    assert runtime.created == [1] and runtime.destroyed == [1]


def test_no_usable_device_is_a_backend_error(fake_cudart) -> None:
    from dfrt.errors import BackendError

    fake_cudart(devices=0)
    with pytest.raises(BackendError, match="cudaErrorNoDevice"):
        CudaPythonMemory()


def test_onnxruntime_threads_do_not_spin_after_a_run(tiny_bundle) -> None:
    """ORT's workers busy-wait after each run by default, taking the cores llama.cpp needs next
    (``dfrt eval`` on the demo: 15 s with spinning, 3.5 s without, 2026-11-25)."""
    pipeline = VisualPipeline.open(tiny_bundle)
    for runner in pipeline.runners.values():
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_tensorrt_runners_opened_before_a_failing_graph_are_closed(tiny_bundle, monkeypatch) -> None:
    from types import SimpleNamespace

    from dfrt.errors import EngineMismatchError
    from dfrt.runtime.backends.tensorrt import runner as backend
    from dfrt.runtime.bundle import Bundle

    opened: list[SimpleNamespace] = []

    def open_graph(engine, spec, memory):
        if len(opened) == 2:
            raise EngineMismatchError(f"{engine}: TensorRT cannot load this engine")
        runner = SimpleNamespace(spec=spec, closed=0)
        runner.close = lambda: setattr(runner, "closed", runner.closed + 1)
        opened.append(runner)
        return runner

    target = SimpleNamespace(gpu="Fake GPU", compute_capability="9.0", tensorrt="10.0")
    cache = SimpleNamespace(foreign=lambda t: [], lookup=lambda name, precision, t: f"{name}.engine")
    monkeypatch.setattr(backend, "current_target", lambda: target)
    monkeypatch.setattr(backend, "EngineCache", lambda bundle: cache)
    monkeypatch.setattr(backend, "device_memory", lambda: None)
    monkeypatch.setattr(backend, "TensorRTGraph", open_graph)
    with pytest.raises(EngineMismatchError):
        backend.open_tensorrt_runners(Bundle.open(tiny_bundle), "fp16")
    assert len(opened) == 2 and all(r.closed == 1 for r in opened)
