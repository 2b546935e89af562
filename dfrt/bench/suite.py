"""`dfrt bench` as one library call: every figure measured in one run (see :mod:`dfrt.bench.measure`)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dfrt.config import DynFocusConfig

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian opencv-doc, 79.5 s


@dataclass(frozen=True)
class BenchOptions:
    quick: bool = False  # small sizes: the CI variant
    bundle: Path | None = None  # default: export the tiny config (needs torch)
    llm: Path | None = None  # a GGUF to time prefill and decoding with
    clip_seconds: int | None = None  # the timed clip (default 30, or 120 without quick)
    peak_tflops: float | None = None  # a GPU's FP16 dense peak: the vision tower's roofline
    backend_frames: int = 8  # frames per call, onnxruntime vs PyTorch
    decode_minutes: int | None = None  # the generated video of seek vs sequential decoding
    plot: Path | None = None  # a PNG of visual tokens and latency vs video length
    record: Path | None = None  # also write the JSON record here


def run_bench(
    options: BenchOptions, progress: Callable[[str], None] = lambda message: None
) -> dict[str, Any]:
    """Every figure of ``dfrt bench`` in one JSON-serialisable record (plot and record file written too)."""
    args = options
    from dfrt.bench import measure as benchmark
    from dfrt.config import paper, tiny
    from dfrt.runtime.bundle import Bundle

    quick = args.quick
    _check_options(args)
    record: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "quick": quick,
    }
    config = tiny() if quick else paper()
    durations = (8, 30, 60, 80, 81, 120, 300, 600, 1800)
    progress(f"token budget and host scaling ({config.name} width) for {len(durations)} video lengths")
    rows = benchmark.token_budget(config, durations)
    record["token_budget"] = benchmark.as_records(rows)
    cap, minutes = (16, (2, 8)) if quick else (128, (10, 40))
    progress(f"decode memory with a {cap}-frame cap on {minutes} minute videos")
    record["decode_memory"] = benchmark.as_records(benchmark.decode_memory(cap, minutes))
    with tempfile.TemporaryDirectory() as tmp:
        bundle, model = (args.bundle, None) if args.bundle else _export_tiny(Path(tmp) / "bundle", progress)
        timed = None
        if bundle is not None and (family := Bundle.open(bundle, verify=False).manifest.family) != "dynfocus":
            from dfrt.errors import ConfigError

            raise ConfigError(
                f"{bundle}: dfrt bench times DynFocus bundles; for a {family} bundle's costs run "
                "python benchmarks/smolvlm_cost.py"
            )
        if bundle is not None:
            progress(f"stage latency on {bundle}")
            seconds = args.clip_seconds or (30 if quick else 120)
            latency = benchmark.stage_latency(bundle, seconds, args.llm, repeats=3 if quick else 5)
            record["stage_latency"] = benchmark.as_records([latency])[0]
            record["backends"] = _backends(bundle, model, args.backend_frames, 3 if quick else 5, progress)
            timed = Bundle.open(bundle, verify=False).manifest.config
        minutes = args.decode_minutes or (2 if quick else 15)
        progress(f"seek vs sequential decoding of a generated {minutes}-minute video")
        record["decode_throughput"] = _decode_throughput(Path(tmp), minutes, quick)
    record["roofline"] = _rooflines(record, timed, args.peak_tflops)
    if args.llm is not None:
        from dfrt.bench.llm_prefill import llm_prefill

        lengths = (8, 30) if quick else LLM_LENGTHS
        progress(f"llama.cpp prefill of each method's visual tokens for {len(lengths)} video lengths")
        prefill = llm_prefill(args.llm, config, lengths)
        record["llm_prefill"] = {**asdict(prefill), "rows": benchmark.as_records(prefill.rows)}
    if args.plot:
        from dfrt.bench.plot import save_plot

        caption = f"dfrt bench{' --quick' if quick else ''}, {record['date']}, {os.cpu_count()} CPU cores"
        save_plot(record, args.plot, caption)
        progress(f"plot written to {args.plot}")
    if args.record:
        from dfrt.fileio import atomic_write_text

        atomic_write_text(args.record, json.dumps(record, indent=2) + "\n")
    return record


LLM_LENGTHS = (8, 30, 120, 300, 600, 1800, 3600)  # 1 h: beyond most small LLMs' context for DynFocus


def _check_options(args: BenchOptions) -> None:
    from dfrt.errors import ConfigError

    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise ConfigError(f"--peak-tflops must be a positive number, got {args.peak_tflops}")
    if args.backend_frames < 1:
        raise ConfigError(f"--backend-frames must be at least 1, got {args.backend_frames}")
    if args.decode_minutes is not None and args.decode_minutes < 1:
        raise ConfigError(f"--decode-minutes must be at least 1, got {args.decode_minutes}")
    if args.llm is not None and not args.llm.is_file():
        raise ConfigError(f"LLM not found: {args.llm}")
    _check_outputs(args)


def _check_outputs(args: BenchOptions) -> None:
    """``--plot`` and ``--record`` before any measuring: regular files in existing directories, never the
    LLM, the bundle's files or each other (:func:`dfrt.fileio.check_output_path`)."""
    from dfrt.errors import ConfigError
    from dfrt.fileio import check_output_path

    inputs = [args.llm] if args.llm else []
    protected = [args.bundle] if args.bundle else []
    for what, path in (("--plot", args.plot), ("--record", args.record)):
        if path is not None:
            check_output_path(path, what=what, inputs=inputs, protected_dirs=protected)
    if args.plot is not None and args.plot == args.record:
        raise ConfigError(f"--plot and --record are both {args.plot}: give two files")


