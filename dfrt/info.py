"""What ``dfrt info`` reports: versions, onnxruntime providers, GPU, configs. Never imports torch."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from dfrt import __version__
from dfrt.config import CONFIGS

_PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "opencv-python-headless",
    "tensorrt",
    "torch",
    "onnx",
    "llama_cpp_python",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return []


def collect_info() -> dict[str, Any]:
    """A JSON-serialisable description of this installation."""
    configs = {}
    for name, make in CONFIGS.items():
        cfg = make()
        configs[name] = {
            "image_size": cfg.vision.image_size,
            "vision_width": cfg.vision.width,
            "vision_depth": cfg.vision.depth,
            "llm_width": cfg.llm_width,
            "tokens_32_frames": cfg.visual_token_count(32),
        }
    return {
        "dfrt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "onnxruntime_providers": _providers(),
        "configs": configs,
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [f"dfrt {info['dfrt']} (Python {info['python']}, {info['platform']})", "packages:"]
    lines += [f"  {name}: {version or '-'}" for name, version in info["packages"].items()]
    lines.append(f"onnxruntime providers: {', '.join(info['onnxruntime_providers']) or '-'}")
    lines.append("configs:")
    for name, cfg in info["configs"].items():
        lines.append(
            f"  {name}: {cfg['image_size']}px, vision {cfg['vision_width']}x{cfg['vision_depth']}, "
            f"LLM width {cfg['llm_width']}, 32 frames -> {cfg['tokens_32_frames']} visual tokens"
        )
    return "\n".join(lines)
