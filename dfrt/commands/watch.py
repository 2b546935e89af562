"""`dfrt watch SRC`: a camera or stream into a rolling window; questions on stdin or on a schedule."""

from __future__ import annotations

import argparse

from dfrt.commands import add_model_options, add_sampling_options, progress
from dfrt.commands import sampling as sampling_config


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.runtime import defaults

    p.add_argument(
        "source",
        help="camera index or /dev/videoN, rtsp://, udp://, rtp://, http(s):// (MJPEG, HLS) URL, or a file",
    )
    add_model_options(p, ctx=False)
    p.add_argument("--window", default="120s", help="seconds of stream kept for questions (default 120s)")
    p.add_argument(
        "--fps", type=float, default=defaults.DEFAULT_FPS, help="frames sampled per second (default 1)"
    )
    p.add_argument("--realtime", action="store_true", help="play a file at its own rate, like a live stream")
    p.add_argument("--loop", action="store_true", help="replay a file from the start when it ends")
    p.add_argument(
        "--every",
        nargs=2,
        action="append",
        default=[],
        metavar=("PERIOD", "QUESTION"),
        help='a standing question asked on a schedule: --every 10s "Is anyone at the door?" (repeatable)',
    )
    p.add_argument(
        "--duration",
        help="stop after this long (e.g. 90s, 5m). Default: with --every, when the stream ends (a file's "
        "end; a camera: never); without, when stdin ends",
    )
    p.add_argument(
        "--max-reconnects",
        type=int,
        metavar="N",
        help="give up after N failed reconnects in a row (default: keep trying, backoff up to 10 s)",
    )
    p.add_argument(
        "--visual-tokens",
        type=int,
        metavar="N",
        help="answer within N visual tokens (fewer key frames, then fewer window frames): keep long windows "
        "inside the LLM context",
    )
    p.add_argument("--status-every", help="print status on stderr this often (default 10s with -v)")
    p.add_argument("--no-stdin", action="store_true", help="do not read questions from stdin")
    add_sampling_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.live.app import STATUS_EVERY, WatchOptions, keep_status_signal, parse_duration, run_watch

    keep_status_signal()  # `kill -USR1` asks for a status line; it never ends the process

    status_every = args.status_every or (STATUS_EVERY if getattr(args, "verbose", False) else None)
    opts = WatchOptions(
        source=args.source,
        bundle=args.bundle,
        llm=args.llm,
        backend=args.backend,
        precision=args.precision,
        window=parse_duration(args.window, "--window"),
        fps=args.fps,
        realtime=args.realtime,
        loop=args.loop,
        every=tuple((parse_duration(period, "--every"), question) for period, question in args.every),
        duration=None if args.duration is None else parse_duration(args.duration, "--duration"),
        sampling=sampling_config(args),
        max_reconnects=args.max_reconnects,
        visual_tokens=args.visual_tokens,
        selection=args.selection,
        threads=args.threads,
        status_every=None if status_every is None else parse_duration(status_every, "--status-every"),
        read_stdin=not args.no_stdin,
    )
    try:
        return run_watch(opts, progress=progress)
    finally:
        keep_status_signal(ending=True)
