"""``dfrt serve`` through the official ``openai`` client and raw HTTP: the same answers as ``dfrt infer``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.serve.conftest import API_KEY, SAMPLES, Server, data_url, sample_question, video_message

openai = pytest.importorskip("openai")


def infer_answer(server: Server, clip: str, question: str) -> str:
    """``dfrt infer --temperature 0 --json`` on the same bundle, video and question."""
    env = {**os.environ, "DFRT_CACHE_DIR": str(server.cache)}
    command = [sys.executable, "-m", "dfrt.cli", "infer", str(SAMPLES / clip), question, "--json"]
    command += ["--bundle", str(server.bundle), "--temperature", "0"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=True)
    return json.loads(done.stdout)["answer"]


@pytest.mark.parametrize("clip", ["07-count.mp4", "04-moved.mp4"])
def test_openai_client_answers_as_dfrt_infer(server: Server, clip: str) -> None:
    question = sample_question(clip)
    expected = infer_answer(server, clip, question)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    messages = video_message(data_url(SAMPLES / clip), question)

    completion = client.chat.completions.create(model="demo", messages=messages, temperature=0)
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 0
    info = completion.model_extra["dfrt"]
    assert info["key_frames"] and info["tokens"]["visual"] > 0 and "vision" in info["timings"]
    assert len(info["video"]["sha256"]) == 64

    stream = client.chat.completions.create(
        model="demo", messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[0].model_extra["dfrt"]["key_frames"]
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_a_follow_up_on_the_same_video_skips_decoding(server: Server) -> None:
    clip = server.media / "03-brief-when.mp4"
    client = server.client()
    body = {"messages": video_message(data_url(clip), "What color was it?"), "temperature": 0}
    first = client.post("/v1/chat/completions", json=body).json()
    decodes = server.metric('dfrt_stage_seconds_count{stage="decode"}')
    hits = server.metric("dfrt_cache_hits_total")
    body["messages"] = video_message(data_url(clip), "Near the end, a shape appeared. What color was it?")
    second = client.post("/v1/chat/completions", json=body).json()
    assert not first["dfrt"]["video"]["cached"] and second["dfrt"]["video"]["cached"]
    assert second["dfrt"]["video"]["sha256"] == first["dfrt"]["video"]["sha256"]
    assert second["dfrt"]["timings"]["decode"] == 0.0
    assert server.metric("dfrt_cache_hits_total") == hits + 1
    assert server.metric('dfrt_stage_seconds_count{stage="decode"}') == decodes  # no decoding this time
    # the same file by path has the same bytes: the same cache entry
    by_path = client.post(
        "/v1/chat/completions", json={**body, "messages": video_message(clip.name, "Which?")}
    )
    assert by_path.json()["dfrt"]["video"]["cached"]


def test_metrics_health_and_models(server: Server) -> None:
    client = server.client()
    assert client.get("/health").json()["status"] == "ok"
    text = client.get("/metrics").text
    for name in (
        "dfrt_requests_total",
        "dfrt_queue_depth",
        "dfrt_stage_seconds_bucket",
        "dfrt_cache_hits_total",
    ):
        assert name in text
    assert server.client(None).get("/metrics").status_code == 401  # the key guards metrics too
    assert server.client(None).get("/health").status_code == 200


def test_an_image_is_a_one_frame_video(server: Server, tmp_path) -> None:
    import cv2
    import numpy as np

    image = np.full((64, 96, 3), 128, np.uint8)
    cv2.circle(image, (48, 32), 12, (0, 0, 255), -1)
    _, png = cv2.imencode(".png", image)
    path = tmp_path / "shot.png"
    path.write_bytes(png.tobytes())
    content = [
        {"type": "image_url", "image_url": {"url": data_url(path, "image/png")}},
        {"type": "text", "text": "Which shape?"},
    ]
    reply = server.client().post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["dfrt"]["video"]["sampled_frames"] == 1


def test_readme_curl_example(server: Server) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps(
        {
            "model": "demo",
            "temperature": 0,
            "messages": video_message("07-count.mp4", "How many shapes can you see?"),
            "dfrt": {"max_frames": 16},
        }
    )
    command = [curl, "-sS", "--fail-with-body", f"{server.url}/v1/chat/completions"]
    command += ["-H", f"Authorization: Bearer {API_KEY}", "-H", "Content-Type: application/json", "-d", body]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    reply = json.loads(done.stdout)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"].strip()
    stream_body = json.dumps({**json.loads(body), "stream": True})
    streamed = subprocess.run(
        [*command[:2], "-N", *command[2:-1], stream_body],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert streamed.stdout.rstrip().endswith("data: [DONE]")


def test_docs_python_example_runs(server: Server, capsys) -> None:
    """The ``openai`` example of docs/serving.md, as written (server address, key and sample path swapped)."""
    text = (SAMPLES.parent / "docs" / "serving.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("http://127.0.0.1:8080/v1", server.url + "/v1").replace('"unused"', repr(API_KEY))
    exec(compile(code.replace('"samples/', repr(str(SAMPLES)) + ' + "/'), "serving.md", "exec"), {})
    out = capsys.readouterr().out
    assert "two" in out and "key frames at" in out
