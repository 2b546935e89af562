"""What ``dfrt info`` reports: versions, onnxruntime providers, GPU, configs. Never imports torch."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from dfrt import __version__
from dfrt.config import CONFIGS
from dfrt.runtime.loader import onnxruntime_providers

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


def nvidia_gpus() -> list[tuple[str, str]]:
    """NVIDIA GPUs as (name, compute capability), from nvidia-smi when present; none otherwise."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [(name.strip(), cc.strip()) for name, _, cc in (line.partition(",") for line in out.splitlines())]


def _jetson() -> dict[str, str] | None:
    """Model, L4T release and power mode on a Jetson; None elsewhere."""
    try:
        lines = Path("/etc/nv_tegra_release").read_text(errors="replace").splitlines()
    except OSError:
        return None
    facts = {"l4t": lines[0].strip("# ") if lines else "?"}
    with contextlib.suppress(OSError):
        facts["model"] = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(
                ["nvpmodel", "-q"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            facts["power_mode"] = " ".join(out.split())
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


def bundle_summary(root: Path, verify: bool = False) -> dict[str, Any]:
    """What a bundle holds, from its manifest (``verify`` re-hashes every file)."""
    from dfrt.runtime.bundle import Bundle

    bundle = Bundle.open(root, verify=False)
    if verify:
        bundle.verify(force=True)
    manifest = bundle.manifest
    return {
        "path": str(root),
        "config": manifest.config.name,
        "vision": f"{manifest.config.vision.width} wide x {manifest.config.vision.depth} blocks, "
        f"{manifest.config.vision.image_size}px",
        "llm_width": manifest.config.llm_width,
        "graphs": {
            name: manifest.files[g.file].bytes + (manifest.files[g.data_file].bytes if g.data_file else 0)
            for name, g in manifest.graphs.items()
        },
        "bytes": sum(f.bytes for f in manifest.files.values()),
        "weights": manifest.weights.get("source", "?"),
        "llm": manifest.llm,
        "prompt": manifest.prompt.name,
        "family": manifest.family,
        "scoring": manifest.scoring,
        "scorer": None if manifest.scorer is None else manifest.scorer.kind,
        "verified": verify,
        "dfrt_version": manifest.dfrt_version,
    }


def describe(bundle: Path | None = None, verify: bool = False) -> dict[str, Any]:
    """``dfrt info``: this installation, and the bundle ``dfrt infer`` would use (``bundle``, else the
    default one when it is set up already; the demo is not copied into the cache for this)."""
    from dfrt.runtime.default_bundle import resolve_bundle

    info = collect_info()
    resolved = resolve_bundle(bundle, assemble=False)
    if bundle is not None or resolved.is_dir():
        info["bundle"] = bundle_summary(resolved, verify=verify)
    return info


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
        "graph_providers": onnxruntime_providers(_providers()) if _providers() else [],
        "gpus": [f"{name} (sm {cc})" for name, cc in nvidia_gpus()],
        "jetson": _jetson(),
        "configs": configs,
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [f"dfrt {info['dfrt']} (Python {info['python']}, {info['platform']})", "packages:"]
    lines += [f"  {name}: {version or '-'}" for name, version in info["packages"].items()]
    lines.append(f"onnxruntime providers: {', '.join(info['onnxruntime_providers']) or '-'}")
    lines.append(f"graphs run on (--backend onnxruntime): {', '.join(info['graph_providers']) or '-'}")
    lines.append(f"GPUs: {', '.join(info['gpus']) or 'none found'}")
    if jetson := info.get("jetson"):
        lines.append("Jetson: " + ", ".join(f"{k} {v}" for k, v in jetson.items()))
    lines.append("configs:")
    for name, cfg in info["configs"].items():
        lines.append(
            f"  {name}: {cfg['image_size']}px, vision {cfg['vision_width']}x{cfg['vision_depth']}, "
            f"LLM width {cfg['llm_width']}, 32 frames -> {cfg['tokens_32_frames']} visual tokens"
        )
    if bundle := info.get("bundle"):
        lines.append(
            f"bundle {bundle['path']}: config {bundle['config']} ({bundle['vision']}, LLM width "
            f"{bundle['llm_width']}), {bundle['bytes'] / 1e6:.1f} MB, weights: {bundle['weights']}, "
            f"prompt: {bundle['prompt']}, {_selection(bundle)}"
        )
        for name, size in bundle["graphs"].items():
            lines.append(f"  {name}: {size / 1e6:.1f} MB")
        llm = bundle["llm"]
        lines.append(
            f"  llm: {llm['source_name']} ({llm['architecture']}, width {llm['embedding_length']})"
            if llm
            else "  llm: none (pass --llm to dfrt infer)"
        )
    return "\n".join(lines)


def _selection(bundle: dict[str, Any]) -> str:
    """How the bundle's key frames are chosen, in words."""
    if bundle["family"] == "dynfocus":
        return f"family dynfocus, DPE scoring: {bundle['scoring']}"
    scorer = bundle["scorer"]
    scorer = f"a {scorer} frame scorer" if scorer else "no frame scorer (uniform key frames)"
    return f"family {bundle['family']}, {scorer}"
