"""What llama-server and vLLM users expect of the server: --served-model-name everywhere, /v1/models/{id},
/props and /version, and one access-log line per request on stderr (never the body)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.serve.conftest import SAMPLES, data_url, sample_question, video_message

httpx = pytest.importorskip("httpx")

LAUNCH = (
    "import argparse, sys; from dfrt.commands import serve; p = argparse.ArgumentParser(); "
    "serve.register(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))"
)


@pytest.fixture(scope="module")
def served(demo):
    bundle, cache = demo
    env = {**os.environ, "DFRT_CACHE_DIR": str(cache)}
    command = [sys.executable, "-c", LAUNCH, "--bundle", str(bundle), "--port", "0", "--served-model-name",
               "cam-vlm"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while (match := re.search(r"running on http://127\.0\.0\.1:(\d+)", "".join(lines))) is None:
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            lines.append(process.stderr.readline())  # type: ignore[union-attr]
        reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        yield f"http://127.0.0.1:{match.group(1)}", lines
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM)


def test_the_served_model_name_is_the_id_everywhere(served) -> None:
    url, _ = served
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "cam-vlm"
    assert httpx.get(f"{url}/v1/models/cam-vlm").json()["id"] == "cam-vlm"
    missing = httpx.get(f"{url}/v1/models/gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    messages = video_message(data_url(SAMPLES / "07-count.mp4"), sample_question("07-count.mp4"))
    body = {"model": "cam-vlm", "max_tokens": 3, "temperature": 0, "messages": messages}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200 and reply.json()["model"] == "cam-vlm"


def test_props_and_version_say_what_runs(served) -> None:
    url, _ = served
    props = httpx.get(f"{url}/props").json()
    assert props["model"] == "cam-vlm" and props["family"] == "dynfocus" and props["backend"] == "onnxruntime"
    assert props["n_ctx"] > 0 and "/" not in props["bundle"]  # no server path beyond the bundle's name
    assert httpx.get(f"{url}/version").json()["version"]


def test_each_request_gets_one_access_line_without_its_body(served) -> None:
    url, lines = served
    headers = {"Content-Type": "application/json"}
    httpx.post(f"{url}/v1/chat/completions", content=b'{"secret-body": 1}', headers=headers, timeout=30)
    deadline = time.monotonic() + 10
    pattern = re.compile(r"dfrt: serve: 127\.0\.0\.1 POST /v1/chat/completions 400 \d+\.\d{3}s")
    while not any(pattern.search(line) for line in list(lines)) and time.monotonic() < deadline:
        time.sleep(0.1)
    text = "".join(lines)
    assert pattern.search(text), text[-2000:]
    assert "secret-body" not in text
    assert '"POST /v1/chat/completions HTTP/1.1"' not in text  # uvicorn's own access line is off
