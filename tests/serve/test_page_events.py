"""The page at ``/`` follows a live stream's alert events in a headless Chromium (Debian's ``chromium``).

A real ``dfrt serve`` with two ``--watch`` streams (UDP sources on loopback that nothing sends to: real
watchers, no decoding) gets events put into its :class:`~dfrt.serve.stream_events.EventStore` the way the
alert scheduler puts them (an ``AlertEvent`` through a ``Dispatcher``, real JPEG thumbnails): the scheduler
and the SSE route are tested end to end in test_stream_events.py; this proves the page shows what the route
serves. The page follows an SSE stream that never ends, so ``--dump-dom`` (which waits for the network)
cannot be used: Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``) and
the live DOM is read until it shows what is expected, within a deadline. Skipped without chromium or ffmpeg.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live.conftest import free_port, need_ffmpeg, wait_until
from tests.serve.test_page import chromium

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")
uvicorn = pytest.importorskip("uvicorn")
KEY = "page-events-key"
HOSTILE = 'yes <img src=x onerror="document.title=1"> & </li>'  # an answer the page must show as text


class Browser:
    """Headless Chromium over the DevTools protocol (JSON messages ending in NUL on fds 3 and 4)."""

    def __init__(self, tmp_path: Path) -> None:
        to_read, to_write = os.pipe()  # we write commands, Chromium reads them on fd 3
        from_read, from_write = os.pipe()  # Chromium writes on fd 4, we read
        args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
                "--remote-debugging-pipe", "about:blank"]  # fmt: skip
        shell = f'exec "$@" 3<&{to_read} 4>&{from_write} {to_read}<&- {from_write}>&-'  # fds 3/4 as asked
        self.log = (tmp_path / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            ["bash", "-c", shell, "chromium", *args], pass_fds=(to_read, from_write),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )  # fmt: skip
        os.close(to_read)
        os.close(from_write)
        self.out, self.inp = to_write, from_read
        self.buffer, self.next_id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, seconds: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + seconds
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    assert "error" not in reply, (method, reply["error"])
                    return reply["result"]
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.inp], [], [], left)[0], f"no reply to {method}"
            chunk = os.read(self.inp, 1 << 16)
            assert chunk, "chromium exited: " + Path(self.log.name).read_text(errors="replace")[-2000:]
            self.buffer += chunk

    def open(self, url: str) -> None:
        """Load ``url`` (navigate answers before the new document is there: wait for it)."""
        self.call("Page.navigate", url=url)
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", 30)

    def eval(self, expression: str) -> Any:
        """``expression``'s value in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait(self, expression: str, seconds: float = 60) -> Any:
        """Evaluate until truthy (the page works in real time: events stream in, thumbnails load)."""
        deadline = time.monotonic() + seconds
        while not (value := self.eval(expression)):
            assert time.monotonic() < deadline, f"never true: {expression}\n{self.eval(DOM)[-3000:]}"
            time.sleep(0.2)
        return value

    def close(self) -> None:
        os.close(self.out)  # Chromium exits when its pipe closes
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self.inp)
        self.log.close()


DOM = "document.documentElement.outerHTML"
# the events shown, newest first: id, kind, rule, question, answer, meta line, and each thumbnail <img>
SHOWN = """[...document.querySelectorAll('#event-list li')].map((li) => {
  const text = (name) => li.querySelector(name).textContent;
  return {id: Number(li.dataset.id), kind: text('.kind'), rule: text('.event-rule'),
    question: text('.event-question'), answer: text('.event-answer'), meta: text('.event-meta'),
    answerNodes: li.querySelector('.event-answer').children.length,
    imgs: [...li.querySelectorAll('img')].map((i) => ({src: i.getAttribute('src') || '',
                                                      width: i.naturalWidth}))};
})"""
# the centre pixel of the newest event's first thumbnail as the browser decoded it
CENTRE = """(() => {
  const img = document.querySelector('#event-list li img'), c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  return [...g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data];
})()"""


def jpeg(bgr: tuple[int, int, int]) -> bytes:
    """A 64x48 grey frame with a coloured square in the middle, as JPEG (as a watcher's thumbnail)."""
    image = np.full((48, 64, 3), 90, np.uint8)
    image[12:36, 20:44] = bgr
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


class Events:
    """Puts events into a server's store as its alert scheduler does (dispatcher ids, then the store)."""

    def __init__(self, engine: Any) -> None:
        from dfrt.live.events import Dispatcher

        self.engine, self.dispatcher = engine, Dispatcher()

    def add(self, stream: str, kind: str, answer: str, times: tuple[float, ...], colour=(0, 255, 255)) -> int:
        from dfrt.live.alerts import AlertEvent, AlertRule, KeyFrame
        from dfrt.serve.stream_events import _Named

        rule = AlertRule.parse("Is there a yellow shape? => yes", name="yellow")
        now = time.time()
        frames = [KeyFrame(t, now - 20 + t, 0.5, jpeg(colour)) for t in times]
        window = {"start": 4.0, "end": 20.0, "frames": 16}
        event = AlertEvent(kind, rule, answer, 20.0, 20.5, now, window, frames, 2, "udp://127.0.0.1")
        record = self.dispatcher.emit(_Named(event, stream))
        self.engine.events.add(stream, record, event.thumbnails)
        return int(record["id"])


class Recorder:
    """ASGI wrapper noting each events request's ``Last-Event-ID`` header (None when absent)."""

    def __init__(self, app: Any) -> None:
        self.app, self.last_ids = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/events"):
            headers = dict(scope["headers"])
            self.last_ids.append(headers.get(b"last-event-id", b"").decode() or None)
        await self.app(scope, receive, send)


