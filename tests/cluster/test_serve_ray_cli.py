"""`dfrt serve --ray ADDRESS` as a user runs it: it deploys on the cluster, answers, and stops on SIGTERM."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")

httpx = pytest.importorskip("httpx")
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_serve_command_on_a_cluster(ray_cluster, bundle):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "dfrt.cli", "serve", "--bundle", str(bundle), "--port", str(port),
        "--ray", ray_cluster.address, "--replicas", "encoder=1,llm=1", "--max-replicas", "llm=2",
        "--cpus", "0.5", "--media-path", str(SAMPLES),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # serving: the command says so once every replica runs
        while not any("via Ray" in line for line in lines) and time.monotonic() < deadline:
            assert server.poll() is None, "".join(lines)
            time.sleep(0.5)
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        question = json.loads((SAMPLES / "questions.json").read_text())[0]
        body = {
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": str(SAMPLES / question["video"])}},
                {"type": "text", "text": question["question"]},
            ]}],
            "temperature": 0,
        }  # fmt: skip
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == _local_answer(bundle, question)
        missing = {**body, "messages": [{**body["messages"][0], "content": [
            {"type": "video_url", "video_url": {"url": str(SAMPLES / "nope.mp4")}},
            {"type": "text", "text": "What?"},
        ]}]}  # fmt: skip
        refused = httpx.post(url + "/v1/chat/completions", json=missing, timeout=60)
        assert refused.status_code in (400, 404) and "error" in refused.json()
        garbage = base64.b64encode(b"not a video at all" * 64).decode()
        undecodable = {**body, "messages": [{**body["messages"][0], "content": [
            {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{garbage}"}},
            {"type": "text", "text": "What?"},
        ]}]}  # fmt: skip
        bad = httpx.post(url + "/v1/chat/completions", json=undecodable, timeout=60)  # fails on an encoder
        message = bad.json()["error"]["message"]
        assert bad.status_code == 422 and "dfrt-video-" not in message and "/tmp" not in message, bad.text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        reader.join(timeout=10)
    stderr = "".join(lines)
    assert server.returncode == 0, stderr
    assert all(line.startswith("dfrt: ") for line in lines if line.strip()), stderr  # quiet: no Ray lines


def _local_answer(bundle: Path, question: dict) -> str:
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    with Pipeline(bundle) as pipe:
        return pipe.ask(
            SAMPLES / question["video"], question["question"], SamplingConfig(temperature=0.0)
        ).answer.text


def test_serve_ray_refuses_what_it_cannot_do(bundle):
    for args, message in (
        (["--ray", "--watch", "cam=rtsp://127.0.0.1:1/x"], "--watch is not available with --ray"),
        (["--ray", "--port", "0"], "--port 0 is not available with --ray"),
        (["--max-replicas", "2"], "--max-replicas needs --ray"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "dfrt.cli", "serve", "--bundle", str(bundle), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
