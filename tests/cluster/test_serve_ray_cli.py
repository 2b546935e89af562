"""`dfrt serve --ray ADDRESS` as a user runs it: it deploys on the cluster, answers, and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
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
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
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
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert all(line.startswith("dfrt: ") for line in lines), stderr  # quiet: no Ray log lines
    assert any("via Ray" in line for line in lines)


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
