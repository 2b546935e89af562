"""``--ray`` without an address starts dfrt's own local Ray instance: it never joins one another program runs
on this machine (found through ``$RAY_ADDRESS`` or Ray's ``ray_current_cluster`` file, as ``ray.init()``
does), and stops only what it started.

The other program is a ``ray start --head --block`` on a free loopback port, stopped by this test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    from dfrt.cluster.connect import connected
    with connected("auto") as ray:  # (its stdout goes to Ray's sink)
        print("joined", ray.get_runtime_context().gcs_address, file=sys.stderr, flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_ray_without_an_address_never_joins_or_stops_another_programs_ray() -> None:
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).parent / "ray")
    other = subprocess.Popen(
        [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _answers(port):
            assert other.poll() is None and time.monotonic() < deadline, "the other Ray did not start"
            time.sleep(0.5)
        # what ray.init() would join: the address in the environment (and the newest local cluster)
        child_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        done = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=child_env,
            timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stderr.splitlines()
        joined = next((line.split()[1] for line in lines if line.startswith("joined ")), "")
        assert joined and not joined.endswith(f":{port}"), joined  # its own instance, not the other one
        assert other.poll() is None and _answers(port)  # the other program's Ray still runs
        own = int(joined.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while _answers(own) and time.monotonic() < deadline:  # its own instance stopped with it
            time.sleep(0.5)
        assert not _answers(own)
    finally:
        other.terminate()  # `ray start --block` stops the processes it started
        try:
            other.wait(timeout=60)
        except subprocess.TimeoutExpired:
            other.kill()
            other.wait()
