"""`dfrt batch VIDEOS QUESTIONS --out ANSWERS`: answer a JSONL file of video questions, resumably."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.commands import (
    RowProgress,
    add_cluster_options,
    add_model_options,
    add_sampling_options,
)


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.runtime import defaults

    p.add_argument("videos", type=Path, metavar="VIDEOS", help="directory the questions' video paths are in")
    p.add_argument(
        "questions",
        type=Path,
        metavar="QUESTIONS",
        help='JSON Lines: {"video": PATH relative to VIDEOS, "question": TEXT, "id": optional}',
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="JSON Lines answers file; appended to, and the pairs already in it are skipped (resume)",
    )
    add_model_options(p)
    p.add_argument("--fps", type=float, default=defaults.DEFAULT_FPS, help="frames sampled per second")
    p.add_argument("--max-frames", type=int, default=defaults.DEFAULT_MAX_FRAMES, help="frame cap")
    p.add_argument("--visual-tokens", type=int, metavar="N", help="answer within N visual tokens")
    add_sampling_options(p, temperature=0.0)  # 0: reproducible, so a resumed run answers as a whole one
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    add_cluster_options(p, "actor")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.batch.run import BatchOptions, run_batch
    from dfrt.commands import cluster, options

    on_ray = cluster(args)
    bar = RowProgress("batch", "pair", every=1, enabled=not args.no_progress)
    try:
        summary = run_batch(options(BatchOptions, args), on_start=bar.start, on_row=bar.row, cluster=on_ray)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        torn = ", a torn last line dropped" if summary.torn_line_dropped else ""
        print(
            f"{summary.pairs} pairs: {summary.answered} answered, {summary.errors} errors, "
            f"{summary.skipped} already in {summary.out}; {summary.videos} videos decoded, "
            f"{summary.seconds:.1f} s{torn}"
        )
    return 0
