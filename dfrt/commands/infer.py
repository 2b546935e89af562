"""`dfrt infer VIDEO QUESTION`: decode, select, encode, and stream the LLM's answer."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dfrt.commands import add_model_options, add_sampling_options, progress
from dfrt.commands import sampling as sampling_config


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.runtime import defaults

    p.add_argument("video", type=Path, help="video file (anything FFmpeg reads: mp4, avi, mkv, ...)")
    p.add_argument("question")
    add_model_options(p)
    p.add_argument(
        "--fps",
        type=float,
        default=defaults.DEFAULT_FPS,
        help=f"frames sampled per second (default {defaults.DEFAULT_FPS:g}, as DynFocus)",
    )
    p.add_argument(
        "--max-frames",
        type=int,
        default=defaults.DEFAULT_MAX_FRAMES,
        help=f"frame cap; longer videos are resampled uniformly (default {defaults.DEFAULT_MAX_FRAMES})",
    )
    p.add_argument(
        "--visual-tokens",
        type=int,
        metavar="N",
        help="answer within N visual tokens: fewer key frames first, then fewer frames, never below one key "
        "frame (default: the model's key-frame ratio)",
    )
    add_sampling_options(p)
    p.add_argument("--timeline", type=Path, help="write a PNG of frame scores and key frames")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of streaming")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.runtime import options
    from dfrt.runtime.default_bundle import resolve_bundle
    from dfrt.runtime.pipeline import Pipeline
    from dfrt.runtime.report import answer_document
    from dfrt.runtime.timeline import check_timeline, write_timeline

    # every option is checked before anything is loaded (the same checks the Python API makes)
    sampling = sampling_config(args)
    options.fps(args.fps)
    options.max_frames(args.max_frames)
    options.visual_tokens(args.visual_tokens)
    options.path("video", args.video)
    if args.llm is not None:
        options.path("--llm", args.llm)
    if args.ctx is not None:
        options.ctx(args.ctx)
    start = time.perf_counter()
    bundle = resolve_bundle(args.bundle, progress)
    protected = [bundle, *([args.llm] if args.llm else [])]  # --timeline never over or into them
    if args.timeline:
        check_timeline(args.timeline, args.video, protected)  # before any work
    progress(f"loading bundle {bundle}")
    with Pipeline(
        bundle,
        args.llm,
        args.backend,
        args.ctx,
        args.threads,
        precision=args.precision,
        progress=progress,
        selection=args.selection,
    ) as pipe:
        progress(f"decoding {args.video} at {args.fps:g} fps")
        video = pipe.load_video(args.video, args.fps, args.max_frames, args.visual_tokens)
        plan = video.plan
        if args.visual_tokens is not None and plan is not None and plan.tokens < args.visual_tokens:
            progress(f"--visual-tokens {args.visual_tokens}: {plan.tokens} used ({plan.unused})")
        result = pipe.ask(
            video,
            args.question,
            sampling,
            on_text=None if args.json else _stream,
            on_visual=lambda visual: progress(
                f"{video.sampled.num_frames} frames, {visual.selection.key_frames.size} key frames, "
                f"{visual.num_tokens} visual tokens"
            ),
        )
        if not args.json:
            print(flush=True)
        if dropped := result.answer.question_tokens_dropped:
            progress(
                f"warning: the question was too long for the LLM context: its first {dropped} tokens were "
                "dropped (--ctx, --max-frames)"
            )
        if args.timeline:
            write_timeline(result, args.question, args.timeline, protected)
            progress(f"timeline written to {args.timeline}")
        total = time.perf_counter() - start
        if args.json:
            print(json.dumps(answer_document(pipe, result, args.question, total), indent=2))
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
