"""``dfrt serve --parallel N``: a real server on loopback, the official ``openai`` client, the demo bundle's
real GGUF. With N = 2 two requests generate at the same time (the ``dfrt_slots_busy`` gauge reads 2, and
each stream's text arrives while the other's is still arriving), each with the answer it gets alone; with
N = 1 the second waits in the queue; a request beyond parallel + queue is a 429 with Retry-After."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.serve.conftest import API_KEY, SAMPLES, data_url, sample_question, video_message

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

CLIPS = ("07-count.mp4", "04-moved.mp4")
EOS = 2  # the demo LM's end of sequence: biased away so that each answer runs to max_tokens
LONG = {"temperature": 0, "max_tokens": 250, "logit_bias": {str(EOS): -100}}
WAIT = 120.0


@dataclass
class Running:
    url: str
    engine: object

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=WAIT)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        return {
            line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }


@pytest.fixture(scope="module")
def messages() -> list[list[dict]]:
    return [video_message(data_url(SAMPLES / clip), sample_question(clip)) for clip in CLIPS]


def _serve(bundle, parallel: int, queue: int) -> Iterator[Running]:
    from dfrt.serve import ServeOptions, create_app, open_engine

    options = ServeOptions(
        bundle=bundle, port=0, api_key=API_KEY, queue=queue, parallel=parallel, timeout=WAIT
    )
    engine = open_engine(options)
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}", engine)
    finally:
        server.should_exit = True
        thread.join(30)
        engine.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def two(demo) -> Iterator[Running]:
    yield from _serve(demo[0], parallel=2, queue=0)


@pytest.fixture(scope="module")
def one(demo) -> Iterator[Running]:
    yield from _serve(demo[0], parallel=1, queue=1)


def _alone(server: Running, messages: list[list[dict]]) -> list[str]:
    client = server.client()
    answers = []
    for message in messages:
        done = client.chat.completions.create(model="demo", messages=message, **LONG)
        assert (
            done.choices[0].finish_reason == "length" and done.usage.completion_tokens == LONG["max_tokens"]
        )
        answers.append(done.choices[0].message.content)
    return answers


def _together(server: Running, messages: list[list[dict]]) -> tuple[list[str], list[list[float]], dict]:
    """Both streamed at once, each from its own thread; each text chunk's arrival time; the highest gauges
    read from /metrics meanwhile."""
    texts: list[str] = ["", ""]
    stamps: list[list[float]] = [[], []]
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            stream = server.client().chat.completions.create(
                model="demo", messages=messages[i], stream=True, **LONG
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    stamps[i].append(time.monotonic())
                    texts[i] += chunk.choices[0].delta.content
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    peak = {name: 0.0 for name in ("dfrt_slots_busy", "dfrt_queue_depth", "dfrt_requests_running",
                                   "dfrt_inflight_requests")}  # fmt: skip
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        seen = server.metrics()
        for name in peak:
            peak[name] = max(peak[name], seen[name])
        time.sleep(0.005)
    assert not errors, errors
    return texts, stamps, peak


def test_two_requests_generate_at_once_with_their_answers_alone(two, messages) -> None:
    alone = _alone(two, messages)
    texts, stamps, peak = _together(two, messages)
    assert texts == alone
    assert peak["dfrt_slots_busy"] == 2 and peak["dfrt_requests_running"] == 2
    assert peak["dfrt_inflight_requests"] == 2  # both admitted at once, none beyond parallel + queue
    # (the queue gauge may read 1 for the instant between admission and a worker thread taking a request:
    # that a request never waited for the other is what the interleaved stamps below show)
    first, second = stamps
    assert second[0] < first[-1] and first[0] < second[-1]  # each streamed while the other was streaming
    assert two.metrics()["dfrt_slots_busy"] == 0


def test_with_parallel_1_the_second_waits(one, messages) -> None:
    alone = _alone(one, messages)
    texts, stamps, peak = _together(one, messages)
    assert texts == alone
    assert peak["dfrt_slots_busy"] == 1 and peak["dfrt_requests_running"] == 1
    assert peak["dfrt_queue_depth"] == 1  # the second request waited while the first generated
    early, late = sorted(stamps, key=lambda s: s[0])
    assert early[-1] < late[0]  # one after the other: no text of the second before the first had ended


def test_beyond_parallel_and_queue_is_429(two, messages) -> None:
    """--parallel 2 --queue 0: while two requests generate, a third is refused at once with Retry-After."""
    client = two.client()
    done: list[object] = []
    threads = [
        threading.Thread(
            target=lambda m=m: done.append(client.chat.completions.create(model="demo", messages=m, **LONG))
        )
        for m in messages
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WAIT
    while two.metrics()["dfrt_inflight_requests"] < 2:
        assert time.monotonic() < deadline, "the two requests never were in flight together"
        time.sleep(0.002)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="demo", messages=messages[0], **LONG)
    for thread in threads:
        thread.join(WAIT)
    assert len(done) == 2  # the two in flight were answered
    response = refused.value.response
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert refused.value.body["code"] == "queue_full"


def test_props_and_metrics_name_the_slots(two, one) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{two.url}/props", headers=headers).json()["parallel"] == 2
    assert httpx.get(f"{one.url}/props", headers=headers).json()["parallel"] == 1
    assert two.metrics()["dfrt_slots"] == 2 and one.metrics()["dfrt_slots"] == 1


@pytest.mark.parametrize("value", [0, 65, -3])
def test_parallel_out_of_range_is_one_error_before_loading(demo, value) -> None:
    from dfrt.errors import ConfigError
    from dfrt.serve import ServeOptions, open_engine

    with pytest.raises(ConfigError, match=r"^--parallel must be an integer from 1 to 64"):
        open_engine(ServeOptions(bundle=demo[0], parallel=value))
