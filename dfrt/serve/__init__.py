"""``dfrt serve``: an OpenAI-compatible video question answering server (FastAPI + uvicorn, extra ``serve``).

:func:`run_server` opens the bundle once and serves until interrupted; :func:`open_engine` and
:func:`create_app` give the pieces to embed or test. The runtime (:mod:`dfrt.runtime`) never imports this
package; this package imports FastAPI only in :mod:`dfrt.serve.app`. See ``docs/serving.md``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfrt.errors import ConfigError
from dfrt.serve.connections import ConnectionLimits, server_config
from dfrt.serve.engine import Engine, ServeOptions

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "Engine",
    "ServeOptions",
    "connection_limits",
    "create_app",
    "open_engine",
    "run_server",
    "server_config",
]
log = logging.getLogger(__name__)
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)


def check_options(options: ServeOptions) -> None:
    """Every option checked before anything is loaded (one :class:`ConfigError` naming the flag)."""
    from dfrt.runtime import options as check
    from dfrt.runtime.slots import check_parallel

    if not 0 <= options.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {options.port}")
    check.integer("--queue", options.queue, 0, 10_000)
    check_parallel(options.parallel)
    check.real("--timeout", options.timeout, 0.0, 86_400.0, low_open=True)
    check.real("--cache-mb", options.cache_mb, 0.0, 1 << 20)
    check.real("--max-body-mb", options.max_body_mb, 0.0, 4096.0, low_open=True)
    check.real("--remote-timeout", options.remote_timeout, 0.0, 3600.0, low_open=True)
    check.real("--max-media-mb", options.max_media_mb, 0.0, float(1 << 30), low_open=True)
    check.real("--read-timeout", options.read_timeout, 0.0, 86_400.0, low_open=True)
    check.integer("--max-connections", options.max_connections, 1, 1 << 20)
    check.integer("--max-connections-per-client", options.max_connections_per_client, 1, 1 << 20)
    if options.ctx is not None:
        check.ctx(options.ctx)
    check.threads(options.threads)
    from dfrt.serve.hosts import check_allowed_hosts

    check_allowed_hosts(options.allowed_hosts)
    check_api_key(options.api_key)
    for root in options.media_paths:
        if not Path(root).is_dir():
            raise ConfigError(f"--media-path {root}: not a directory")
    check_watch(options)
    from dfrt.serve.stream_events import check_alerts

    check_alerts(options)  # --alert NAME=RULE, --events, --webhook


def check_api_key(key: str | None) -> None:
    """A key a client can send as ``Authorization: Bearer KEY``: visible ASCII only (no surrounding or inner
    spaces, which clients and proxies trim or fold; no byte beyond ASCII, which HTTP headers do not carry as
    typed), at most 4096 characters; or none."""
    if key is None:
        return
    if not key.strip():
        raise ConfigError("--api-key must not be empty")
    if key != key.strip():
        raise ConfigError(
            "--api-key has spaces around it: a client's header would not carry them; remove them"
        )
    bad = next((c for c in key if not 0x21 <= ord(c) <= 0x7E), None)
    if bad is not None:
        raise ConfigError(
            f"--api-key holds {bad!r} (U+{ord(bad):04X}): an HTTP header carries visible ASCII only "
            "(letters, digits, punctuation; no spaces)"
        )
    if len(key) > 4096:
        raise ConfigError("--api-key is longer than 4096 characters")


def check_watch(options: ServeOptions) -> None:
    """``--watch NAME=SRC`` pairs, ``--watch-window`` and ``--watch-fps``, checked as ``dfrt watch`` checks
    its own (one error naming the flag or the source, before the bundle loads)."""
    from dfrt.live.sources import parse_source
    from dfrt.live.watcher import WINDOW_RANGE
    from dfrt.runtime import options as check

    window = check.real("--watch-window", options.watch_window, *WINDOW_RANGE)
    fps = check.real("--watch-fps", options.watch_fps, *check.FPS_RANGE)
    if options.watch and math.ceil(window * fps) + 1 > check.MAX_FRAMES_RANGE[1]:
        raise ConfigError(
            f"--watch-window {window:g}s at --watch-fps {fps:g} holds more than {check.MAX_FRAMES_RANGE[1]} "
            "frames: shorten the window or lower the fps"
        )
    seen: set[str] = set()
    for pair in options.watch:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ConfigError(f"--watch must be NAME=SRC, got {pair!r:.80}")
        name, source = pair
        if not STREAM_NAME.fullmatch(name):
            raise ConfigError(
                f"--watch {name[:40]!r}: a stream name is 1-64 letters, digits, '_', '.' or '-' (NAME=SRC)"
            )
        if name in seen:
            raise ConfigError(f"--watch {name}: the name is given twice")
        seen.add(name)
        parse_source(source)  # a refused source is one error line (InputError), as with dfrt watch


def warn_if_open(options: ServeOptions) -> None:
    """A warning when the server listens beyond this machine without an API key."""
    if options.host not in ("127.0.0.1", "localhost", "::1") and options.api_key is None:
        log.warning("serving on %s without --api-key: anyone who can reach it can use it", options.host)


def open_engine(options: ServeOptions, progress: Callable[[str], None] = lambda message: None) -> Engine:
    """The bundle's pipeline opened once, with the cache, queue, metrics and one watcher per ``--watch``
    stream around it."""
    from dfrt.live.watcher import Watcher
    from dfrt.runtime.default_bundle import resolve_bundle
    from dfrt.runtime.pipeline import Pipeline

    check_options(options)
    bundle = resolve_bundle(options.bundle, progress)
    progress(f"loading bundle {bundle}")
    pipe = Pipeline(
        bundle,
        options.llm,
        options.backend,
        options.ctx,
        options.threads,
        precision=options.precision,
        progress=progress,
        selection=options.selection,
        parallel=options.parallel,
    )
    model_id = options.model_name or Path(bundle).resolve().name
    engine = Engine(options, pipe, model_id, workers=options.parallel)
    try:
        for name, source in options.watch:
            watcher = Watcher(pipe, source, options.watch_window, options.watch_fps)
            engine.watchers[name] = watcher
            progress(
                f"watching {name}: {watcher.source.display} "
                f"({options.watch_window:g} s window at {options.watch_fps:g} fps; ask with stream://{name})"
            )
        if options.watch:
            from dfrt.serve.stream_events import attach

            attach(engine, progress)  # the event store and the alert rules' scheduler
    except BaseException:
        engine.close()
        raise
    return engine


def create_app(engine: Engine) -> FastAPI:
    """The ASGI app serving ``engine`` (needs ``pip install 'dfrt[serve]'``)."""
    from dfrt._optional import require

    require("fastapi", "dfrt[serve]")
    from dfrt.serve.app import create_app as create

    return create(engine)


def connection_limits(options: ServeOptions) -> ConnectionLimits:
    """The open-connection caps and the head timeout of ``options``."""
    return ConnectionLimits(options.max_connections, options.max_connections_per_client, options.read_timeout)


def run_server(options: ServeOptions, progress: Callable[[str], None] = lambda message: None) -> int:
    """Serve until interrupted (Ctrl-C, SIGTERM); returns the exit code."""
    from dfrt._optional import require

    uvicorn: Any = require("uvicorn", "dfrt[serve]")
    require("fastapi", "dfrt[serve]")
    engine = open_engine(options, progress)
    try:
        from dfrt.serve.access import AccessLog, stderr_access_log

        app = AccessLog(create_app(engine), stderr_access_log())
        config = server_config(
            app, options.host, options.port, connection_limits(options), log_level="info",
            timeout_graceful_shutdown=5, access_log=False,  # dfrt's own line, with the latency
        )  # fmt: skip
        server = uvicorn.Server(config)
        warn_if_open(options)
        progress(f"serving {engine.model_id} on http://{options.host}:{options.port}/ (Ctrl-C to stop)")
        server.run()
    finally:
        engine.close()
    return 0
