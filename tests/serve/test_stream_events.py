"""``dfrt serve --watch door=SRC --alert door=RULE``: rules checked on a live UDP stream (Debian's ffmpeg)
whose truth is known by construction (a brief yellow shape at t = 20 s, the scene of
tests/live/test_alert_stream.py), followed over Server-Sent Events and fetched as JSON by a real HTTP
client against a real uvicorn server: one alert then one clear, in order, resumable with
``Last-Event-ID``, the thumbnail that shows yellow served by id, the events in ``/metrics`` and the event
log; a second stream with no yellow raises nothing while it is checked in turn. Also: the bounded store,
the round-robin turn, hostile ids and names, the client cap, and bad ``--alert`` values refused before
loading."""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfrt.errors import ConfigError
from tests.live.conftest import free_port, need_ffmpeg, running, udp_sender_args, wait_until
from tests.live.test_alert_stream import QUESTION, RULE, WINDOW, write_clip, yellow_pixels

uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
KEY = "events-key-1"
PERIOD, CONFIRM = 2.0, 2


@contextlib.contextmanager
def alerting_server(tmp_path: Path, **options: object) -> Iterator[tuple[str, object]]:
    """open_engine + uvicorn on a free loopback port (16 s windows at 1 fps); yields (URL, engine)."""
    from dfrt.runtime.default_bundle import shipped_demo
    from dfrt.serve import ServeOptions, create_app, open_engine

    settings = {"bundle": shipped_demo(), "port": 0, "model_name": "demo", "api_key": KEY, "timeout": 60,
                "watch_window": WINDOW, **options}  # fmt: skip
    engine = open_engine(ServeOptions(**settings))  # type: ignore[arg-type]
    config = uvicorn.Config(
        create_app(engine), host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=5
    )  # as dfrt serve: a follower still connected does not hold the shutdown
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started or not thread.is_alive(), 30) and server.started
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", engine
    finally:
        server.should_exit = True
        thread.join(30)
        engine.close()


def sse_events(response: httpx.Response, kinds: int, seconds: float = 120) -> list[dict]:
    """An open SSE response's events (id, event, data): ``kinds`` of them, or those in ``seconds``."""
    events, current, deadline = [], {}, time.monotonic() + seconds
    for line in response.iter_lines():
        if time.monotonic() > deadline:  # a keep-alive comment arrives each KEEPALIVE seconds
            break
        if line == "":
            if "data" in current:
                events.append(current)
                if len(events) >= kinds:
                    break
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value.lstrip(" ")
    return events


