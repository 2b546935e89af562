"""Answer a questions file in one process: one pipeline, each video decoded once for all its questions.

Rows are written in this order: the lines that cannot be answered (bad JSON, empty question, a path out of
VIDEOS, a duplicate, ...), then the videos in order of first mention, each video's questions in input order.
A video that fails to decode, or a question that fails, is an error row (``"error"``); the job goes on.
Sampling defaults to greedy (``temperature`` 0): a batch is reproducible and a resumed run answers as the
first one would have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfrt.batch.jobs import Job, open_output, read_jobs, videos_root
from dfrt.errors import ConfigError, DfrtError
from dfrt.runtime import options as check
from dfrt.runtime.defaults import DEFAULT_FPS, DEFAULT_MAX_FRAMES, DEFAULT_MAX_TOKENS, DEFAULT_TOP_P

if TYPE_CHECKING:
    from dfrt.cluster.placement import Cluster
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
    selection: str | None = None  # key frames of open-VLM bundles (dfrt.scorers.selection.METHODS)

    def sampling(self) -> SamplingConfig:
        """Check every option (one :class:`~dfrt.errors.DfrtError` line) and return the sampling config."""
        from dfrt.runtime.generate import SamplingConfig

        check.fps(self.fps)
        check.max_frames(self.max_frames)
        check.visual_tokens(self.visual_tokens)
        if self.ctx is not None:
            check.ctx(self.ctx)
        if self.llm is not None:
            check.path("--llm", self.llm)
        return SamplingConfig(self.max_tokens, self.temperature, self.top_p, self.seed)


@dataclass(frozen=True)
class BatchSummary:
    """What one run did. ``pairs``: usable or not, every non-blank input line; ``skipped``: already in the
    output; ``answered`` + ``errors``: rows this run wrote."""

    out: Path
    pairs: int
    answered: int
    errors: int
    skipped: int
    videos: int  # decoded by this run
    seconds: float
    torn_line_dropped: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out), "seconds": round(self.seconds, 3)}


def run_batch(
    options: BatchOptions,
    pipeline: Pipeline | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    cluster: Cluster | None = None,
) -> BatchSummary:
    """Answer every pair of ``options.questions`` not yet in ``options.out``, appending one row each.

    ``pipeline``: an open pipeline to use (not closed here); None opens one from ``options`` when some pair
    needs it. ``on_start(pending, skipped)`` is called once before the work, ``on_row(row)`` after each row.
    ``cluster``: answer on Ray instead (:mod:`dfrt.cluster.batch`; the videos spread over an actor pool).
    """
    if cluster is not None and pipeline is not None:
        raise ConfigError("give an open pipeline or a Ray cluster, not both")
    start = time.perf_counter()
    sampling = options.sampling()  # every option checked before anything is read or loaded
    if cluster is not None:
        from dfrt.cluster.connect import preflight

        preflight(cluster.address)
    root = videos_root(options.videos)
    jobs = read_jobs(options.questions, root)
    protected = [pipeline.bundle.root] if pipeline is not None else _bundle_dirs(options)
    output = open_output(options.out, inputs=[options.questions], protected=protected)
    counts = {"answered": 0, "errors": 0, "videos": 0}
    try:
        pending = [job for job in jobs if job.key not in output.done]
        if on_start is not None:
            on_start(len(pending), len(jobs) - len(pending))

        def write(row: dict[str, Any]) -> None:
            try:
                output.append(row)
            except ValueError as e:  # a non-finite number: not JSON
                row = {**_input_fields(row), "error": f"the answer cannot be written as JSON ({e})"}
                output.append(row)
            counts["errors" if "error" in row else "answered"] += 1
            if on_row is not None:
                on_row(row)

        for job in pending:
            if job.error is not None:
                write({**job.fields, "error": job.error})
        groups: dict[Path, list[Job]] = {}
        for job in pending:
            if job.path is not None:
                groups.setdefault(job.path, []).append(job)
        if groups:
            if cluster is not None:
                from dfrt.cluster.batch import answer_on_ray

                _check_bundle(options)  # a bad bundle is one error here, not one per Ray worker
                answer_on_ray(options, groups, write, counts, cluster)
            elif pipeline is not None:
                _answer_all(pipeline, options, sampling, groups, write, counts)
            else:
                with open_pipeline(options) as pipe:
                    _answer_all(pipe, options, sampling, groups, write, counts)
    finally:
        output.close()
    return BatchSummary(
        out=options.out,
        pairs=len(jobs),
        skipped=len(jobs) - counts["answered"] - counts["errors"],
        seconds=time.perf_counter() - start,
        torn_line_dropped=output.torn,
        **counts,
    )


def _answer_all(
    pipe: Pipeline,
    options: BatchOptions,
    sampling: SamplingConfig,
    groups: dict[Path, list[Job]],
    write: Callable[[dict[str, Any]], None],
    counts: dict[str, int],
) -> None:
    for path, group in groups.items():
        rows, decoded = answer_group(pipe, options, sampling, path, group)
        counts["videos"] += decoded
        for row in rows:
            write(row)


def answer_group(
    pipe: Pipeline, options: BatchOptions, sampling: SamplingConfig, path: Path, group: list[Job]
) -> tuple[list[dict[str, Any]], bool]:
    """The rows of one video's questions (decoded once), and whether it decoded: a video that does not
    decode is an error row per question, a question that fails is an error row."""
    log.info("decoding %s for %d question(s)", path, len(group))
    try:
        video = pipe.load_video(path, options.fps, options.max_frames, options.visual_tokens)
    except (DfrtError, OSError) as e:
        return [{**job.fields, "error": _one_line(e)} for job in group], False
    return [_answer(pipe, video, job, sampling) for job in group], True


def _answer(pipe: Pipeline, video: Video, job: Job, sampling: SamplingConfig) -> dict[str, Any]:
    """One row: the job's input fields, then the answer and its selection (or ``error``)."""
    from dfrt.runtime.report import answer_document

    start = time.perf_counter()
    try:
        result = pipe.ask(video, job.question, sampling)
    except (DfrtError, OSError) as e:
        return {**job.fields, "error": _one_line(e)}
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
        threads,
        options.precision,
        selection=options.selection,
    )


def _check_bundle(options: BatchOptions) -> None:
    """Open the bundle (manifest, files, hashes) once on the driver before the workers do."""
    from dfrt.runtime.bundle import Bundle
    from dfrt.runtime.default_bundle import resolve_bundle

    Bundle.open(resolve_bundle(options.bundle, lambda message: log.info("%s", message)))


def _bundle_dirs(options: BatchOptions) -> list[Path]:
    """The directories --out must not be inside: the bundle (when named or already resolvable)."""
    from dfrt.runtime.default_bundle import resolve_bundle

    return [resolve_bundle(options.bundle, assemble=False)]


def _input_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("line", "id", "video", "question", "duplicate_of") if k in row}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500]
