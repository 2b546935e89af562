"""`dfrt watch` under a flood of signals (thousands a second): SIGUSR1 only asks for status lines, SIGINT and
SIGTERM end the run once and cleanly (exit 130, one line), never a RecursionError or a traceback.

Each test starts one `dfrt watch` child on a sample file (no network), floods it for a bounded time and
kills it in a ``finally`` if it is still there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import IO

import pytest

from tests.live.conftest import CLIP, QUESTION, ROOT

pytestmark = [
    pytest.mark.runtime,
    pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals"),
]
FLOOD_SECONDS = 2.0


def start_watch(*extra: str) -> tuple[subprocess.Popen[str], list[str], list[str], threading.Event]:
    """A `dfrt watch` child asking QUESTION every 2 s; its stdout and stderr lines collected by threads; the
    event is set at its first answer (it runs: stderr lines can be lost while FFmpeg's are silenced)."""
    from dfrt.runtime.default_bundle import shipped_demo

    args = ["--bundle", str(shipped_demo()), "--realtime", "--loop", "--window", "8s", "--no-stdin"]
    child = subprocess.Popen(
        [sys.executable, "-m", "dfrt.cli", "watch", str(CLIP), *args, "--every", "2s", QUESTION, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    out: list[str] = []
    err: list[str] = []
    answering = threading.Event()

    def read(stream: IO[str], lines: list[str], first: threading.Event | None) -> None:
        for line in stream:
            lines.append(line)
            if first is not None:
                first.set()

    threading.Thread(target=read, args=(child.stdout, out, answering), daemon=True).start()
    threading.Thread(target=read, args=(child.stderr, err, None), daemon=True).start()
    return child, out, err, answering


def finish(child: subprocess.Popen[str]) -> None:
    try:
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    time.sleep(0.2)  # the reader threads take the last lines


SENDER = """
import os, sys, time
pid, signals, end, sent = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], float(sys.argv[3]), 0
while time.time() < end:
    try:
        os.kill(pid, signals[sent % len(signals)])
    except ProcessLookupError:
        break
    sent += 1
print(sent)
"""


def flood(child: subprocess.Popen[str], signals: tuple[int, ...], seconds: float, senders: int = 3) -> int:
    """``senders`` processes send ``signals`` in turn as fast as they can for ``seconds`` (one sender did not
    reproduce the RecursionError; three did); returns how many were sent."""
    end = str(time.time() + seconds)
    which = ",".join(str(int(s)) for s in signals)
    procs = [
        subprocess.Popen([sys.executable, "-c", SENDER, str(child.pid), which, end], stdout=subprocess.PIPE)
        for _ in range(senders)
    ]
    try:
        return sum(int(p.communicate(timeout=seconds + 30)[0] or 0) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_flood_of_sigusr1_only_prints_status_and_the_run_finishes() -> None:
    child, out, err, answering = start_watch("--duration", "10s")
    try:
        assert answering.wait(60), "".join(err)
        sent = flood(child, (signal.SIGUSR1,), FLOOD_SECONDS)
    finally:
        finish(child)
    stderr = "".join(err)
    assert sent >= 10_000, sent  # thousands a second
    assert child.returncode == 0, stderr[-2000:]
    assert "RecursionError" not in stderr and "Traceback" not in stderr and "internal error" not in stderr
    assert any(line.startswith("dfrt: status {") for line in err), stderr[-2000:]
    assert len(out) >= 3, "the standing question was still answered"


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)])
def test_a_flood_of_interrupts_ends_the_run_once_and_cleanly(signals: tuple[int, ...]) -> None:
    child, _, err, answering = start_watch("--duration", "60s")
    try:
        assert answering.wait(60), "".join(err)
        sent = flood(child, signals, FLOOD_SECONDS)
    finally:
        finish(child)
    stderr = "".join(err)
    assert sent >= 1, sent
    assert child.returncode == 130, (child.returncode, stderr[-2000:])
    assert "Traceback" not in stderr and "RecursionError" not in stderr and "Exception ignored" not in stderr
    assert stderr.splitlines()[-1] == "dfrt: interrupted", stderr[-2000:]
