"""Live video: cameras and network streams into a bounded, question-ready window (``dfrt watch``).

numpy, OpenCV and onnxruntime only (through :mod:`dfrt.runtime`), like the rest of the runtime.
"""

from __future__ import annotations

__all__ = ["AlertEvent", "AlertRule", "Alerts", "LiveAnswer", "Reconnect", "Watcher", "pipe_watch"]
_ALERTS = ("AlertEvent", "AlertRule", "Alerts")


def __getattr__(name: str) -> object:  # lazy: `import dfrt.live` loads no OpenCV
    if name in _ALERTS:
        from dfrt.live import alerts

        return getattr(alerts, name)
    if name in __all__:
        from dfrt.live import watcher

        return getattr(watcher, name)
    raise AttributeError(name)
