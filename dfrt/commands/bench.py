"""`dfrt bench`: figures measured in one run (see :mod:`dfrt.benchmark`); `--quick` is the CI variant."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from dfrt.commands import progress


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
    p.add_argument("--json", action="store_true", help="print one JSON record")
    p.add_argument("--record", type=Path, help="also write the JSON record to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt import benchmark
    from dfrt.config import paper, tiny

    quick = args.quick
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
        bundle = args.bundle or _export_tiny(Path(tmp) / "bundle")
        if bundle is not None:
            progress(f"stage latency on {bundle}")
            seconds = args.clip_seconds or (30 if quick else 120)
            latency = benchmark.stage_latency(bundle, seconds, args.llm, repeats=3 if quick else 5)
            record["stage_latency"] = benchmark.as_records([latency])[0]
    if args.record:
        from dfrt.fileio import atomic_write_text

        atomic_write_text(args.record, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2) if args.json else _report(record))
    return 0


def _export_tiny(out: Path) -> Path | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        progress("torch is not installed: no bundle to time (pass --bundle)")
        return None
    from dfrt.config import tiny
    from dfrt.export.bundle import build_model, export_bundle

    model, _ = build_model(tiny())
    export_bundle(model, out, {"source": "random"}, validate=False, progress=False)
    return out


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
    lines.append("properties: token budget = formula, decode memory bounded by the cap: ok")
    return "\n".join(lines)
