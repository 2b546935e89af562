"""Answering one video's questions with one pipeline: what ``dfrt batch`` runs per video, in its own process
(:mod:`dfrt.batch.run`) or on Ray actors (:mod:`dfrt.cluster.batch`); both import it, neither the other."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfrt.batch.jobs import Job
from dfrt.errors import DfrtError
from dfrt.runtime import options as check
from dfrt.runtime.defaults import DEFAULT_FPS, DEFAULT_MAX_FRAMES, DEFAULT_MAX_TOKENS, DEFAULT_TOP_P

if TYPE_CHECKING:
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline, Video

log = logging.getLogger(__name__)

# the answer_document keys a row keeps (not the per-frame list, nor what is the same for the whole run)
ROW_KEYS = ("answer", "stop_reason", "key_frames", "tokens", "visual_token_budget", "timings")


@dataclass(frozen=True)
class BatchOptions:
    """``dfrt batch``'s options; the sampling and video options mean what they mean for ``dfrt infer``."""

    videos: Path
    questions: Path
    out: Path
    bundle: Path | None = None  # None: as dfrt infer ($DFRT_BUNDLE, <cache>/bundle, the demo)
    llm: Path | None = None
    backend: str = "auto"
    precision: str | None = None
    fps: float = DEFAULT_FPS
    max_frames: int = DEFAULT_MAX_FRAMES
    visual_tokens: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0  # greedy: reproducible, and a resumed run answers as the first would have
    top_p: float = DEFAULT_TOP_P
    seed: int = 0
    ctx: int | None = None
    threads: int | None = None  # CPU threads of the graphs and the LLM (None: one per core)
    selection: str | None = None  # key frames of open-VLM bundles (dfrt.scorers.selection.METHODS)
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def sampling(self) -> SamplingConfig:
        """Check every option (one :class:`~dfrt.errors.DfrtError` line) and return the sampling config."""
        from dfrt.runtime.generate import SamplingConfig

        check.fps(self.fps)
        check.max_frames(self.max_frames)
        check.visual_tokens(self.visual_tokens)
        if self.ctx is not None:
            check.ctx(self.ctx)
        check.threads(self.threads)
        if self.llm is not None:
            check.path("--llm", self.llm)
        return SamplingConfig(
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.seed,
            self.top_k,
            self.min_p,
            self.repeat_penalty,
            self.frequency_penalty,
            self.presence_penalty,
        )


def answer_group(
    pipe: Pipeline, options: BatchOptions, sampling: SamplingConfig, path: Path, group: list[Job]
) -> tuple[list[dict[str, Any]], bool]:
    """The rows of one video's questions (decoded once), and whether it decoded: a video that does not
    decode is an error row per question, a question that fails is an error row."""
    log.info("decoding %s for %d question(s)", path, len(group))
    try:
        video = pipe.load_video(path, options.fps, options.max_frames, options.visual_tokens)
    except (DfrtError, OSError) as e:
        return [{**job.fields, "error": one_line(e)} for job in group], False
    return [_answer(pipe, video, job, sampling) for job in group], True


def _answer(pipe: Pipeline, video: Video, job: Job, sampling: SamplingConfig) -> dict[str, Any]:
    """One row: the job's input fields, then the answer and its selection (or ``error``)."""
    from dfrt.runtime.report import answer_document

    start = time.perf_counter()
    try:
        result = pipe.ask(video, job.question, sampling)
    except (DfrtError, OSError) as e:
        return {**job.fields, "error": one_line(e)}
    document = answer_document(pipe, result, job.question, time.perf_counter() - start)
    row = {**job.fields, **{k: document[k] for k in ROW_KEYS}}
    row["sampled_frames"] = document["video"]["sampled_frames"]
    row["decode_tokens_per_second"] = document["decode_tokens_per_second"]
    return row


def open_pipeline(options: BatchOptions, threads: int | None = None) -> Pipeline:
    """The pipeline ``options`` name (``threads``: the graphs' and the LLM's CPU threads; None: defaults)."""
    from dfrt.runtime.default_bundle import resolve_bundle
    from dfrt.runtime.pipeline import Pipeline

    bundle = resolve_bundle(options.bundle, lambda message: log.info("%s", message))
    log.info("loading bundle %s", bundle)
    return Pipeline(
        bundle,
        options.llm,
        options.backend,
        options.ctx,
        options.threads if threads is None else threads,
        options.precision,
        selection=options.selection,
    )


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500]
