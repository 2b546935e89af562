"""`dfrt serve --ray` on a local two-worker Ray cluster, through the openai client: the one-process answers,
streaming, and no answer lost when a replica or a worker node is killed under a bounded load."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
QUESTIONS = json.loads((SAMPLES / "questions.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def expected(bundle) -> list[dict]:
    """Each sample's answer and key frames from one local pipeline, greedy."""
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    out = []
    with Pipeline(bundle) as pipe:
        for q in QUESTIONS:
            result = pipe.ask(SAMPLES / q["video"], q["question"], SamplingConfig(temperature=0.0))
            out.append({"answer": result.answer.text, "key_frames": result.selection.key_frames.tolist()})
    return out


@pytest.fixture(scope="module")
def server(ray_cluster, bundle) -> Iterator[str]:
    from ray import serve

    from dfrt.cluster.placement import Cluster, placement, scale
    from dfrt.cluster.serve import APP_NAME, start
    from dfrt.serve import ServeOptions

    port = _free_port()
    options = ServeOptions(bundle=bundle, port=port, queue=32, timeout=120.0)
    cluster = Cluster(ray_cluster.address, placement(cpus=0.5), scale("2"))
    start(options, cluster)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, healthy = time.monotonic() + 120, False
        while not healthy and time.monotonic() < deadline:
            try:
                healthy = httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert healthy, "the Ray server never answered /health"
        yield url
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, index: int, stream: bool) -> dict:
    q = QUESTIONS[index]
    data = base64.b64encode((SAMPLES / q["video"]).read_bytes()).decode()
    content = [
        {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
        {"type": "text", "text": q["question"]},
    ]
    messages = [{"role": "user", "content": content}]
    if stream:
        text, doc = "", None
        for chunk in client.chat.completions.create(
            model="demo", messages=messages, temperature=0, stream=True
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                doc = getattr(chunk, "dfrt", None) or doc
        return {
            "answer": text,
            "key_frames": None if doc is None else [k["frame"] for k in doc["key_frames"]],
        }
    response = client.chat.completions.create(model="demo", messages=messages, temperature=0)
    doc = response.model_extra["dfrt"]
    return {
        "answer": response.choices[0].message.content,
        "key_frames": [k["frame"] for k in doc["key_frames"]],
    }


def test_answers_as_one_process(server, expected):
    client = _client(server)
    for i in range(len(QUESTIONS)):
        assert _ask(client, i, stream=False) == expected[i]
    streamed = _ask(client, 0, stream=True)
    assert streamed["answer"] == expected[0]["answer"]
    assert httpx.get(server + "/v1/models").json()["data"][0]["id"] == "demo"


def _load(url: str, requests: int, clients: int, during: Callable[[], None]) -> list[tuple[int, dict | str]]:
    """``requests`` questions from ``clients`` threads (every third streamed); ``during`` runs once a few
    have been answered. Each result: (sample index, the answer or the error)."""
    done = threading.Event()
    finished = [0]

    def one(n: int) -> tuple[int, dict | str]:
        index = n % len(QUESTIONS)
        try:
            result: dict | str = _ask(_client(url), index, stream=n % 3 == 0)
        except Exception as e:
            result = f"{type(e).__name__}: {e}"
        finished[0] += 1
        if finished[0] >= 3:
            done.set()
        return index, result

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, n) for n in range(requests)]
        assert done.wait(180), "no answers before the kill"
        during()
        return [f.result(timeout=300) for f in futures]


def _replicas(deployment: str) -> list[dict]:
    from ray._private.state import actors

    name = f"ServeReplica:dfrt:{deployment}"
    return [a for a in actors().values() if a["State"] == "ALIVE" and a.get("ActorClassName") == name]


def _check(results: list[tuple[int, dict | str]], expected: list[dict]) -> None:
    lost = [r for _, r in results if isinstance(r, str)]
    assert not lost, lost
    for index, result in results:
        assert isinstance(result, dict)
        assert result["answer"] == expected[index]["answer"]
        if result["key_frames"] is not None:
            assert result["key_frames"] == expected[index]["key_frames"]


def test_a_killed_replica_loses_no_answer(server, expected):
    import ray

    killed: list[str] = []

    def kill_one_of_each() -> None:
        for deployment in ("LanguageModel", "VisualEncoder"):
            info = _replicas(deployment)[0]
            ray.kill(ray.get_actor(info["Name"], namespace="serve"), no_restart=True)
            killed.append(info["ActorID"])

    results = _load(server, requests=21, clients=3, during=kill_one_of_each)
    _check(results, expected)
    _wait_for_replicas(2, exclude=killed)  # Serve replaced them


def _wait_for_replicas(count: int, exclude: list[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {d: [a["ActorID"] for a in _replicas(d)] for d in ("LanguageModel", "VisualEncoder")}
        if all(len(ids) == count and not set(ids) & set(exclude) for ids in alive.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"replicas not replaced: {alive}")


def test_a_lost_worker_node_loses_no_answer(server, expected, ray_cluster):
    ingress = {a["Address"]["NodeID"] for a in _replicas("Ingress")}
    working = {a["Address"]["NodeID"] for d in ("LanguageModel", "VisualEncoder") for a in _replicas(d)}
    victims = [n for n in ray_cluster.workers if n.node_id in working and n.node_id not in ingress]
    assert victims, "every worker node holding a replica also holds the ingress"

    def remove_node() -> None:
        ray_cluster.remove_worker(victims[0])
        ray_cluster.add_worker()

    results = _load(server, requests=21, clients=3, during=remove_node)
    _check(results, expected)
    _wait_for_replicas(2, exclude=[])


def test_a_conversation_replays_as_in_one_process(server, bundle):
    """Earlier turns reach the LLM replica: the answer and the prompt's token count equal one local
    pipeline's with the same conversation."""
    from dfrt.runtime.conversation import Conversation, Exchange
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    q = QUESTIONS[0]
    conversation = Conversation((Exchange(q["question"], "I am not sure yet."),), 0)
    with Pipeline(bundle) as pipe:
        local = pipe.ask(
            SAMPLES / q["video"], q["question"], SamplingConfig(temperature=0.0), conversation=conversation
        ).answer
    data = base64.b64encode((SAMPLES / q["video"]).read_bytes()).decode()
    messages = [
        {"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
            {"type": "text", "text": q["question"]},
        ]},
        {"role": "assistant", "content": "I am not sure yet."},
        {"role": "user", "content": q["question"]},
    ]  # fmt: skip
    reply = _client(server).chat.completions.create(model="demo", messages=messages, temperature=0)
    assert reply.choices[0].message.content == local.text
    assert reply.usage.prompt_tokens == local.prompt_tokens + local.visual_tokens
