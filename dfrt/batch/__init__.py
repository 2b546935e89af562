"""``dfrt batch``: answer every (video, question) pair of a JSONL file, resumably, one JSON line each.

:func:`run_batch` runs in one process (:mod:`dfrt.batch.run`); the input reader, the containment of video
paths and the append-only output live in :mod:`dfrt.batch.jobs`. stdlib only at import.
"""

from __future__ import annotations

from dfrt.batch.run import BatchOptions, BatchSummary, run_batch

__all__ = ["BatchOptions", "BatchSummary", "run_batch"]
