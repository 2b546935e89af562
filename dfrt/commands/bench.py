"""`dfrt bench`: figures measured in one run (see :mod:`dfrt.benchmark`); `--quick` is the CI variant."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dfrt.commands import progress
from dfrt.config import DynFocusConfig

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian opencv-doc, 79.5 s


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench", help="measure tokens, scaling, memory and latency; check the budget properties"
    )
    p.add_argument("--quick", action="store_true", help="small sizes: the CI variant (under 3 minutes)")
    p.add_argument(
        "--bundle", type=Path, help="bundle to time (default: export the tiny config, needs torch)"
    )
    p.add_argument("--llm", type=Path, help="GGUF LLM to time the prefill and decoding with")
    p.add_argument(
        "--clip-seconds", type=int, help="length of the timed clip (default 30, or 120 without --quick)"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="a GPU's peak TFLOP/s (FP16 dense): print the vision tower's compute roofline in frames/s",
    )
    p.add_argument(
        "--backend-frames",
        type=int,
        default=8,
        help="frames per call when timing onnxruntime vs PyTorch (default 8; 2 for the paper size)",
    )
    p.add_argument(
        "--decode-minutes",
        type=int,
        help="length of the generated video for seek vs sequential decoding (default 15, 2 with --quick)",
    )
    p.add_argument("--plot", type=Path, help="write a PNG of visual tokens and latency vs video length")
    p.add_argument("--json", action="store_true", help="print one JSON record")
    p.add_argument("--record", type=Path, help="also write the JSON record to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt import benchmark
    from dfrt.config import paper, tiny
    from dfrt.runtime.bundle import Bundle

    quick = args.quick
    _check_args(args)
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
        bundle, model = (args.bundle, None) if args.bundle else _export_tiny(Path(tmp) / "bundle")
        timed = None
        if bundle is not None:
            progress(f"stage latency on {bundle}")
            seconds = args.clip_seconds or (30 if quick else 120)
            latency = benchmark.stage_latency(bundle, seconds, args.llm, repeats=3 if quick else 5)
            record["stage_latency"] = benchmark.as_records([latency])[0]
            record["backends"] = _backends(bundle, model, args.backend_frames, repeats=3 if quick else 5)
            timed = Bundle.open(bundle, verify=False).manifest.config
        minutes = args.decode_minutes or (2 if quick else 15)
        progress(f"seek vs sequential decoding of a generated {minutes}-minute video")
        record["decode_throughput"] = _decode_throughput(Path(tmp), minutes, quick)
    record["roofline"] = _rooflines(record, timed, args.peak_tflops)
    if args.llm is not None:
        from dfrt.benchmark_llm import llm_prefill

        lengths = (8, 30) if quick else LLM_LENGTHS
        progress(f"llama.cpp prefill of each method's visual tokens for {len(lengths)} video lengths")
        prefill = llm_prefill(args.llm, config, lengths)
        record["llm_prefill"] = {**asdict(prefill), "rows": benchmark.as_records(prefill.rows)}
    if args.plot:
        from dfrt.benchmark_plot import save_plot

        caption = f"dfrt bench{' --quick' if quick else ''}, {record['date']}, {os.cpu_count()} CPU cores"
        save_plot(record, args.plot, caption)
        progress(f"plot written to {args.plot}")
    if args.record:
        from dfrt.fileio import atomic_write_text

        atomic_write_text(args.record, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2) if args.json else _report(record))
    return 0


LLM_LENGTHS = (8, 30, 120, 300, 600, 1800, 3600)  # 1 h: beyond most small LLMs' context for DynFocus


def _check_args(args: argparse.Namespace) -> None:
    from dfrt.errors import ConfigError

    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise ConfigError(f"--peak-tflops must be a positive number, got {args.peak_tflops}")
    if args.backend_frames < 1:
        raise ConfigError(f"--backend-frames must be at least 1, got {args.backend_frames}")
    if args.decode_minutes is not None and args.decode_minutes < 1:
        raise ConfigError(f"--decode-minutes must be at least 1, got {args.decode_minutes}")
    if args.llm is not None and not args.llm.is_file():
        raise ConfigError(f"LLM not found: {args.llm}")


def _export_tiny(out: Path) -> tuple[Path | None, Any]:
    """A tiny random-weight bundle and the model it came from (None, None without torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        progress("torch is not installed: no bundle to time (pass --bundle)")
        return None, None
    from dfrt.config import tiny
    from dfrt.export.bundle import build_model, export_bundle

    model, _ = build_model(tiny())
    export_bundle(model, out, {"source": "random"}, validate=False, progress=False)
    return out, model


def _backends(bundle: Path, model: Any, frames: int, repeats: int) -> dict[str, Any] | None:
    """onnxruntime vs PyTorch eager per graph (None without torch)."""
    from dfrt import benchmark

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
    from dfrt import benchmark

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
    from dfrt import benchmark
    from dfrt.config import paper

    measured = None
    if backends := record.get("backends"):
        vision = next(g for g in backends["graphs"] if g["graph"] == "vision")
        measured = vision["axes"]["frames"] / vision["onnxruntime_seconds"]
    configs = [paper()] if timed is None or timed == paper() else [paper(), timed]
    return [asdict(benchmark.roofline(c, peak_tflops, measured if c == timed else None)) for c in configs]


def _report(record: dict[str, Any]) -> str:
    lines = [
        "visual tokens by video length (1 fps), and the host-side DPE time:",
        f"{'length':>8} {'frames':>6} {'DynFocus':>9} {'8 frames x patches':>19} {'2/frame':>8} "
        f"{'vs 8x':>6} {'host ms':>8} {'us/frame':>9}",
    ]
    for r in record["token_budget"]:
        lines.append(
            f"{r['seconds']:>7}s {r['frames']:>6} {r['dynfocus_tokens']:>9} "
            f"{r['uniform_8_frame_tokens']:>19} "
            f"{r['llamavid_tokens']:>8} {r['dynfocus_tokens'] / r['uniform_8_frame_tokens']:>6.2f} "
            f"{r['host_seconds'] * 1e3:>8.1f} {r['host_seconds'] / r['frames'] * 1e6:>9.1f}"
        )
    lines.append("decode memory with the frame cap (peak Python heap):")
    for r in record["decode_memory"]:
        lines.append(
            f"  {r['video_seconds']:>5} s video: {r['decoded_frames']} decoded, {r['kept_frames']} kept, "
            f"peak {r['peak_mib']:.2f} MiB"
        )
    if latency := record.get("stage_latency"):
        lines.append(
            f"stage latency, {latency['frames']} frames -> {latency['visual_tokens']} visual tokens "
            f"(visual path {latency['visual_wall'] * 1e3:.1f} ms, "
            f"glue {latency['glue_fraction'] * 100:.1f}%):"
        )
        for stage, seconds in latency["stages"].items():
            unit = "tok/s" if stage.endswith("per_second") else "ms"
            value = seconds if unit == "tok/s" else seconds * 1e3
            lines.append(f"  {stage:<30} {value:>9.2f} {unit}")
    lines += _report_backends(record.get("backends"))
    lines += _report_roofline(record["roofline"])
    lines += _report_decode(record["decode_throughput"])
    lines += _report_prefill(record.get("llm_prefill"))
    lines.append("properties: token budget = formula, decode memory bounded by the cap: ok")
    return "\n".join(lines)


def _report_backends(backends: dict[str, Any] | None) -> list[str]:
    if not backends:
        return []
    weights = "same weights" if backends["same_weights"] else "same architecture, own random weights"
    lines = [
        f"onnxruntime CPU vs PyTorch eager ({backends['config']} config, {weights}, "
        f"torch threads {backends['torch_threads']}; median ms):",
        f"  {'graph':<10} {'feed':<24} {'onnxruntime':>11} {'PyTorch':>9} {'PyTorch/ORT':>12}",
    ]
    for g in backends["graphs"]:
        feed = ", ".join(f"{a} {n}" for a, n in g["axes"].items())
        lines.append(
            f"  {g['graph']:<10} {feed:<24} {g['onnxruntime_seconds'] * 1e3:>11.2f} "
            f"{g['torch_seconds'] * 1e3:>9.2f} {g['torch_over_onnxruntime']:>12.2f}"
        )
    return lines


def _report_roofline(rooflines: list[dict[str, Any]]) -> list[str]:
    lines = ["vision tower FLOPs per frame (matmuls), and the compute roofline:"]
    for r in rooflines:
        line = (
            f"  {r['config']:<6} {r['gflops_per_frame']:>9.2f} GFLOP/frame, "
            f"FP16 weights {r['weights_mib_fp16']:,.1f} MiB"
        )
        if r["roofline_frames_per_second"]:
            line += f"; at {r['peak_tflops']:g} TFLOP/s: {r['roofline_frames_per_second']:,.1f} frames/s"
        if r["measured_frames_per_second"]:
            line += (
                f"; onnxruntime CPU here: {r['measured_frames_per_second']:,.2f} frames/s "
                f"({r['measured_gflops_per_second']:,.1f} GFLOP/s)"
            )
        lines.append(line)
    return lines


def _report_decode(decode: dict[str, Any]) -> list[str]:
    video = decode["video"]
    size = f"{video['size'][0]}x{video['size'][1]}"
    lines = [
        f"frame sampling at 1 fps from a {video['seconds'] // 60}-minute {size} {video['fps']} fps "
        f"{video['codec']} video ({video['content']}): sequential read vs a seek per frame",
    ]
    for r in decode["rows"]:
        seq_fps = r["sampled_frames"] / r["sequential_seconds"]
        seek_fps = r["sampled_frames"] / r["seek_seconds"]
        decoded_fps = r["decoded_frames"] / r["sequential_seconds"]
        lines.append(
            f"  cap {r['cap']:>5}: {r['sampled_frames']:>4} frames; "
            f"sequential {r['sequential_seconds']:.2f} s "
            f"({seq_fps:,.1f} sampled frames/s, {decoded_fps:,.0f} decoded/s), "
            f"seek {r['seek_seconds']:.2f} s ({seek_fps:,.1f} frames/s): seek/sequential "
            f"{r['seek_over_sequential']:.2f}, {r['mismatched_frames']} frames differ"
        )
    return lines


def _report_prefill(prefill: dict[str, Any] | None) -> list[str]:
    if not prefill:
        return []
    lines = [
        f"llama.cpp prefill of the visual tokens ({prefill['model']}, n_embd {prefill['n_embd']}, "
        f"trained context {prefill['n_ctx_train']}, {prefill['threads']} threads):",
        f"  {'length':>7} {'method':<16} {'tokens':>6} {'prefill s':>9} {'peak MiB':>8} {'vs DynFocus':>11}",
    ]
    rows = prefill["rows"]
    for r in rows:
        ours = next(x for x in rows if x["video_seconds"] == r["video_seconds"] and x["method"] == "dynfocus")
        if not r["fits"]:
            lines.append(
                f"  {r['video_seconds']:>6}s {r['method']:<16} {r['tokens']:>6} "
                f"does not fit the {prefill['n_ctx_train']}-token context"
            )
            continue
        ratio = (
            f"{r['prefill_seconds'] / ours['prefill_seconds']:>11.2f}"
            if ours["prefill_seconds"]
            else f"{'-':>11}"
        )
        peak = f"{r['peak_mib']:>8.1f}" if r["peak_mib"] is not None else f"{'-':>8}"
        lines.append(
            f"  {r['video_seconds']:>6}s {r['method']:<16} {r['tokens']:>6} "
            f"{r['prefill_seconds']:>9.2f} {peak} {ratio}"
        )
    return lines