@contextlib.contextmanager
def page_server(browser: Browser, **options: Any) -> Iterator[tuple[str, Any, Recorder]]:
    """``dfrt serve`` (the shipped demo bundle) on a free loopback port; yields (URL, engine, recorder).
    The browser leaves the page first, so no follower holds the shutdown."""
    from dfrt.runtime.default_bundle import shipped_demo
    from dfrt.serve import ServeOptions, create_app, open_engine

    engine = open_engine(ServeOptions(bundle=shipped_demo(), port=0, api_key=KEY, timeout=60, **options))
    recorder = Recorder(create_app(engine))
    config = uvicorn.Config(
        recorder, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started or not thread.is_alive(), 30) and server.started
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", engine, recorder
    finally:
        with contextlib.suppress(AssertionError, OSError):
            browser.open("about:blank")
        server.should_exit = True
        thread.join(30)
        engine.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium()  # skips without it
    opened = Browser(tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def test_the_page_follows_a_streams_events_with_their_thumbnails(browser: Browser) -> None:
    need_ffmpeg()
    watch = (("door", f"udp://127.0.0.1:{free_port()}"), ("yard", f"udp://127.0.0.1:{free_port()}"))
    with page_server(browser, watch=watch, watch_window=16.0) as (url, engine, recorder):
        events = Events(engine)
        first = events.add("door", "alert", HOSTILE, (12.0, 15.5))
        events.add("yard", "alert", "yes", (3.0,))  # another stream's: not shown while following door
        browser.open(f"{url}/?events=door&key={KEY}")

        # the kept event, as served: kind, rule, answer (as text), times, two thumbnails as blob: images
        shown = browser.wait(
            f"(() => {{ const s = {SHOWN}; return s.length && s[0].imgs.every((i) => i.width) && s; }})()"
        )
        assert len(shown) == 1 and shown[0]["id"] == first, shown
        alert = shown[0]
        assert (alert["kind"], alert["rule"], alert["question"]) == (
            "alert",
            "yellow",
            "Is there a yellow shape?",
        )
        assert alert["answer"] == HOSTILE and alert["answerNodes"] == 0  # the server's text stayed text
        assert "stream time 20.0 s" in alert["meta"] and "key frames at 12.0 s, 15.5 s" in alert["meta"]
        assert len(alert["imgs"]) == 2 and all(i["src"].startswith("blob:") for i in alert["imgs"]), alert
        red, green, blue, _ = browser.eval(CENTRE)  # RGBA: the yellow square came through
        assert red > 200 and green > 200 and blue < 80, (red, green, blue)
        dom = browser.eval(DOM)
        assert dom.count('src="blob:') == 2 and 'id="events" hidden' not in dom and "document.title=1" in dom
        assert browser.eval("document.title") == "dfrt serve: ask a video"  # no injected handler ran
        assert browser.eval("!document.getElementById('stream').hidden")  # two streams: a selector

        # an event added while the page follows shows up, newest first
        clear = events.add("door", "clear", "no", (18.0,))
        browser.wait(f"document.querySelector('#event-list li').dataset.id === '{clear}'")
        shown = browser.wait(f"(() => {{ const s = {SHOWN}; return s[0].imgs[0].width && s; }})()")
        assert [(s["id"], s["kind"], s["answer"], len(s["imgs"])) for s in shown] == [
            (clear, "clear", "no", 1),
            (first, "alert", HOSTILE, 2),
        ]

        # the connection drops: the page reconnects on its own, resuming after the last id it saw
        engine.events.closed = True  # every follower's stream ends (as when the server stops)
        browser.wait("document.getElementById('events-status').textContent.startsWith('Lost stream door')")
        engine.events.closed = False
        browser.wait("document.getElementById('events').dataset.connections === '2'", 30)
        assert recorder.last_ids[-1] == str(clear) and recorder.last_ids[0] is None, recorder.last_ids
        again = events.add("door", "alert", "yes", (19.0,))
        browser.wait(f"document.querySelector('#event-list li').dataset.id === '{again}'")
        assert [s["id"] for s in browser.eval(SHOWN)] == [again, clear, first]  # each once

        # the other stream, picked in the selector; the list is bounded and lets go of old thumbnails
        old = browser.eval("document.querySelector('#event-list li img').src")
        browser.eval("(() => { const s = document.getElementById('stream'); s.value = 'yard';"
                     " s.dispatchEvent(new Event('change')); })()")  # fmt: skip
        browser.wait("document.querySelectorAll('#event-list li').length === 1")
        assert [(s["kind"], s["answer"]) for s in browser.eval(SHOWN)] == [("alert", "yes")]
        assert browser.eval(f"fetch('{old}').then(() => 'read', () => 'revoked')") == "revoked"
        for _ in range(55):
            events.add("yard", "clear", "no", (1.0,), colour=(255, 0, 0))
        browser.wait(
            f"(() => {{ const s = {SHOWN}; return s.length === 50 && s.every((e) => e.imgs[0].width); }})()"
        )
        assert browser.eval("document.querySelectorAll('#event-list img').length") == 50


def test_a_server_without_streams_shows_no_panel(browser: Browser) -> None:
    with page_server(browser) as (url, _, recorder):
        browser.open(f"{url}/?events=door&key={KEY}")
        browser.wait("document.getElementById('events').dataset.streams === '0'")  # /health read: none
        time.sleep(0.5)
        assert browser.eval("document.getElementById('events').hidden") is True
        assert 'id="events" hidden' in browser.eval(DOM) and recorder.last_ids == []  # nothing followed
