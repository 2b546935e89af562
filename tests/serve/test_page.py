"""The page at ``/`` in a headless Chromium (Debian's ``chromium``): it submits a sample and shows the answer.

Skipped without chromium (CI: ``apt-get install -y chromium``). The page's test mode (``?video=...&auto=1``)
fills the form from the URL and submits; ``--dump-dom`` shows the page after the answer streamed in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.serve.conftest import API_KEY, Server

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "serve-page.png"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def run_chromium(url: str, *extra: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += ["--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,560"]
    command += ["--virtual-time-budget=20000", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def answered_dom(url: str, tmp_path: Path, tries: int = 4) -> str:
    """The page's DOM once it shows an answer. Headless Chromium's virtual clock runs on while a streamed
    response trickles in, so on a loaded CPU it may dump the page before the answer arrived: load again."""
    dom = ""
    for _ in range(tries):
        done = run_chromium(url, "--dump-dom", tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        dom = done.stdout
        if 'data-done="1"' in dom:
            break
    return dom


def test_the_page_submits_a_sample_and_shows_the_answer(server: Server, tmp_path: Path) -> None:
    question = "Near the end, a shape appeared for a moment. What color was it?"
    query = {"video": "03-brief-when.mp4", "question": question, "key": API_KEY, "auto": "1"}
    url = f"{server.url}/?{urllib.parse.urlencode(query)}"
    dom = answered_dom(url, tmp_path)
    assert 'data-done="1"' in dom, dom[-3000:]
    assert "Answered in" in dom and "key frames of" in dom and "<rect" in dom
    shot = tmp_path / "page.png"
    done = run_chromium(url, f"--screenshot={shot}", tmp_path=tmp_path)
    assert done.returncode == 0 and shot.stat().st_size > 10_000
    if os.environ.get("DFRT_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_the_page_offers_the_sample_clips_and_answers_one_right(server: Server, tmp_path: Path) -> None:
    import httpx

    listed = httpx.get(f"{server.url}/samples", timeout=60).json()["samples"]
    assert [s["name"] for s in listed][:2] == ["01-brief-colour.mp4", "02-brief-shape.mp4"] and len(
        listed
    ) == 7
    clip = httpx.get(f"{server.url}/samples/07-count.mp4", timeout=30)
    assert (
        clip.status_code == 200 and clip.headers["content-type"] == "video/mp4" and len(clip.content) > 1000
    )
    for bad in ("../dfrt.json", "questions.json", "07-count.mp4.lock", "%2e%2e%2fetc%2fpasswd"):
        assert httpx.get(f"{server.url}/samples/{bad}", timeout=30).status_code == 404
    # the browser picks the counting sample, fills in its question and asks: the demo answers it right
    query = {"sample": "07-count.mp4", "key": API_KEY, "auto": "1"}
    dom = answered_dom(f"{server.url}/?{urllib.parse.urlencode(query)}", tmp_path)
    assert 'data-done="1"' in dom, dom[-3000:]
    assert "How many shapes" in dom and "two" in dom.split('id="answer"', 1)[1][:400]
