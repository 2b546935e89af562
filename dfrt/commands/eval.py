"""`dfrt eval`: accuracy of a bundle on the demo's held-out synthetic clips, DynFocus vs uniform vs random
frames; or, with `--dataset FILE.jsonl`, any bundle's on the user's own labelled videos (docs/eval.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dfrt.commands import RowProgress, progress

STRATEGIES = (
    "dynfocus",
    "uniform",
    "random",
)  # dfrt.demo.evaluate.STRATEGIES (numpy, OpenCV: not imported here)
DATASET_STRATEGIES = ("dfrt", "uniform", "uniform-full")  # dfrt.evaluation.strategies.STRATEGIES
DEMO_ONLY = ("count", "reference", "clips")
DATASET_ONLY = (
    "out",
    "videos",
    "llm",
    "backend",
    "selection",
    "ctx",
    "fps",
    "max_frames",
    "max_tokens",
    "mc_prompt",
    "free_prompt",
    "letters_only",
    "no_progress",
)


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, help="bundle directory (default: the demo bundle)")
    p.add_argument("--count", type=int, help="held-out clips to use (default 140, 20 per kind)")
    p.add_argument(
        "--strategies",
        help=f"comma-separated, from {','.join(STRATEGIES)} (default all); with --dataset from "
        f"{','.join(DATASET_STRATEGIES)} (default all)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        help="ONNX graphs to run (default fp32; with --dataset as dfrt infer)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="run the visual path on the PyTorch model with the bundle's weights (needs dfrt[export])",
    )
    p.add_argument("--clips", type=Path, help="where the held-out mp4s are written (default: the cache dir)")
    p.add_argument("--threads", type=int, help="LLM threads (default: all cores)")
    p.add_argument(
        "--visual-tokens",
        type=int,
        metavar="N",
        help="DynFocus within N visual tokens (fewer key frames, then fewer frames); the baselines get as "
        "many cone-only frames as DynFocus's tokens hold",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    data = p.add_argument_group("your labelled videos (docs/eval.md)")
    data.add_argument(
        "--dataset",
        type=Path,
        metavar="FILE.jsonl",
        help='JSON Lines: {"video": PATH, "question": TEXT, "options": [...], "answer": "C"} or a free '
        '"answer": TEXT; "id", "type" optional. Any model family',
    )
    data.add_argument("--out", type=Path, help="JSON Lines rows, one per line and strategy; resumable")
    data.add_argument("--videos", type=Path, metavar="DIR", help="video paths are relative to DIR "
                      "(default: the dataset's folder)")  # fmt: skip
    data.add_argument("--llm", type=Path, help="GGUF LLM to use instead of the bundle's")
    data.add_argument(
        "--backend", choices=("auto", "onnxruntime", "tensorrt"), help="where the graphs run (default auto)"
    )
    data.add_argument(
        "--selection",
        choices=("dpe", "bolt", "aks", "uniform"),
        help="an open-VLM bundle's key-frame selection for the dfrt strategy, as dfrt infer (default: dpe "
        "with a scorer, else uniform)",
    )
    data.add_argument("--ctx", type=int, help="LLM context (default: the model's, at most 4096)")
    data.add_argument("--fps", type=float, help="frames sampled per second (default 1)")
    data.add_argument("--max-frames", type=int, help="frame cap (default 128)")
    data.add_argument("--max-tokens", type=int, help="answer length limit (default 16, as lmms-eval)")
    data.add_argument(
        "--mc-prompt",
        metavar="TEMPLATE",
        help="multiple-choice prompt with {question}, {options} ('A. text' lines), {letters} ('A, B, C, "
        "or D'); \\n is a line break (default: Video-MME's)",
    )
    data.add_argument(
        "--free-prompt", metavar="TEMPLATE", help="free-answer prompt with {question} (default: the question)"
    )
    data.add_argument(
        "--letters-only",
        action="store_true",
        help="multiple choice: only an option letter counts, not an option's text in the response",
    )
    data.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.errors import ConfigError

    given = [name for name in (DATASET_ONLY if args.dataset is None else DEMO_ONLY) if _given(args, name)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        if args.dataset is None:
            raise ConfigError(f"{flag} needs --dataset")
        raise ConfigError(f"{flag} is for the demo's held-out clips, not --dataset")
    if args.dataset is not None:
        return _run_dataset(args)

    from dfrt.demo.evaluate import evaluate_bundle
    from dfrt.runtime import options
    from dfrt.runtime.default_bundle import resolve_bundle

    count = 140 if args.count is None else args.count
    options.integer("--count", count, 1, 100_000)
    options.threads(args.threads)
    options.visual_tokens(args.visual_tokens)

    strategies = _strategies(args.strategies, STRATEGIES)
    report = evaluate_bundle(
        resolve_bundle(args.bundle, progress),
        count,
        strategies,
        precision=args.precision or "fp32",
        reference=args.reference,
        clips=args.clips,
        threads=args.threads,
        progress=progress,
        visual_tokens=args.visual_tokens,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return 0


def _given(args: argparse.Namespace, name: str) -> bool:
    value = getattr(args, name)
    return value not in (None, False)


def _strategies(text: str | None, default: tuple[str, ...]) -> list[str]:
    return list(default) if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _run_dataset(args: argparse.Namespace) -> int:
    from dfrt.errors import ConfigError
    from dfrt.evaluation import EvalOptions, run_eval

    if args.out is None:
        raise ConfigError("--dataset needs --out FILE.jsonl (the rows; a run resumes from it)")
    chosen: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("bundle", "llm", "backend", "precision", "selection", "ctx", "threads", "fps",
                     "max_frames", "visual_tokens", "max_tokens", "mc_prompt", "free_prompt")
        if getattr(args, name) is not None
    }  # fmt: skip
    for name in ("mc_prompt", "free_prompt"):
        if name in chosen:
            chosen[name] = chosen[name].replace("\\n", "\n")
    options = EvalOptions(
        dataset=args.dataset,
        out=args.out,
        videos=args.videos,
        strategies=tuple(_strategies(args.strategies, DATASET_STRATEGIES)),
        letters_only=args.letters_only,
        **chosen,
    )
    bar = RowProgress("eval", "answer", every=10, enabled=not args.no_progress)
    try:
        summary = run_eval(options, on_start=bar.start, on_row=bar.row)
    finally:
        bar.close()
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.text())
    return 0
