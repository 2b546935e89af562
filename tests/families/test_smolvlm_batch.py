"""`dfrt batch` with a SmolVLM2 bundle: every (video, question) pair answered within the budget, each video
decoded once, the rows equal to `dfrt infer --json`'s answer and key frames."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfrt import cli

pytestmark = pytest.mark.runtime

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_batch_answers_every_pair_as_infer_does(smolvlm_bundle, tmp_path, capsys) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("04-moved.mp4", "07-count.mp4"):
        shutil.copy(SAMPLES / name, videos / name)
    pairs = [{"id": f"q{i}", "video": v, "question": q} for i, (v, q) in enumerate(
        [("04-moved.mp4", "Which way did it move?"), ("07-count.mp4", "How many?"), ("04-moved.mp4", "What?")]
    )]  # fmt: skip
    questions, out = tmp_path / "q.jsonl", tmp_path / "answers.jsonl"
    questions.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    code = cli.main(["batch", str(videos), str(questions), "--out", str(out), "--bundle", str(smolvlm_bundle),
                     "--max-tokens", "4", "--json"])  # fmt: skip
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["answered"] == 3 and summary["videos"] == 2 and summary["errors"] == 0
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    row = rows["q1"]
    assert 0 < row["tokens"]["visual"] <= 256 and row["key_frames"]
    infer = subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "infer", str(SAMPLES / "07-count.mp4"), "How many?", "--bundle",
         str(smolvlm_bundle), "--temperature", "0", "--max-tokens", "4", "--json"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr
    document = json.loads(infer.stdout)
    assert row["answer"] == document["answer"] and row["key_frames"] == document["key_frames"]
    assert row["tokens"] == document["tokens"]
