"""A real ``dfrt serve`` (uvicorn in a thread, on a free loopback port) over the demo bundle, per module."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
API_KEY = "test-key-123"


def sample_question(name: str) -> str:
    return next(
        q["question"] for q in json.loads((SAMPLES / "questions.json").read_text()) if q["video"] == name
    )


def data_url(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def video_message(url: str, question: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
        }
    ]


@dataclass
class Server:
    url: str
    engine: object
    media: Path
    outside: Path
    bundle: Path
    cache: Path

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def metric(self, name: str) -> float:
        """A metric's value summed over its label sets, from /metrics."""
        text = self.client().get("/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    from dfrt.runtime.default_bundle import demo_bundle

    cache = tmp_path_factory.mktemp("cache")
    return demo_bundle(root=cache / "demo"), cache


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo) -> Iterator[Server]:
    from dfrt.serve import ServeOptions, create_app, open_engine

    bundle, cache = demo
    media = tmp_path_factory.mktemp("media")
    outside = tmp_path_factory.mktemp("outside")
    for clip in ("07-count.mp4", "03-brief-when.mp4", "04-moved.mp4"):
        shutil.copyfile(SAMPLES / clip, media / clip)
    shutil.copyfile(SAMPLES / "01-brief-colour.mp4", outside / "secret.mp4")
    (media / "escape.mp4").symlink_to(outside / "secret.mp4")
    options = ServeOptions(
        bundle=bundle, port=0, media_paths=(media,), api_key=API_KEY, queue=1, max_body_mb=2, timeout=60
    )
    engine = open_engine(options)
    config = uvicorn.Config(create_app(engine), host="127.0.0.1", port=0, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield Server(f"http://127.0.0.1:{port}", engine, media, outside, bundle, cache)
    finally:
        uv.should_exit = True
        thread.join(30)
        engine.close()  # type: ignore[attr-defined]
