"""The human-readable report of a ``dfrt bench`` record."""

from __future__ import annotations

from typing import Any


def format_report(record: dict[str, Any]) -> str:
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
