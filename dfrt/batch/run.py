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

from dfrt.batch.answer import BatchOptions, answer_group, open_pipeline
from dfrt.batch.jobs import Job, open_output, read_jobs, videos_root
from dfrt.errors import ConfigError

if TYPE_CHECKING:
    from dfrt.cluster.placement import Cluster
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


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
