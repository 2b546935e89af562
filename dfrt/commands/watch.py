"""`dfrt watch SRC [SRC ...]`: cameras or streams into rolling windows; questions on stdin or a schedule."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfrt.commands import add_alert_options, add_model_options, add_sampling_options, progress
from dfrt.commands import sampling as sampling_config


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.live.multi import MAX_SOURCES
    from dfrt.runtime import defaults

    p.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="camera index or /dev/videoN, rtsp://, udp://, rtp://, http(s):// (MJPEG, HLS) URL, or a file; "
        f"NAME=SRC names it; up to {MAX_SOURCES}, sharing one model (docs/live.md#several-sources)",
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
    alerts = p.add_argument_group("alerts (docs/live.md#alerts)")
    add_alert_options(alerts, per_stream=False)
    alerts.add_argument(
        "--on-event",
        action="append",
        default=[],
        metavar="CMD",
        help="run CMD (no shell) with each event's JSON on stdin (repeatable; default: none)",
    )
    alerts.add_argument(
        "--hook-timeout", default="10s", help="an --on-event command is killed after this long (default 10s)"
    )
    add_sampling_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.live.app import STATUS_EVERY, keep_status_signal, run_watch
    from dfrt.live.events import parse_size
    from dfrt.live.options import WatchOptions, parse_cooldown, parse_duration

    keep_status_signal()  # `kill -USR1` asks for a status line; it never ends the process

    status_every = args.status_every or (STATUS_EVERY if getattr(args, "verbose", False) else None)
    opts = WatchOptions(
        source=args.sources[0],
        sources=tuple(args.sources),
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
        alerts=tuple(args.alert),
        alert_every=parse_duration(args.alert_every, "--alert-every"),
        confirm=args.confirm,
        cooldown=parse_cooldown(args.cooldown),
        events_dir=None if args.events is None else Path(args.events),
        events_size=parse_size(args.events_size),
        on_event=tuple(args.on_event),
        hook_timeout=parse_duration(args.hook_timeout, "--hook-timeout"),
        webhooks=tuple(args.webhook),
    )
    try:
        return run_watch(opts, progress=progress)
    finally:
        keep_status_signal(ending=True)
