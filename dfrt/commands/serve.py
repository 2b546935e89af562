"""`dfrt serve`: an OpenAI-compatible HTTP server for video questions, with a page to try it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dfrt.commands import add_alert_options, add_cluster_options, add_model_options, progress


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.runtime import defaults

    add_model_options(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0: any free port)")
    p.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAMES",
        help="Host header names answered beyond localhost, IP addresses and --host (comma-separated; "
        ".domain: it and its subdomains; *: any); a guard against DNS rebinding",
    )
    p.add_argument(
        "--media-path",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="serve local videos under DIR (file:// URLs or paths); repeatable; default: none",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("DFRT_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $DFRT_API_KEY, else no key)",
    )
    p.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model id in /v1/models and responses (default: the bundle directory's name)",
    )
    p.add_argument(
        "--queue", type=int, default=8, help="requests waiting beyond the running ones (default 8)"
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="requests worked on at once, 1-64 (default 1): N LLM slots, each its own context and KV cache "
        "over weights loaded once; --threads is per slot (N x threads; default: the cores shared)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queueing included")
    p.add_argument("--cache-mb", type=float, default=512.0, help="decoded-video cache size in MiB (0: off)")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="request size limit in MiB (default 64)")
    p.add_argument(
        "--allow-remote-media",
        action="store_true",
        help="let requests name http(s) video URLs (fetched within --max-body-mb and --remote-timeout)",
    )
    p.add_argument(
        "--remote-timeout",
        type=float,
        default=30.0,
        help="seconds to fetch a remote video, redirects and all",
    )
    p.add_argument(
        "--allow-private-media",
        action="store_true",
        help="let remote URLs (and their redirects) reach loopback, link-local and private addresses",
    )
    p.add_argument(
        "--max-media-mb",
        type=float,
        default=2048.0,
        help="largest local media file read, in MiB (default 2048)",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a client has to send a request's headers, and again its body (default 30)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections in all (default 256; more are closed)",
    )
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=32,
        help="open connections from one address (default 32)",
    )
    p.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="watch a live source (as dfrt watch SRC) and answer requests naming stream://NAME over its "
        "window; repeatable",
    )
    p.add_argument("--watch-window", default="120s", help="seconds each stream's window keeps (default 120s)")
    p.add_argument(
        "--watch-fps", type=float, default=defaults.DEFAULT_FPS, help="frames sampled per second (default 1)"
    )
    alerts = p.add_argument_group("alerts on watched streams (docs/serving.md#alerts)")
    add_alert_options(alerts, per_stream=True)
    alerts.add_argument(
        "--events-kept",
        type=int,
        default=100,
        metavar="N",
        help="events (with thumbnails) each stream keeps for /v1/streams/NAME/events (default 100)",
    )
    alerts.add_argument(
        "--max-event-clients",
        type=int,
        default=32,
        help="clients following stream events at once; more get 503 (default 32)",
    )
    add_cluster_options(p, "replica")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.commands import cluster
    from dfrt.errors import ConfigError
    from dfrt.live.events import parse_size
    from dfrt.live.options import parse_cooldown, parse_duration
    from dfrt.serve import ServeOptions, run_server
    from dfrt.serve.stream_events import parse_alert

    watch = []
    for pair in args.watch:
        name, sep, source = pair.partition("=")
        if not sep or not name or not source:
            raise ConfigError(f"--watch must be NAME=SRC (e.g. cam=rtsp://host/stream), got {pair[:80]!r}")
        watch.append((name, source))

    options = ServeOptions(
        bundle=args.bundle,
        llm=args.llm,
        host=args.host,
        port=args.port,
        allowed_hosts=tuple(n for names in args.allowed_hosts for n in names.split(",") if n.strip()),
        media_paths=tuple(args.media_path),
        api_key=args.api_key,
        backend=args.backend,
        precision=args.precision,
        selection=args.selection,
        threads=args.threads,
        model_name=args.served_model_name,
        ctx=args.ctx,
        queue=args.queue,
        parallel=args.parallel,
        timeout=args.timeout,
        cache_mb=args.cache_mb,
        max_body_mb=args.max_body_mb,
        allow_remote_media=args.allow_remote_media,
        remote_timeout=args.remote_timeout,
        allow_private_media=args.allow_private_media,
        max_media_mb=args.max_media_mb,
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        watch=tuple(watch),
        watch_window=parse_duration(args.watch_window, "--watch-window"),
        watch_fps=args.watch_fps,
        alerts=tuple(parse_alert(pair) for pair in args.alert),
        alert_every=parse_duration(args.alert_every, "--alert-every"),
        confirm=args.confirm,
        cooldown=parse_cooldown(args.cooldown),
        events_dir=None if args.events is None else Path(args.events),
        events_size=parse_size(args.events_size),
        webhooks=tuple(args.webhook),
        events_kept=args.events_kept,
        max_event_clients=args.max_event_clients,
    )
    if args.ray is not None and args.parallel != 1:
        raise ConfigError(
            "--parallel is for a local server; with --ray, requests run at once on the replicas "
            "(--replicas, --max-replicas)"
        )
    on_ray = cluster(args)
    if on_ray is not None:
        from dfrt.cluster.serve import run_ray_server

        return run_ray_server(options, on_ray, progress)
    return run_server(options, progress)
