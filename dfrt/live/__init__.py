"""Live video: cameras and network streams into a bounded, question-ready window (``dfrt watch``).

numpy, OpenCV and onnxruntime only (through :mod:`dfrt.runtime`), like the rest of the runtime.
"""

from __future__ import annotations

__all__ = ["LiveAnswer", "Reconnect", "Watcher", "pipe_watch"]


def __getattr__(name: str) -> object:  # lazy: `import dfrt.live` loads no OpenCV
    if name in __all__:
        from dfrt.live import watcher

        return getattr(watcher, name)
    raise AttributeError(name)
