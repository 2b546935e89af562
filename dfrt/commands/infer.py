"""`dfrt infer VIDEO QUESTION`: decode, select, encode, and stream the LLM's answer."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dfrt.commands import progress


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dfrt.runtime.pipeline import DEFAULT_MAX_FRAMES

    p = sub.add_parser("infer", help="answer a question about a video")
    p.add_argument("video", type=Path, help="video file (anything FFmpeg reads: mp4, avi, mkv, ...)")
    p.add_argument("question")
    p.add_argument(
        "--bundle",
        type=Path,
        help="bundle directory (default: $DFRT_BUNDLE, then <cache>/bundle, then the trained demo)",
    )
    p.add_argument("--llm", type=Path, help="GGUF LLM to use instead of the bundle's")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        help="graph precision (default: fp16 on TensorRT, fp32 on onnxruntime; int8 after dfrt build)",
    )
    p.add_argument(
        "--fps", type=float, default=1.0, help="frames sampled per second (default 1, as DynFocus)"
    )
    p.add_argument(
        "--max-frames",
        type=int,
        default=DEFAULT_MAX_FRAMES,
        help=f"frame cap; longer videos are resampled uniformly (default {DEFAULT_MAX_FRAMES})",
    )
    p.add_argument("--max-tokens", type=int, default=256, help="answer length limit")
    p.add_argument("--temperature", type=float, default=0.2, help="0 = greedy (default 0.2)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ctx", type=int, default=4096, help="LLM context length (default 4096)")
    p.add_argument("--timeline", type=Path, help="write a PNG of frame scores and key frames")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of streaming")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.demo.default import resolve_bundle
    from dfrt.errors import ConfigError
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline
    from dfrt.runtime.selection import frame_scores
    from dfrt.runtime.timeline import render_timeline, save_png

    if args.timeline and args.timeline.is_dir():
        raise ConfigError(f"--timeline {args.timeline} is a directory; give a .png file name")
    start = time.perf_counter()
    bundle = resolve_bundle(args.bundle, progress)
    progress(f"loading bundle {bundle}")
    with Pipeline(
        bundle,
        llm=args.llm,
        backend=args.backend,
        n_ctx=args.ctx,
        precision=args.precision,
        progress=progress,
    ) as pipe:
        progress(f"decoding {args.video} at {args.fps:g} fps")
        video = pipe.load_video(args.video, fps=args.fps, max_frames=args.max_frames)
        selection = video.features.selection
        progress(
            f"{video.sampled.num_frames} frames, {selection.key_frames.size} key frames, "
            f"{pipe.visual.config.visual_token_count(video.sampled.num_frames)} visual tokens"
        )
        sampling = SamplingConfig(args.max_tokens, args.temperature, args.top_p, args.seed)
        stream = None if args.json else _stream
        result = pipe.ask(video, args.question, sampling, on_text=stream)
        if not args.json:
            print(flush=True)
        if args.timeline:
            scores = frame_scores(video.features.scores, video.features.prototypes)
            image = render_timeline(
                video.sampled.frames, video.sampled.timestamps, scores, selection.key_frames, args.question
            )
            save_png(image, args.timeline)
            progress(f"timeline written to {args.timeline}")
        total = time.perf_counter() - start
        if args.json:
            print(json.dumps(_document(args, pipe, result, total), indent=2))
        else:
            answer = result.answer
            progress(
                f"{answer.visual_tokens} visual + {answer.prompt_tokens} prompt tokens, "
                f"{answer.generated_tokens} generated ({answer.decode_tokens_per_second:.1f} tok/s), "
                f"{total:.1f} s"
            )
    return 0


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _document(args: argparse.Namespace, pipe: Any, result: Any, total: float) -> dict[str, Any]:
    from dfrt.runtime.selection import frame_scores

    video, visual, answer = result.video, result.visual, result.answer
    sampled, features = video.sampled, video.features
    scores = frame_scores(features.scores, features.prototypes)
    keys = set(features.selection.key_frames.tolist())
    config = pipe.visual.config
    return {
        "answer": answer.text,
        "stop_reason": answer.stop_reason,
        "question": args.question,
        "video": {
            "path": str(sampled.path),
            "sampled_frames": sampled.num_frames,
            "decoded_frames": sampled.decoded_frames,
            "source_fps": sampled.source_fps,
        },
        "key_frames": [
            {
                "frame": int(i),
                "time": round(float(sampled.timestamps[i]), 3),
                "score": round(float(scores[i]), 6),
            }
            for i in features.selection.key_frames
        ],
        "frames": [
            {"time": round(float(t), 3), "score": round(float(s), 6), "key": i in keys, "tokens": int(n)}
            for i, (t, s, n) in enumerate(
                zip(sampled.timestamps, scores, visual.tokens_per_frame, strict=True)
            )
        ],
        "tokens": {
            "visual": answer.visual_tokens,
            "prompt": answer.prompt_tokens,
            "generated": answer.generated_tokens,
            "all_patches_equivalent": sampled.num_frames * config.vision.num_patches,
        },
        "timings": {k: round(v, 4) for k, v in {**result.timings, "total": total}.items()},
        "decode_tokens_per_second": round(answer.decode_tokens_per_second, 2),
        "bundle": str(pipe.visual.bundle.root),
        "backend": pipe.backend,
    }
