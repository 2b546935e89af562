"""``dfrt serve --watch NAME=SRC``: a live UDP stream from Debian's ffmpeg answered as ``stream://NAME``
through the ``openai`` client, its state in ``/metrics`` and ``/health``, unknown and empty streams refused,
watchers closed with the server, bad ``--watch`` values refused before loading. Skips without ffmpeg."""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Iterator

import pytest

from dfrt.errors import ConfigError, InputError
from tests.live.conftest import ANSWER, QUESTION, free_port, need_ffmpeg, running, udp_sender_args, wait_until
from tests.serve.conftest import video_message

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


@contextlib.contextmanager
def watching_server(watch: tuple[tuple[str, str], ...]) -> Iterator[tuple[str, object]]:
    """``open_engine`` + uvicorn on a free loopback port with a 16 s window at 1 fps (the demo's training
    shape); yields (base URL, engine) and closes both (the watchers with the engine)."""
    from dfrt.runtime.default_bundle import shipped_demo
    from dfrt.serve import ServeOptions, create_app, open_engine

    options = ServeOptions(
        bundle=shipped_demo(), port=0, model_name="demo", timeout=60, watch=watch, watch_window=16.0
    )
    engine = open_engine(options)
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started or not thread.is_alive(), 30) and server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(30)
        engine.close()


def test_a_watched_udp_stream_is_answered_over_its_window() -> None:
    need_ffmpeg()
    port, idle = free_port(), free_port()
    watch = (("cam", f"udp://127.0.0.1:{port}"), ("idle", f"udp://127.0.0.1:{idle}"))  # nothing sent to idle
    with watching_server(watch) as (url, engine):
        http = httpx.Client(base_url=url, timeout=60)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with running(udp_sender_args(port)) as sender:  # the 16 s demo clip, once, in real time
            sender.wait(40)
        assert wait_until(lambda: http.get("/health").json()["streams"]["cam"]["window"]["frames"] >= 15, 8)

        streamed = client.chat.completions.create(
            model="demo", messages=video_message("stream://cam", QUESTION), temperature=0, stream=True
        )
        chunks = list(streamed)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip() == ANSWER
        info = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra["dfrt"]
        stream = info["stream"]
        assert stream["name"] == "cam" and 15 <= stream["window"]["frames"] <= 16
        assert 14.0 <= stream["window"]["span"] <= 15.5 and "video" not in info
        assert stream["key_frame_times"] == [k["time"] for k in info["key_frames"]]
        window = stream["window"]
        assert all(window["start"] <= t <= window["end"] for t in stream["key_frame_times"])

        plain = client.chat.completions.create(
            model="demo", messages=video_message("stream://cam", QUESTION), temperature=0
        )
        assert plain.choices[0].message.content.strip() == ANSWER

        health = http.get("/health").json()
        assert set(health["streams"]) == {"cam", "idle"}
        assert health["streams"]["cam"]["frames_dropped"] == 0 and health["streams"]["cam"]["error"] is None
        metrics = http.get("/metrics").text
        for name in ("connected", "fps_in", "fps_sampled", "frames_dropped_total", "reconnects_total"):
            assert f'dfrt_stream_{name}{{stream="cam"}} ' in metrics
            assert f'dfrt_stream_{name}{{stream="idle"}} ' in metrics
        span = next(line for line in metrics.splitlines() if line.startswith("dfrt_stream_window_span_sec"))
        assert 14.0 <= float(span.rsplit(" ", 1)[1]) <= 15.5

        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="demo", messages=video_message("stream://nope", QUESTION))
        assert missing.value.body["code"] == "stream_not_found"
        body = {"messages": video_message("stream://idle", QUESTION), "stream": True}
        empty = http.post("/v1/chat/completions", json=body)
        assert empty.status_code == 503 and empty.json()["error"]["code"] == "stream_empty"
        assert empty.headers["Retry-After"] == "1"
        watchers = list(engine.watchers.values())  # type: ignore[attr-defined]
    assert all(not w._reader.is_alive() and not w._encoder.is_alive() for w in watchers)  # closed with it


def test_bad_watch_values_fail_before_loading() -> None:
    from dfrt.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser)
    cases = [
        (["--watch", "cam"], ConfigError, "NAME=SRC"),
        (["--watch", "a b=udp://127.0.0.1:5000"], ConfigError, "stream name"),
        (["--watch", "c=udp://127.0.0.1:5000", "--watch", "c=udp://127.0.0.1:5001"], ConfigError, "twice"),
        (["--watch", "cam=concat:a.mp4|b.mp4"], InputError, "scheme 'concat' is not allowed"),
        (["--watch", "cam=0", "--watch-window", "1h", "--watch-fps", "2"], ConfigError, "--watch-window"),
        (["--watch-fps", "0"], ConfigError, "--watch-fps"),
        (["--bundle", "/nonexistent-bundle", "--watch", "cam=/no/such.mp4"], InputError, "source not found"),
    ]
    for argv, error, match in cases:
        with pytest.raises(error, match=match):
            serve.run(parser.parse_args(argv))
