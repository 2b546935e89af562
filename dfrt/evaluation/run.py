"""``dfrt eval --dataset``: a bundle's accuracy on a labelled JSON Lines dataset, per frame strategy.

One output row per (dataset line, strategy), appended whole and ``fsync``-ed to an output only dfrt eval
writes (:func:`dfrt.batch.jobs.open_output`: locked, a torn last line dropped, a foreign file refused); a run
skips the (line, strategy) pairs already in it, so a killed run resumes without duplicates and the summary
always covers every row of the output that belongs to the dataset. Lines that cannot be used are error rows;
so is a strategy that fails on a line (a video that does not decode: one per strategy); the run goes on.
Each video is decoded once for all its lines and strategies. Answers are greedy (temperature 0).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfrt.batch.jobs import Output, open_output
from dfrt.errors import ConfigError, DfrtError
from dfrt.evaluation.dataset import EvalItem, Key, dataset_root, item_key, read_items
from dfrt.evaluation.report import EvalSummary, Outcome, Scores
from dfrt.evaluation.scoring import FREE_PROMPT, MC_PROMPT, fill, judge_choice, judge_free
from dfrt.evaluation.strategies import STRATEGIES, check_strategies, full_frames, strategy_frames
from dfrt.jsonio import parse_json
from dfrt.runtime import options as check
from dfrt.runtime.defaults import DEFAULT_FPS, DEFAULT_MAX_FRAMES

if TYPE_CHECKING:
    from dfrt.evaluation.strategies import FullFrames
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline, Video

log = logging.getLogger(__name__)

MAX_TOKENS = 16  # lmms-eval's Video-MME generation length (max_new_tokens 16, greedy)


@dataclass(frozen=True)
class EvalOptions:
    """``dfrt eval --dataset``'s options; model and video options mean what they mean for ``dfrt infer``."""

    dataset: Path
    out: Path
    videos: Path | None = None  # None: the dataset's folder
    strategies: tuple[str, ...] = STRATEGIES
    bundle: Path | None = None  # None: as dfrt infer ($DFRT_BUNDLE, <cache>/bundle, the demo)
    llm: Path | None = None
    backend: str = "auto"
    precision: str | None = None
    selection: str | None = None
    ctx: int | None = None
    threads: int | None = None
    fps: float = DEFAULT_FPS
    max_frames: int = DEFAULT_MAX_FRAMES
    visual_tokens: int | None = None
    max_tokens: int = MAX_TOKENS
    mc_prompt: str = MC_PROMPT
    free_prompt: str = FREE_PROMPT
    letters_only: bool = False  # multiple choice: no option matched by its text

    def sampling(self) -> SamplingConfig:
        """Check every option (one :class:`~dfrt.errors.DfrtError` line); the greedy sampling config."""
        from dfrt.runtime.generate import SamplingConfig

        check_strategies(tuple(self.strategies))
        check.fps(self.fps)
        check.max_frames(self.max_frames)
        check.visual_tokens(self.visual_tokens)
        check.threads(self.threads)
        if self.ctx is not None:
            check.ctx(self.ctx)
        if self.llm is not None:
            check.path("--llm", self.llm)
        for flag, template in (("--mc-prompt", self.mc_prompt), ("--free-prompt", self.free_prompt)):
            if not isinstance(template, str) or "{question}" not in template:
                shown = check.display(str(template)[:60])
                raise ConfigError(f"{flag} must contain {{question}}, got {shown}")
        return SamplingConfig(self.max_tokens, temperature=0.0)