def _export_tiny(out: Path, progress: Callable[[str], None]) -> tuple[Path | None, Any]:
    """A tiny random-weight bundle and the model it came from; without torch (the runtime alone, as on a
    Jetson) the shipped demo bundle, with no PyTorch model to compare against."""
    try:
        import torch  # noqa: F401
    except ImportError:
        from dfrt.runtime.default_bundle import demo_bundle

        progress("torch is not installed: timing the shipped demo bundle (no PyTorch comparison)")
        return demo_bundle(progress), None
    from dfrt.config import tiny
    from dfrt.export.bundle_writer import build_model, export_bundle

    model, _ = build_model(tiny())
    export_bundle(model, out, {"source": "random"}, validate=False, progress=False)
    return out, model


def _backends(
    bundle: Path, model: Any, frames: int, repeats: int, progress: Callable[[str], None]
) -> dict[str, Any] | None:
    """onnxruntime vs PyTorch eager per graph (None without torch)."""
    from dfrt.bench import measure as benchmark

    try:
        import torch  # noqa: F401
    except ImportError:
        progress("torch is not installed: onnxruntime vs PyTorch not measured")
        return None
    progress(f"onnxruntime vs PyTorch eager, graph by graph, on {bundle}")
    comparison = benchmark.torch_vs_onnxruntime(bundle, model, frames, repeats)
    return {**asdict(comparison), "graphs": benchmark.as_records(comparison.graphs)}


def _decode_throughput(tmp: Path, minutes: int, quick: bool) -> dict[str, Any]:
    """A looped real video (vtest.avi when installed; noise with --quick) decoded both ways."""
    from dfrt.bench import measure as benchmark

    source = None if quick or not VTEST.is_file() else VTEST
    fps, size = 10, (320, 240)
    path = benchmark.looped_video(tmp / "long.mp4", minutes * 60, fps, size, source)
    caps = (16, minutes * 60) if quick else (128, minutes * 60)
    return {
        "video": {
            "seconds": minutes * 60,
            "fps": fps,
            "size": list(size),
            "codec": "mp4v",
            "content": source.name if source else "moving noise",
        },
        "rows": benchmark.as_records(benchmark.decode_throughput(path, caps)),
    }


def _rooflines(
    record: dict[str, Any], timed: DynFocusConfig | None, peak_tflops: float | None
) -> list[dict[str, Any]]:
    """The paper tower's FLOPs (and roofline given a peak), and the timed bundle's with its measured rate."""
    from dfrt.bench import measure as benchmark
    from dfrt.config import paper

    measured = None
    if backends := record.get("backends"):
        vision = next(g for g in backends["graphs"] if g["graph"] == "vision")
        measured = vision["axes"]["frames"] / vision["onnxruntime_seconds"]
    configs = [paper()] if timed is None or timed == paper() else [paper(), timed]
    return [asdict(benchmark.roofline(c, peak_tflops, measured if c == timed else None)) for c in configs]
