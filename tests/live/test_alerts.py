"""Alert rules, the event log and the hooks without a model: parsing (malformed rules refused with one
line), the debounce, the log's layout, crash repair and refusals (symlink, device, foreign files), command
hooks killed at their bound, and a loopback webhook that is down for a while receiving every event, in
order, also after a restart."""

from __future__ import annotations

import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfrt.errors import ConfigError
from dfrt.live.alerts import AlertEvent, AlertRule, Alerts, KeyFrame, normalise
from dfrt.live.events import Dispatcher, EventLog, check_events_dir, parse_size
from dfrt.live.hooks import CommandHook, Webhook, check_url, split_command
from dfrt.live.window import thumbnail
from tests.live.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.runtime


# -- rules ----------------------------------------------------------------------------------------------
def test_rules_parse_and_compare_normalised() -> None:
    rule = AlertRule.parse("  Is someone at the door?  ")
    assert rule.question == "Is someone at the door?" and rule.fires_on == ("yes",)
    assert rule.fires("Yes.") and rule.fires(" YES! ") and not rule.fires("no")
    rule = AlertRule.parse("What colour is the car? =>  Red | BLUE. |red")
    assert rule.fires_on == ("red", "blue")
    assert rule.fires("Blue!") and not rule.fires("green")
    assert normalise("Light-Blue, maybe…") == "lightblue maybe"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no question"),
        ("   => yes", "no question"),
        ("Is it? => ", "empty answer"),
        ("Is it? => red||blue", "empty answer"),
        ("Is it? => !!!", "empty answer"),
        ("Is it? => a => b", "more than one"),
        ("Is it?\n=> yes", "control characters"),
        ("x" * 3000, "over 2000"),
        ("Is it? => " + "|".join(f"a{i}" for i in range(40)), "more than 32"),
    ],
)
def test_malformed_rules_are_one_error_line(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        AlertRule.parse(text)
    assert "\n" not in str(info.value)


def test_alerts_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--confirm"):
        Alerts(["Is it?"], confirm=0)
    with pytest.raises(ConfigError, match="--alert-every"):
        Alerts(["Is it?"], every=0)
    with pytest.raises(ConfigError, match="--cooldown"):
        Alerts(["Is it?"], cooldown=-1)
    with pytest.raises(ConfigError, match="no alert rule"):
        Alerts([])


def test_debounce_confirms_fires_once_clears_and_cools_down() -> None:
    alerts = Alerts(["Q => yellow"], confirm=2, cooldown=60)
    seen = [alerts.observe(0, a, now=t) for t, a in enumerate(["red", "yellow", "red", "yellow", "yellow"])]
    assert seen == [None, None, None, None, "alert"]  # a single yellow never fires
    seen = [alerts.observe(0, a, now=5 + t) for t, a in enumerate(["yellow", "red", "yellow", "red", "red"])]
    assert seen == [None, None, None, None, "clear"]
    # back within the cool-down: held back, fires once the cool-down ends if it still holds
    assert [alerts.observe(0, "yellow", now=t) for t in (20, 21, 30)] == [None, None, None]
    assert alerts.status()[0]["suppressed"] == 2
    assert alerts.observe(0, "yellow", now=64.5) == "alert"
    assert alerts.observe(0, "yellow", now=70) is None  # firing: nothing new
    assert alerts.status()[0] | {"last_answer": None} == {
        "rule": "rule1",
        "firing": True,
        "checks": 15,
        "alerts": 2,
        "clears": 1,
        "suppressed": 2,
        "last_answer": None,
    }


# -- the event log --------------------------------------------------------------------------------------
def yellow_jpeg() -> bytes:
    frame = np.zeros((112, 112, 3), np.uint8)
    frame[:] = (240, 215, 30)
    return thumbnail(frame)


def make_event(kind: str = "alert", answer: str = "yellow", at: float = 21.0) -> AlertEvent:
    return AlertEvent(
        kind=kind,
        rule=AlertRule.parse("What color? => yellow", name="door"),
        answer=answer,
        stream_time=at,
        asked_at=at + 0.2,
        wall_time=time.time(),
        window={"start": at - 15, "end": at, "frames": 16},
        key_frames=[KeyFrame(at - 1, time.time(), 0.9, yellow_jpeg()), KeyFrame(at, time.time(), None, b"")],
        checks=2,
        source="test",
    )


def test_thumbnail_is_a_small_jpeg() -> None:
    data = thumbnail(np.full((480, 640, 3), 200, np.uint8))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (120, 160, 3) and len(data) < 4000
    assert thumbnail(np.zeros((0, 0, 3), np.uint8)) == b""


def test_log_layout_ids_and_thumbnails(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    with EventLog(directory) as log:
        dispatcher = Dispatcher(log)
        first = dispatcher.emit(make_event())
        second = dispatcher.emit(make_event("clear", "purple", 40.0))
    assert (first["id"], second["id"]) == (1, 2)
    names = sorted(os.listdir(directory))
    assert names == [".dfrt-events", ".dfrt-events.lock", "events.jsonl", "thumbs"]
    lines = [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]
    assert lines == [first, second]
    assert first["key_frames"][0]["thumbnail"] == "thumbs/00000001-0.jpg"
    assert first["key_frames"][1]["thumbnail"] is None  # no JPEG, no file
    assert first["rule"] == {"name": "door", "question": "What color?", "fires_on": ["yellow"]}
    assert {"stream_time", "asked_at", "wall_time", "time", "window", "checks", "source"} <= set(first)
    image = cv2.imread(str(directory / first["key_frames"][0]["thumbnail"]))
    assert tuple(image[50, 50]) == pytest.approx((30, 215, 240), abs=12)  # BGR yellow
    with EventLog(directory) as log:  # ids continue after a restart
        assert Dispatcher(log).emit(make_event())["id"] == 3


def test_a_torn_last_line_is_repaired_with_its_thumbnails(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    with EventLog(directory) as log:
        log.append(make_event().to_dict(), make_event().thumbnails)
    with open(directory / "events.jsonl", "ab") as f:  # a crash in the middle of event 2's line
        f.write(b'{"kind":"alert","id":2,"rule"')
    (directory / "thumbs" / "00000002-0.jpg").write_bytes(yellow_jpeg())
    with EventLog(directory) as log:
        assert log.last_id == 1 and [r["id"] for r in log.read()] == [1]
        assert sorted(os.listdir(directory / "thumbs")) == ["00000001-0.jpg"]


def test_the_log_rotates_and_stays_bounded(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    with EventLog(directory, max_bytes=1 << 20) as log:
        for _ in range(400):
            log.append(make_event().to_dict(), [b"x" * 4000])
        total = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        assert total <= (1 << 20) + 200_000
        files = log.files()
        assert len(files) > 2 and files[-1].name == "events.jsonl"
        ids = [r["id"] for r in log.read()]
        assert ids == list(range(ids[0], 401)) and ids[0] > 1  # the oldest went, in order
        assert all((directory / r["key_frames"][0]["thumbnail"]).exists() for r in log.read())


def test_undelivered_events_hold_rotation_back_up_to_twice_the_bound(tmp_path: Path) -> None:
    with EventLog(tmp_path / "events", max_bytes=1 << 20) as log:
        log.active.add("hook")
        log.mark_delivered("hook", 0)  # a webhook that never acknowledges
        for _ in range(600):
            log.append(make_event().to_dict(), [b"x" * 4000])
        total = sum(f.stat().st_size for f in (tmp_path / "events").rglob("*") if f.is_file())
        assert (1 << 20) < total <= (2 << 20) + 200_000 and log.dropped > 0
        ids = [r["id"] for r in log.read()]
        assert ids == list(range(ids[0], 601))


def test_unsafe_events_dirs_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        check_events_dir(tmp_path / "link")
    with pytest.raises(ConfigError, match="not a directory"):
        check_events_dir("/dev/null")
    (real / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not write"):
        EventLog(real)
    assert (real / "notes.txt").read_text() == "mine" and sorted(os.listdir(real)) == ["notes.txt"]
    ours = tmp_path / "ours"
    with EventLog(ours):
        pass
    (ours / "thumbs" / "evil.sh").write_text("x")
    with pytest.raises(ConfigError, match=r"evil\.sh"):
        EventLog(ours)
    (ours / "thumbs" / "evil.sh").unlink()
    (ours / "events.jsonl").symlink_to(real / "notes.txt")
    with pytest.raises(ConfigError, match="regular file"):
        EventLog(ours)
    with pytest.raises(ConfigError, match="missing/x"):
        check_events_dir(tmp_path / "missing" / "x")


def test_one_writer_per_log(tmp_path: Path) -> None:
    with EventLog(tmp_path / "e"), pytest.raises(ConfigError, match="another dfrt process"):
        EventLog(tmp_path / "e")


@pytest.mark.parametrize("text", ["", "12XB", "-5MB", "1KB", "2TB", "nan"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--events-size"):
        parse_size(text)


def test_sizes() -> None:
    assert parse_size("64MB") == 64 << 20 and parse_size("1.5g") == 3 << 29 and parse_size("2MiB") == 2 << 20


# -- command hooks --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "match"),
    [
        ("", "empty command"),
        ("   ", "empty command"),
        ("'unclosed", "quote"),
        ("no-such-program-dfrt --x", "not found"),
        ("/etc/passwd", "not an executable"),
        ("echo a\nrm -rf /", "control characters"),
        ("x" * 5000, "over 4096"),
    ],
)
def test_malformed_hooks_are_one_error_line(command: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        split_command(command)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://host/x", "only http"),
        ("http:///path", "no host"),
        ("file:///etc/passwd", "only http"),
        ("http://host:99999/", "(?i)port"),
        ("http://ho st/", "spaces"),
        ("http://host/\r\nX-Evil: 1", "control"),
    ],
)
def test_malformed_webhooks_are_one_error_line(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        check_url(url)
    assert "\n" not in str(info.value)


def test_a_hook_gets_the_event_on_stdin_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    script = f"import sys, pathlib; pathlib.Path({str(out)!r}).write_bytes(sys.stdin.buffer.read())"
    hook = CommandHook(f"{sys.executable} -c {shlex.quote(script)} ';' 'rm -rf {tmp_path}'", timeout=10)
    record = dict(make_event().to_dict(), id=7)
    result = hook.run(record, make_event().thumbnails)
    hook.close()
    assert result["returncode"] == 0 and not result["killed"]
    got = json.loads(out.read_text())
    assert (
        got["id"] == 7 and got["key_frames"][0]["jpeg_base64"] and got["key_frames"][1]["jpeg_base64"] is None
    )


@pytest.mark.parametrize(
    "script",
    [
        "import time; time.sleep(60)",  # hangs
        "import sys; [sys.stdout.write('x' * 65536) for _ in iter(int, 1)]",  # floods its output
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "import time; time.sleep(60)",  # and its child
    ],
    ids=["hangs", "floods", "child"],
)
def test_a_hook_is_killed_at_its_bound(script: str) -> None:
    hook = CommandHook(f"{sys.executable} -c {shlex.quote(script)}", timeout=1.5)
    start = time.monotonic()
    result = hook.run(dict(make_event().to_dict(), id=1), [])
    took = time.monotonic() - start
    hook.close()
    assert result["killed"] and took < 8 and len(result["output"]) <= 2048


def test_a_hook_that_ignores_stdin_and_fails_is_counted() -> None:
    hook = CommandHook(f"{sys.executable} -c 'import sys; sys.exit(3)'", timeout=5)
    for i in range(3):
        hook.submit(dict(make_event().to_dict(), id=i), [b"x" * 200_000])  # more than a pipe holds
    hook.close()
    assert (hook.runs, hook.failures, hook.killed) == (3, 3, 0)


# -- webhooks -------------------------------------------------------------------------------------------
class Receiver:
    """A loopback HTTP server recording POSTed events; ``up`` False answers 503 (or stop() to refuse)."""

    def __init__(self, port: int) -> None:
        self.port, self.got, self.up = port, [], True
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not receiver.up:
                    self.send_response(503)
                else:
                    receiver.got.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_webhook_down_for_a_while_gets_every_event_in_order(tmp_path: Path) -> None:
    port = free_port(kind=1)  # SOCK_STREAM
    url = f"http://127.0.0.1:{port}/events"
    with EventLog(tmp_path / "events") as log:
        hook = Webhook(url, log, timeout=1.0, backoff=(0.05, 0.2))
        dispatcher = Dispatcher(log, hooks=(hook,))
        start = time.monotonic()
        for _ in range(5):  # nobody listens: connection refused
            dispatcher.emit(make_event())
        assert time.monotonic() - start < 1.0  # never blocks the watcher
        time.sleep(0.5)
        assert hook.pending == 5 and hook.failures >= 1
        receiver = Receiver(port)
        try:
            receiver.up = False  # up but failing
            for _ in range(3):
                dispatcher.emit(make_event("clear", "purple"))
            time.sleep(0.5)
            assert receiver.got == []
            receiver.up = True
            assert wait_until(lambda: len(receiver.got) == 8, 10)
            assert [e["id"] for e in receiver.got] == list(range(1, 9))
            assert receiver.got[0]["key_frames"][0]["jpeg_base64"]
            hook.close()
        finally:
            receiver.stop()
        assert json.loads((tmp_path / "events" / "delivery.json").read_text()) == {hook.key: 8}


def test_undelivered_events_are_resent_after_a_restart(tmp_path: Path) -> None:
    port = free_port(kind=1)
    url = f"http://127.0.0.1:{port}/"
    with EventLog(tmp_path / "events") as log:
        hook = Webhook(url, log, timeout=1.0, backoff=(0.05, 0.2))
        dispatcher = Dispatcher(log, hooks=(hook,))
        for _ in range(4):
            dispatcher.emit(make_event())
        hook.close(wait=0.3)  # the run ends with the webhook still down
    receiver = Receiver(port)
    try:
        with EventLog(tmp_path / "events") as log:
            hook = Webhook(url, log, timeout=1.0, backoff=(0.05, 0.2))
            Dispatcher(log, hooks=(hook,)).emit(make_event())
            assert wait_until(lambda: len(receiver.got) == 5, 10)
            hook.close()
        assert [e["id"] for e in receiver.got] == [1, 2, 3, 4, 5]
        assert receiver.got[2]["key_frames"][0]["jpeg_base64"]  # re-read from the log's thumbnails
    finally:
        receiver.stop()


def test_a_webhook_without_a_log_keeps_events_in_memory() -> None:
    port = free_port(kind=1)
    hook = Webhook(f"http://127.0.0.1:{port}/", None, timeout=1.0, backoff=(0.05, 0.2))
    dispatcher = Dispatcher(hooks=(hook,))
    for _ in range(3):
        dispatcher.emit(make_event())
    time.sleep(0.3)
    receiver = Receiver(port)
    try:
        assert wait_until(lambda: len(receiver.got) == 3, 10)
        hook.close()
    finally:
        receiver.stop()
    assert [e["id"] for e in receiver.got] == [1, 2, 3]


def test_watch_refuses_bad_alert_options_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path)
    cases = [
        (["--alert", "Is it? => "], "empty answer"),
        (["--alert", "Is it?", "--confirm", "0"], "--confirm"),
        (["--alert", "Is it?", "--alert-every", "soon"], "--alert-every"),
        (["--alert", "Is it?", "--on-event", "'open"], "--on-event"),
        (["--alert", "Is it?", "--webhook", "gopher://x"], "--webhook"),
        (["--alert", "Is it?", "--events", str(tmp_path / "link")], "symbolic link"),
        (["--alert", "Is it?", "--events", "/dev/null"], "not a directory"),
        (["--alert", "Is it?", "--events-size", "lots"], "--events-size"),
        (["--webhook", "http://127.0.0.1:9/"], "needs at least one --alert"),
    ]
    for args, match in cases:
        run = subprocess.run(
            [sys.executable, "-m", "dfrt.cli", "watch", "samples/06-left.mp4", "--no-stdin", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode != 0, args
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dfrt: error:") and match in lines[0], (args, lines)


def test_closing_never_waits_for_a_queue_of_hanging_hooks() -> None:
    hook = CommandHook(f"{sys.executable} -c 'import time; time.sleep(60)'", timeout=30)
    for i in range(5):
        hook.submit(dict(make_event().to_dict(), id=i), [])
    time.sleep(0.5)
    start = time.monotonic()
    hook.close(wait=0.5)
    assert time.monotonic() - start < 5 and hook.dropped == 4 and hook.runs == 1 and hook.killed == 1


def test_an_event_the_log_cannot_take_still_goes_out(tmp_path: Path, monkeypatch) -> None:
    import io

    with EventLog(tmp_path / "events") as log:

        def full(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(log, "append", full)
        out, warnings = io.StringIO(), []
        record = Dispatcher(log, out, progress=warnings.append).emit(make_event())
    assert record["id"] == 1 and json.loads(out.getvalue())["kind"] == "alert"
    assert warnings == [f"warning: event not logged in {tmp_path / 'events'}: No space left on device"]


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), (" 0s ", 0.0), ("90s", 90.0), ("2m", 120.0)])
def test_a_cooldown_is_a_duration_or_zero(text, seconds) -> None:
    from dfrt.live.options import parse_cooldown

    assert parse_cooldown(text) == seconds


@pytest.mark.parametrize("text", ["-1s", "soon", "0x", ""])
def test_a_malformed_cooldown_is_one_error_naming_the_option(text) -> None:
    from dfrt.live.options import parse_cooldown

    with pytest.raises(ConfigError, match=r"^--cooldown must be"):
        parse_cooldown(text)