def run_eval(
    options: EvalOptions,
    pipeline: Pipeline | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> EvalSummary:
    """Evaluate every (line, strategy) of ``options.dataset`` not yet in ``options.out``; the summary of
    every row of the output that belongs to the dataset.

    ``pipeline``: an open pipeline to use (not closed here); None opens one when some line needs it.
    ``on_start(pending, skipped)`` is called once before the work, ``on_row(row)`` after each row written.
    """
    start = time.perf_counter()
    sampling = options.sampling()  # every option checked before anything is read or loaded
    strategies = tuple(options.strategies)
    root = dataset_root(options.dataset, options.videos)
    items = read_items(options.dataset, root)
    protected = [pipeline.bundle.root] if pipeline is not None else _bundle_dirs(options)
    output = open_output(options.out, inputs=[options.dataset], protected=protected)
    try:
        rows = read_rows(output)
        counts = {"written": 0, "videos": 0}

        def write(row: dict[str, Any]) -> None:
            try:
                output.append(row)
            except ValueError as e:  # a non-finite number: not JSON
                row = {**_fields(row), "error": f"the row cannot be written as JSON ({e})"}
                output.append(row)
            rows[row_key(row)] = Scores.record(row)
            counts["written"] += 1
            if on_row is not None:
                on_row(row)

        todo = [(item, None) for item in items if item.error is not None]
        todo += [(item, s) for item in items if item.error is None for s in strategies]
        pending = [(item, s) for item, s in todo if (item.key, s) not in rows]
        if on_start is not None:
            on_start(len(pending), len(todo) - len(pending))
        for item, _ in pending:
            if item.error is not None:
                write({**item.fields, "error": item.error})
        groups: dict[Path, list[tuple[EvalItem, str]]] = {}
        for item, strategy in pending:
            if item.path is not None and strategy is not None:
                groups.setdefault(item.path, []).append((item, strategy))
        if groups:
            if pipeline is not None:
                counts["videos"] = _evaluate_all(pipeline, options, sampling, groups, write)
            else:
                with open_pipeline(options) as pipe:
                    counts["videos"] = _evaluate_all(pipe, options, sampling, groups, write)
    finally:
        output.close()
    return EvalSummary.of(
        items,
        strategies,
        rows,
        dataset=options.dataset,
        out=options.out,
        written=counts["written"],
        skipped=len(todo) - len(pending),
        videos=counts["videos"],
        seconds=time.perf_counter() - start,
        torn_line_dropped=output.torn,
    )


def row_key(row: dict[str, Any]) -> tuple[Key, str | None]:
    """A row's (dataset line, strategy): an input line's error row has no strategy."""
    strategy = row.get("strategy")
    return item_key(row), strategy if isinstance(strategy, str) else None


def read_rows(output: Output) -> dict[tuple[Key, str | None], Outcome]:
    """The rows already in the output (whole lines: :func:`open_output` dropped a torn one), by key; a row
    that is not a dfrt eval row (no strategy and no error: ``dfrt batch``'s, say) refuses the file."""
    rows: dict[tuple[Key, str | None], Outcome] = {}
    with os.fdopen(os.dup(output.fd), "rb") as handle:
        handle.seek(0)
        for number, line in enumerate(handle, start=1):
            row = parse_json(line.decode("utf-8"), f"--out {output.path} line {number}")
            if not isinstance(row.get("strategy"), str) and "error" not in row:
                raise ConfigError(
                    f"--out {output.path} line {number} is not a dfrt eval row: refusing to append; "
                    "give a new file"
                )
            rows[row_key(row)] = Scores.record(row)
    return rows


def _evaluate_all(
    pipe: Pipeline,
    options: EvalOptions,
    sampling: SamplingConfig,
    groups: dict[Path, list[tuple[EvalItem, str]]],
    write: Callable[[dict[str, Any]], None],
) -> int:
    """Each video decoded once, then its lines' pending strategies; returns the videos decoded."""
    frames = full_frames(pipe)
    decoded = 0
    for path, work in groups.items():
        log.info("decoding %s for %d answer(s)", path, len(work))
        start = time.perf_counter()
        try:
            video = pipe.load_video(path, options.fps, options.max_frames, options.visual_tokens)
        except (DfrtError, OSError) as e:
            for item, strategy in work:
                write({**item.fields, "strategy": strategy, "error": _one_line(e)})
            continue
        decoded += 1
        load = time.perf_counter() - start
        for item, strategy in work:
            write(_answer(pipe, frames, video, item, strategy, options, sampling, load))
    return decoded


def prompt_of(item: EvalItem, options: EvalOptions) -> str:
    """The text the LLM is asked (inside the bundle's own chat template)."""
    if item.multiple_choice:
        return fill(options.mc_prompt, item.question, item.options)
    return fill(options.free_prompt, item.question)


def _answer(
    pipe: Pipeline,
    frames: FullFrames | None,
    video: Video,
    item: EvalItem,
    strategy: str,
    options: EvalOptions,
    sampling: SamplingConfig,
    load: float,
) -> dict[str, Any]:
    """One row: the line's fields, the strategy, the response and how it was judged (or ``error``)."""
    start = time.perf_counter()
    prompt = prompt_of(item, options)
    try:
        chosen, rods = strategy_frames(strategy, pipe, frames, video, prompt, sampling.max_tokens)
        # the frames are chosen for the question itself; the LLM reads the whole prompt
        visual = pipe.embed(video, item.question, chosen, rods)
        embedded = time.perf_counter()
        answer = pipe.answer(prompt, visual.prompt, sampling)
    except (DfrtError, OSError) as e:
        return {**item.fields, "strategy": strategy, "error": _one_line(e)}
    if item.multiple_choice:
        judged = judge_choice(answer.text, item.options, item.answers[0], options.letters_only)
    else:
        judged = judge_free(answer.text, item.answers)
    sampled = video.sampled
    shown = visual.tokens_per_frame
    row: dict[str, Any] = {
        **item.fields,
        "strategy": strategy,
        "response": answer.text,
        "prediction": judged.prediction,
        "correct": judged.correct,
    }
    if item.multiple_choice:
        row["matched_by"] = judged.matched_by
    row |= {
        "visual_tokens": answer.visual_tokens,
        "full_frames": [
            {"frame": int(i), "time": round(float(sampled.timestamps[i]), 3)}
            for i in visual.selection.key_frames
        ],
        "frames_shown": int((shown > 0).sum()),
        "sampled_frames": sampled.num_frames,
        "tokens": {
            "prompt": answer.prompt_tokens,
            "generated": answer.generated_tokens,
            "question_dropped": answer.question_tokens_dropped,
        },
        "stop_reason": answer.stop_reason,
        "timings": {
            "video": round(load, 4),  # decode + question-independent encoding, once for all its rows
            "visual": round(embedded - start, 4),
            "llm_prefill": round(answer.prefill_seconds, 4),
            "total": round(time.perf_counter() - start, 4),
        },
    }
    return row


def open_pipeline(options: EvalOptions) -> Pipeline:
    """The pipeline ``options`` name."""
    from dfrt.runtime.default_bundle import resolve_bundle
    from dfrt.runtime.pipeline import Pipeline

    bundle = resolve_bundle(options.bundle, lambda message: log.info("%s", message))
    log.info("loading bundle %s", bundle)
    return Pipeline(
        bundle,
        options.llm,
        options.backend,
        options.ctx,
        options.threads,
        options.precision,
        selection=options.selection,
    )


def _bundle_dirs(options: EvalOptions) -> list[Path]:
    """The directories --out must not be inside: the bundle (when named or already resolvable)."""
    from dfrt.runtime.default_bundle import resolve_bundle

    return [resolve_bundle(options.bundle, assemble=False)]


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("line", "id", "video", "question", "format", "options", "expected", "type", "strategy")
    return {k: row[k] for k in keep if k in row}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500]
