"""Join a Ray cluster (``ADDRESS``) or start dfrt's own local one (``auto``): quiet, no dashboard, no usage
stats. ``--ray`` without an address always starts a new instance (``ray.init(address="local")``), never joins
one that another program runs on this machine (nor ``$RAY_ADDRESS``), and stops only that instance.

Ray's own logs go to its session folder; they reach stderr only with ``--verbose``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from dfrt._optional import require
from dfrt.errors import ConfigError
from dfrt.runtime.native_log import silenced_native_stderr

log = logging.getLogger(__name__)
LOCAL = "auto"  # `--ray` without an address: a Ray instance of dfrt's own, on this machine
CONNECT_TIMEOUT = 10.0  # seconds for the cluster's address to answer before Ray is asked to join it


def check_address(address: str) -> str:
    """``auto`` or ``HOST:PORT`` / ``ray://HOST:PORT`` (one :class:`ConfigError` otherwise)."""
    if not isinstance(address, str) or not address or len(address) > 300 or not address.isprintable():
        raise ConfigError("--ray ADDRESS must be HOST:PORT, ray://HOST:PORT or nothing (a local Ray)")
    if address == LOCAL:
        return address
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or any(c in host for c in "/ ?#")
    ):
        raise ConfigError(f"--ray {address[:80]!r}: give HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    return address


def preflight(address: str) -> None:
    """Before any work: the address is well formed, Ray is installed, and a remote cluster answers."""
    address = check_address(address)
    require("ray", "dfrt[ray]")
    if address != LOCAL:
        _reachable(address)


@contextlib.contextmanager
def connected(address: str, verbose: bool = False) -> Iterator[Any]:
    """Ray, initialised for this block: ``auto`` starts a new local instance of dfrt's own (stopped after;
    one another program runs here is neither joined nor stopped), an address joins that cluster (left
    running: only this driver disconnects). Yields the ``ray`` module."""
    address = check_address(address)
    ray: Any = require("ray", "dfrt[ray]")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not verbose:  # Ray's C++ core logs to this process's stderr; its Python errors still reach us
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if ray.is_initialized():  # embedded: the caller owns the connection
        yield ray
        return
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
        "configure_logging": True,
    }
    if address == LOCAL:
        kwargs["address"] = "local"  # Ray's "start a new one": None or "auto" would join a running instance
        kwargs["include_dashboard"] = False
    else:
        _reachable(address)  # Ray itself retries an unreachable address for minutes
        kwargs["address"] = address
    try:
        with silenced_native_stderr():  # Ray's C++ start-up lines
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"--ray {address}: cannot connect to the Ray cluster ({_first_line(e)})") from e
    # Ray's driver prints cluster events (a node died) to sys.stdout from a thread of its own: dfrt's stdout
    # is for results (--json), so they go to stderr with --verbose and nowhere without
    sink = sys.stderr if verbose else open(os.devnull, "w")  # noqa: SIM115 (closed below)
    try:
        with contextlib.redirect_stdout(sink):
            try:
                _quiet_data(verbose)
                yield ray
            finally:
                ray.shutdown()  # flushes Ray's last messages: still into the sink
    finally:
        if sink is not sys.stderr:
            sink.close()


def _reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A TCP connection to the cluster's HOST:PORT opens within ``timeout`` (:class:`ConfigError` if not)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(f"--ray {address}: no Ray cluster reachable there ({reason})") from None


def _quiet_data(verbose: bool) -> None:
    """Ray Data's progress bars and per-dataset log lines off (dfrt prints its own progress)."""
    with contextlib.suppress(ImportError):
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = verbose
        context.print_on_execution_start = verbose
    if not verbose:  # dfrt says what matters in its own words (a video retried, an error row)
        for name in ("ray", "ray.data", "ray.serve"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
