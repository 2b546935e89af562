"""``dfrt serve`` as a command in its own process: starts, answers /health, refuses bad options, stops."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.serve.conftest import Server

httpx = pytest.importorskip("httpx")

LAUNCH = (
    "import argparse, sys; from dfrt.commands import serve; p = argparse.ArgumentParser(); "
    "serve.register(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))"
)


def test_the_command_serves_and_stops_on_sigterm(server: Server) -> None:
    env = {**os.environ, "DFRT_CACHE_DIR": str(server.cache)}
    command = [sys.executable, "-c", LAUNCH, "--bundle", str(server.bundle), "--port", "0", "--queue", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline, log = time.monotonic() + 60, ""
        while (match := re.search(r"running on http://127\.0\.0\.1:(\d+)", log)) is None:
            assert process.poll() is None and time.monotonic() < deadline, log
            log += process.stderr.readline()  # type: ignore[union-attr]
        reply = httpx.get(f"http://127.0.0.1:{match.group(1)}/health", timeout=10)
        assert reply.json()["status"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught


def test_bad_options_are_one_error_before_loading(tmp_path) -> None:
    from dfrt.commands import serve
    from dfrt.errors import ConfigError

    parser = argparse.ArgumentParser()
    serve.register(parser)
    for argv in (
        ["--queue", "-1"],
        ["--timeout", "0"],
        ["--media-path", str(tmp_path / "missing")],
        ["--port", "70000"],
    ):
        with pytest.raises(ConfigError):
            serve.run(parser.parse_args(argv))
