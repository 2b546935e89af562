"""The device-memory layer of the TensorRT backend: one small interface over cuda-python or pycuda.

cuda-python (``cuda.bindings``) installs everywhere; pycuda builds where a full CUDA toolkit exists (Jetson).
Only this module touches either.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from dfrt.errors import BackendError, MissingDependencyError


class DeviceMemory(Protocol):
    def alloc(self, nbytes: int) -> int: ...
    def free(self, pointer: int) -> None: ...
    def to_device(self, pointer: int, array: np.ndarray) -> None: ...
    def to_host(self, array: np.ndarray, pointer: int) -> None: ...
    def synchronize(self) -> None: ...
    @property
    def stream_handle(self) -> int: ...
    def close(self) -> None: ...


class CudaPythonMemory:
    """cuda-python's runtime API (``cuda.bindings.runtime``; ``cuda.cudart`` in older releases).
    The stream is created on first use (a device query needs none) and destroyed by :meth:`close`."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]
        self._rt = cudart
        self._check(cudart.cudaGetDeviceCount())  # raises BackendError without a usable driver
        self._created: Any = None

    @property
    def _stream(self) -> Any:
        if self._created is None:
            self._created = self._check(self._rt.cudaStreamCreate())
        return self._created

    def close(self) -> None:
        if self._created is not None:
            self._rt.cudaStreamDestroy(self._created)
            self._created = None

    def _check(self, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA call failed: {err}")
        return values[0] if len(values) == 1 else values

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(nbytes, 1))))

    def free(self, pointer: int) -> None:
        self._rt.cudaFree(pointer)

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self._stream))

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self._stream))

    def synchronize(self) -> None:
        self._check(self._rt.cudaStreamSynchronize(self._stream))

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def device(self) -> tuple[str, str]:
        """(name, compute capability) of device 0."""
        props = self._check(self._rt.cudaGetDeviceProperties(0))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00 "), f"{props.major}.{props.minor}"


class PyCudaMemory:
    """pycuda (``pycuda.autoinit`` creates the context); the stream goes with :meth:`close`."""

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        self._cuda = cuda
        self._created: Any = None

    @property
    def _stream(self) -> Any:
        if self._created is None:
            self._created = self._cuda.Stream()
        return self._created

    def close(self) -> None:
        for allocation in getattr(self, "_keep", {}).values():
            allocation.free()
        self._keep = {}
        self._created = None  # pycuda destroys a stream with its last reference

    def alloc(self, nbytes: int) -> int:
        allocation = self._cuda.mem_alloc(max(nbytes, 1))
        self._keep = getattr(self, "_keep", {})
        self._keep[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        allocation = getattr(self, "_keep", {}).pop(pointer, None)
        if allocation is not None:
            allocation.free()

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        self._cuda.memcpy_htod_async(pointer, array, self._stream)

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self._cuda.memcpy_dtoh_async(array, pointer, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def device(self) -> tuple[str, str]:
        device = self._cuda.Device(0)
        major, minor = device.compute_capability()
        return str(device.name()), f"{major}.{minor}"


def device_memory() -> CudaPythonMemory | PyCudaMemory:
    """cuda-python when it imports and talks to the driver (cuda-python 13 needs driver 580+), else pycuda."""
    try:
        return CudaPythonMemory()
    except (ImportError, BackendError) as e:
        first: Exception = e
    try:
        return PyCudaMemory()
    except ImportError as e:
        if isinstance(first, BackendError):
            raise first from e
        raise MissingDependencyError(
            "neither cuda-python nor pycuda is installed: pip install 'dfrt[trt]'"
        ) from e