def test_a_brief_yellow_shape_is_followed_over_sse_json_thumbnails_and_metrics(tmp_path, monkeypatch) -> None:
    from dfrt.serve import event_routes

    monkeypatch.setattr(event_routes, "KEEPALIVE", 1.0)
    need_ffmpeg()
    yellow = write_clip(tmp_path / "yellow.mp4", 52, 20.0)  # the clear needs checks after 36 s
    never = write_clip(tmp_path / "never.mp4", 52, None)
    door, yard = free_port(), free_port()
    options = {
        "watch": (("door", f"udp://127.0.0.1:{door}"), ("yard", f"udp://127.0.0.1:{yard}")),
        "alerts": (("door", RULE), ("yard", RULE), ("yard", "Is the sky falling?")),
        "alert_every": PERIOD, "confirm": CONFIRM, "events_dir": tmp_path / "events",
    }  # fmt: skip
    with alerting_server(tmp_path, **options) as (url, engine):
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        followed: list[dict] = []

        def follow() -> None:  # a client following from before the stream starts
            with http.stream("GET", "/v1/streams/door/events", timeout=120) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                followed.extend(sse_events(response, kinds=2, seconds=100))

        follower = threading.Thread(target=follow)
        follower.start()
        assert wait_until(lambda: http.get("/metrics").text.count("dfrt_stream_event_clients 1") == 1, 10)
        with running(udp_sender_args(door, yellow)) as a, running(udp_sender_args(yard, never)) as b:
            a.wait(70)
            b.wait(10)
        follower.join(30)
        listed = http.get("/v1/streams/door/events", params={"since": 0}).json()
        events = listed["data"]
        assert not follower.is_alive(), events
        assert [e["kind"] for e in events] == ["alert", "clear"] and listed["missed"] is False, events
        assert [json.loads(e["data"]) for e in followed] == events  # the SSE stream saw the same, in order
        assert [int(e["id"]) for e in followed] == [e["id"] for e in events]
        assert [e["event"] for e in followed] == ["alert", "clear"]
        alert, clear = events
        assert alert["id"] < clear["id"] and alert["stream"] == "door" and alert["answer"] == "yellow"
        assert alert["rule"]["question"] == QUESTION and clear["answer"] != "yellow"
        # the evidence: exactly one key frame shows yellow, served by id, as in the event log
        shown = []
        for frame in alert["key_frames"]:
            jpeg = http.get(frame["thumbnail"])
            assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
            shown += [frame] if yellow_pixels(jpeg.content) > 80 else []
        assert len(shown) == 1 and alert["window"]["start"] <= shown[0]["time"] <= alert["window"]["end"]
        assert clear["window"]["start"] > shown[0]["time"]  # cleared once it left the window
        logged = [
            json.loads(line) for line in (tmp_path / "events" / "events.jsonl").read_text().splitlines()
        ]
        assert [(e["id"], e["stream"], e["kind"]) for e in logged] == [
            (e["id"], "door", e["kind"]) for e in events
        ]
        # the other stream was checked in turn and raised nothing
        assert http.get("/v1/streams/yard/events?since=0").json()["data"] == []
        assert all(rule["checks"] >= 5 for rule in engine.events.alerts["yard"].status())  # type: ignore

        # since= and Last-Event-ID resume after the id given
        after = http.get(f"/v1/streams/door/events?since={alert['id']}").json()
        assert [e["id"] for e in after["data"]] == [clear["id"]] and after["last_id"] == clear["id"]
        with http.stream("GET", "/v1/streams/door/events", headers={"Last-Event-ID": str(alert["id"])}) as r:
            assert [int(e["id"]) for e in sse_events(r, kinds=1)] == [clear["id"]]

        metrics = http.get("/metrics").text
        assert 'dfrt_stream_events_total{kind="alert",rule="rule1",stream="door"} 1' in metrics
        assert 'dfrt_stream_events_total{kind="clear",rule="rule1",stream="door"} 1' in metrics
        assert 'dfrt_stream_alerts_active{stream="door"} 0' in metrics
        assert 'dfrt_stream_alerts_active{stream="yard"} 0' in metrics
        assert wait_until(lambda: "dfrt_stream_event_clients 0" in http.get("/metrics").text, 5)  # both left

        # hostile and unknown: 4xx naming the parameter, never a traceback
        assert http.get("/v1/streams/nope/events?since=0").status_code == 404
        assert httpx.get(f"{url}/v1/streams/door/events?since=0").status_code == 401
        for bad in ("-1", "1e3", "x", "9" * 30, ""):
            reply = http.get("/v1/streams/door/events", params={"since": bad})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "since", bad
        reply = http.get("/v1/streams/door/events", headers={"Last-Event-ID": "abc"})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "Last-Event-ID"
        for path in (
            f"{alert['id']}/thumbnails/99",
            "999999/thumbnails/0",
            "x/thumbnails/0",
            "1/thumbnails/-1",
        ):
            assert http.get(f"/v1/streams/door/events/{path}").status_code == 404, path
        scheduler_threads = [t for t in threading.enumerate() if t.name == "dfrt-alerts"]
        assert len(scheduler_threads) == 1
    assert not scheduler_threads[0].is_alive()  # stopped with the engine


def test_followers_are_capped_and_released(tmp_path: Path) -> None:
    need_ffmpeg()
    with alerting_server(
        tmp_path, watch=(("cam", f"udp://127.0.0.1:{free_port()}"),), max_event_clients=1
    ) as (
        url,
        engine,
    ):
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        with http.stream("GET", "/v1/streams/cam/events") as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: a dropped iterator would close the response
            assert next(lines).startswith("retry:")
            second = http.get("/v1/streams/cam/events")
            assert second.status_code == 503 and second.json()["error"]["code"] == "too_many_event_clients"
            assert second.headers["Retry-After"] == "5"
        assert wait_until(lambda: engine.events.clients == 0, 5)  # type: ignore[attr-defined]
        with http.stream("GET", "/v1/streams/cam/events") as again:
            assert again.status_code == 200  # the slot came back when the first client left
        assert http.get("/v1/streams/cam/events?since=0").json() == {
            "object": "list", "stream": "cam", "data": [], "missed": False, "last_id": 0,
        }  # fmt: skip


