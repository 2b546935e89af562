"""``dfrt batch --ray``: the videos spread over a Ray Data actor pool, each actor with its own pipeline.

Work travels as video *paths* (one block per video, with all its questions) and each actor decodes the whole
video itself, so key-frame selection sees every frame: Ray Data's ``read_videos`` yields frames, the wrong
unit for question-aware selection. Actors are restarted when they or their node die and a video's block is
retried (:data:`TASK_RETRIES`), then run again in a later round (:data:`ROUNDS`); a video that still fails
becomes error rows, and the job goes on. Only the driver writes the output (rows arrive as each video is
done), so resuming works as in one process. VIDEOS, and the bundle when one is named, must be at the same
path on every node.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfrt.batch.jobs import Job, row_key
from dfrt.cluster.connect import connected
from dfrt.cluster.placement import Cluster, check_capacity
from dfrt.errors import DfrtError

if TYPE_CHECKING:
    from dfrt.batch.answer import BatchOptions

log = logging.getLogger(__name__)
TASK_RETRIES = 3  # a video's block is tried again this often when its actor or node dies
MIN_ACTORS_WAIT = 600  # seconds Ray Data may wait for its first actors (they load a pipeline each)
ROUNDS = 3  # passes over the videos still unanswered (fresh actors each time) before they are error rows


class GroupAnswerer:
    """A Ray Data actor: one pipeline, answering one video's questions per row. :func:`answerer` makes the
    subclass that carries the options (as class attributes: Ray then keeps no constructor arguments in its
    object store, which a restarted actor could lose)."""

    options: BatchOptions
    threads: int | None = None

    def __init__(self) -> None:
        from dfrt.batch.answer import open_pipeline

        self.sampling = self.options.sampling()
        self.pipe = open_pipeline(self.options, self.threads)

    def __del__(self) -> None:  # Ray Data drops its actors when the dataset is done
        pipe = getattr(self, "pipe", None)
        if pipe is not None:
            pipe.close()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from dfrt.batch.answer import answer_group

        rows: list[str] = []
        decoded: list[bool] = []
        for text in batch["group"]:
            item = json.loads(str(text))
            path = Path(item["path"])
            group = [Job(fields, path=path) for fields in item["jobs"]]
            out, ok = answer_group(self.pipe, self.options, self.sampling, path, group)
            rows += [json.dumps(row, ensure_ascii=False) for row in out]  # NaN passes: the driver refuses it
            decoded += [ok] + [False] * (len(out) - 1)
        return {"row": rows, "decoded": decoded}


def answerer(options: BatchOptions, threads: int | None) -> type[GroupAnswerer]:
    """A :class:`GroupAnswerer` for ``options`` (pickled by value with them)."""
    return type("GroupAnswerer", (GroupAnswerer,), {"options": options, "threads": threads})


def answer_on_ray(
    options: BatchOptions,
    groups: dict[Path, list[Job]],
    write: Callable[[dict[str, Any]], None],
    counts: dict[str, int],
    cluster: Cluster,
) -> None:
    """Answer ``groups`` (video -> its jobs) on ``cluster``, writing each video's rows as they come.

    A video whose block fails (its actor died more often than :data:`TASK_RETRIES`, as when a node goes
    away) is run again in the next of :data:`ROUNDS`, on fresh actors; after the last, its questions are
    error rows."""
    with connected(cluster.address, cluster.verbose) as ray:
        from ray.data import DataContext

        context = DataContext.get_current()
        context.max_errored_blocks = -1  # a failing video is retried, not the job's end
        context.wait_for_min_actors_s = MIN_ACTORS_WAIT  # never wait for ever for actors to be placed
        low = min(cluster.scale.replicas["encoder"], len(groups))
        check_capacity(ray.nodes(), cluster.reserves("encoder"), low, "actor")
        pending = dict(groups)
        for _ in range(ROUNDS):
            answered = _round(ray, options, pending, write, counts, cluster)
            pending = {
                path: jobs for path, jobs in pending.items() if any(job.key not in answered for job in jobs)
            }
            if not pending:
                return
            log.warning("%d video(s) failed on Ray; running them again", len(pending))
        for jobs in pending.values():
            for job in jobs:
                message = f"the Ray worker answering this video failed in {ROUNDS} rounds; see Ray's logs"
                write({**job.fields, "error": message})


def _round(
    ray: Any,
    options: BatchOptions,
    groups: dict[Path, list[Job]],
    write: Callable[[dict[str, Any]], None],
    counts: dict[str, int],
    cluster: Cluster,
) -> set[tuple[Any, ...]]:
    """One pass of ``groups`` over an actor pool; the keys of the rows it wrote."""
    from ray.data import ActorPoolStrategy

    placement, scale = cluster.reserves("encoder"), cluster.scale
    items = [
        {"group": json.dumps({"path": str(path), "jobs": [job.fields for job in jobs]})}
        for path, jobs in groups.items()
    ]
    low, high = (min(n, len(items)) for n in (scale.replicas["encoder"], scale.max_replicas["encoder"]))
    threads = max(1, int(placement.cpus))
    with warnings.catch_warnings():  # Ray 2.60 deprecates max_task_retries here but has no other way
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            answerer(options, threads),
            batch_size=1,
            compute=ActorPoolStrategy(min_size=low, max_size=high),
            max_restarts=-1,  # Ray Data's default too: an actor whose node died starts elsewhere
            max_task_retries=TASK_RETRIES,  # not -1 (Ray Data's): a video that kills its actor ends
            **placement.actor_options(),
        )
    answered: set[tuple[Any, ...]] = set()
    try:
        for record in dataset.iter_rows():
            row = json.loads(record["row"])
            answered.add(row_key(row))
            counts["videos"] += bool(record["decoded"])
            write(row)
    except Exception as e:  # Ray wraps an actor's constructor error (a bad bundle) in its own types
        raise DfrtError(f"the Ray batch failed: {_cause(e)}") from e
    return answered


def _cause(error: BaseException) -> str:
    """The innermost error's one line (Ray nests the worker's traceback in its message)."""
    while error.__cause__ is not None:
        error = error.__cause__
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line for line in str(error).splitlines() if line.strip()]
    return " ".join((lines[-1] if lines else type(error).__name__).split())[:300]
