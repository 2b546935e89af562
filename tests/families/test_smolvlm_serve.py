"""`dfrt serve` with a SmolVLM2 bundle (frame scorer included), answering a real client (openai) about a
real video: the answer, its key frames and tokens in the dfrt document, streaming, --selection."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "04-moved.mp4"
LAUNCH = (
    "import argparse, sys; from dfrt.commands import serve; p = argparse.ArgumentParser(); "
    "serve.register(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))"
)


@pytest.fixture(scope="module")
def served(smolvlm_scorer_bundle, tmp_path_factory):
    env = {**os.environ, "DFRT_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    command = [sys.executable, "-c", LAUNCH, "--bundle", str(smolvlm_scorer_bundle), "--port", "0",
               "--selection", "bolt", "--queue", "2"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline, log = time.monotonic() + 120, ""
        while (match := re.search(r"running on http://127\.0\.0\.1:(\d+)", log)) is None:
            assert process.poll() is None and time.monotonic() < deadline, log
            log += process.stderr.readline()  # type: ignore[union-attr]
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{match.group(1)}/v1", api_key="none", timeout=120)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM)


def _messages(question: str) -> list[dict]:
    url = "data:video/mp4;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
        }
    ]


def test_a_client_gets_an_answer_with_its_key_frames(served) -> None:
    reply = served.chat.completions.create(
        model="bundle", messages=_messages("Which way did the square move?"), max_tokens=6, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    document = reply.model_extra["dfrt"]
    keys = document["key_frames"]
    assert keys and all(k["score"] is not None for k in keys)  # chosen by the scorer (bolt)
    assert 0 < document["tokens"]["visual"] <= 320
    assert reply.usage.completion_tokens >= 1


def test_streaming_gives_the_same_text(served) -> None:
    question = "What colour is the square?"
    whole = served.chat.completions.create(model="bundle", messages=_messages(question), max_tokens=6,
                                           temperature=0)  # fmt: skip
    pieces = served.chat.completions.create(
        model="bundle", messages=_messages(question), max_tokens=6, temperature=0, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in pieces if chunk.choices)
    assert text == whole.choices[0].message.content