def test_the_store_is_bounded_and_tells_what_it_let_go() -> None:
    from dfrt.serve.stream_events import STREAM_BYTES, EventStore

    store = EventStore(["a", "b"], keep=3, max_clients=1)

    def record(i: int) -> dict:
        return {"id": i, "kind": "alert" if i % 2 else "clear", "rule": {"name": "r"}, "key_frames": [{}, {}]}

    for i in range(1, 8):
        store.add("a" if i != 4 else "b", record(i), [b"jpeg%d" % i, b""])
    kept, missed = store.after("a", 0)
    assert [e.id for e in kept] == [5, 6, 7] and missed  # 1..3 let go (4 is b's)
    assert store.after("a", 5)[0][0].id == 6 and not store.after("a", 5)[1]
    assert kept[0].record["key_frames"][0]["thumbnail"] == "/v1/streams/a/events/5/thumbnails/0"
    assert kept[0].record["key_frames"][1]["thumbnail"] is None  # no JPEG, no URL
    assert [e.id for e in store.after("a", 10_000)[0]] == [5, 6, 7]  # ids from a server before a restart
    assert store.get("a", 4) is None and store.get("b", 4).thumbnails == (b"jpeg4", b"")
    big = EventStore(["a"], keep=1000, max_clients=1)
    for i in range(1, 40):
        big.add("a", record(i), [b"x" * (1 << 20)])
    assert sum(e.size for e in big.after("a", 0)[0]) <= STREAM_BYTES
    assert big.counts == {("a", "r", "alert"): 20, ("a", "r", "clear"): 19} and big.firing["a"] == {"r"}
    assert ("dfrt_stream_alerts_active", "alert rules firing now", (("stream", "a"),), 1.0) in big.samples()


def test_the_scheduler_takes_due_streams_in_turn() -> None:
    from dfrt.live.alerts import Alerts
    from dfrt.serve.stream_events import AlertScheduler, EventStore

    alerts = {name: Alerts(["Q"]) for name in ("a", "b", "c")}  # never checked: always due
    scheduler = AlertScheduler(None, alerts, EventStore([], 1, 1), None)  # type: ignore[arg-type]
    assert [scheduler.next_due(0.0) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    alerts["b"]._next = 1e9  # b checked a moment ago: the others go on in turn
    assert [scheduler.next_due(0.0) for _ in range(4)] == ["a", "c", "a", "c"]


def test_bad_alert_values_fail_before_loading(tmp_path: Path) -> None:
    from dfrt.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser)
    cam = ["--bundle", "/nonexistent-bundle", "--watch", "cam=udp://127.0.0.1:5000"]
    (tmp_path / "mine.txt").write_text("x")
    cases = [
        ([*cam, "--alert", "Is it? => yes"], "NAME=RULE"),
        ([*cam, "--alert", "door=Is someone there?"], "no such --watch stream"),
        (["--bundle", "/nonexistent-bundle", "--alert", "cam=Is it?"], "no such --watch stream"),
        ([*cam, "--alert", "cam=Is it? => a => b"], "more than one"),
        ([*cam, "--alert", "cam=Is it?\n=> yes"], "control characters"),
        ([*cam, "--alert", "cam= => yes"], "no question"),
        ([*cam, "--alert", "cam=Is it?", "--confirm", "0"], "--confirm"),
        ([*cam, "--alert", "cam=Is it?", "--alert-every", "0s"], "--alert-every"),
        ([*cam, "--events", str(tmp_path)], "--events needs"),
        ([*cam, "--alert", "cam=Is it?", "--events", str(tmp_path)], "did not write"),
        ([*cam, "--alert", "cam=Is it?", "--webhook", "ftp://x"], "--webhook"),
        ([*cam, "--events-kept", "0"], "--events-kept"),
        ([*cam, "--max-event-clients", "-1"], "--max-event-clients"),
    ]
    for argv, match in cases:
        with pytest.raises(ConfigError, match=match) as info:
            serve.run(parser.parse_args(argv))
        assert "\n" not in str(info.value), argv
    assert (tmp_path / "mine.txt").read_text() == "x"
