"""`dfrt batch` on the demo bundle and the sample clips: answers as `dfrt infer`, error rows, resume."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfrt import cli
from dfrt.batch import BatchOptions, run_batch
from dfrt.batch.jobs import MAX_LINE_BYTES

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
QUESTIONS = json.loads((SAMPLES / "questions.json").read_text())
VARYING = ("timings", "decode_tokens_per_second")  # differ between runs


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """The sample clips, a clip that is not a video, and a symbolic link out of the folder."""
    root = tmp_path_factory.mktemp("videos")
    outside = tmp_path_factory.mktemp("outside")
    for clip in SAMPLES.glob("*.mp4"):
        shutil.copyfile(clip, root / clip.name)
    (root / "sub").mkdir()
    shutil.copyfile(SAMPLES / "07-count.mp4", root / "sub" / "count.mp4")
    (root / "broken.mp4").write_bytes(b"not a video at all" * 100)
    shutil.copyfile(SAMPLES / "01-brief-colour.mp4", outside / "secret.mp4")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    return root


def _pairs() -> list[dict]:
    return [{"id": f"q{i}", "video": q["video"], "question": q["question"]} for i, q in enumerate(QUESTIONS)]


def _write(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _batch(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    code = cli.main(["batch", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VARYING} for row in rows]


def test_answers_equal_dfrt_infer(bundle, videos, tmp_path, capsys, monkeypatch):
    questions = _write(tmp_path / "q.jsonl", _pairs())
    out = tmp_path / "answers.jsonl"
    code, stdout, err = _batch(
        capsys, monkeypatch, videos, questions, "--out", out, "--bundle", bundle, "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["pairs"] == summary["answered"] == 7 and summary["errors"] == summary["skipped"] == 0
    assert summary["videos"] == 7
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(7)]
    for row, pair in zip(rows, _pairs(), strict=True):
        assert {k: row[k] for k in ("id", "video", "question")} == pair
        infer = ["infer", SAMPLES / pair["video"], pair["question"], "--bundle", bundle, "--temperature", "0"]
        result = subprocess.run(
            [sys.executable, "-m", "dfrt.cli", *infer, "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert row["answer"] == doc["answer"] and row["stop_reason"] == doc["stop_reason"]
        assert row["key_frames"] == doc["key_frames"] and row["tokens"] == doc["tokens"]
        assert row["sampled_frames"] == doc["video"]["sampled_frames"]
        assert {"decode", "llm_prefill", "total"} <= set(row["timings"])
    # the demo answers six of the seven samples right (samples/README.md)
    assert sum(r["answer"].strip() == q["answer"] for r, q in zip(rows, QUESTIONS, strict=True)) == 6


def test_error_rows_never_stop_the_job(bundle, videos, tmp_path, capsys, monkeypatch):
    lines = [
        {"id": "ok", "video": "04-moved.mp4", "question": "Which direction did the yellow square move?"},
        {"id": "missing", "video": "nope.mp4", "question": "What?"},
        {"id": "dotdot", "video": "../outside/secret.mp4", "question": "What?"},
        {"id": "absolute", "video": str(SAMPLES / "04-moved.mp4"), "question": "What?"},
        {"id": "link", "video": "escape.mp4", "question": "What?"},
        {"id": "broken", "video": "broken.mp4", "question": "What?"},
        {"id": "empty", "video": "04-moved.mp4", "question": "  "},
        {"id": "noquestion", "video": "04-moved.mp4"},
        '{"video": "04-moved.mp4", "question": ',
        "[1, 2]",
        '{"video": "04-moved.mp4", "question": "' + "a" * MAX_LINE_BYTES + '"}',
        "",
        {"id": "ok", "video": "07-count.mp4", "question": "How many shapes can you see?"},
        {"video": "sub/count.mp4", "question": "How many shapes can you see?"},
    ]
    questions = _write(tmp_path / "q.jsonl", lines)
    out = tmp_path / "answers.jsonl"
    code, stdout, err = _batch(
        capsys, monkeypatch, videos, questions, "--out", out, "--bundle", bundle, "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["pairs"], summary["answered"], summary["errors"], summary["skipped"]) == (13, 2, 11, 0)
    assert summary["videos"] == 2  # 04-moved and sub/count; broken.mp4 failed to decode
    rows = {row["line"]: row for row in _rows(out)}
    assert len(rows) == 13 and 12 not in rows  # the blank line is no pair
    assert rows[1]["answer"].strip() == "right" and rows[14]["answer"].strip() == "two"
    expected = {
        2: "no such file",
        3: "'..' is refused",
        4: "absolute paths are refused",
        5: "symbolic link out of VIDEOS",
        6: "broken.mp4",
        7: "the question is empty",
        8: '"question" must be text',
        9: "not valid JSON",
        10: "not a JSON object",
        11: f"longer than {MAX_LINE_BYTES} bytes",
        13: "duplicate of line 1",
    }
    for line, words in expected.items():
        assert words in rows[line]["error"], rows[line]
        assert "answer" not in rows[line]
    assert rows[13]["duplicate_of"] == 1 and rows[2]["id"] == "missing"


def test_resume_after_a_kill(bundle, videos, tmp_path, capsys, monkeypatch):
    lines = [*_pairs(), {"video": "04-moved.mp4", "question": "What color was the square?"}, "oops"]
    questions = _write(tmp_path / "q.jsonl", lines)
    whole, out = tmp_path / "whole.jsonl", tmp_path / "answers.jsonl"
    assert _batch(capsys, monkeypatch, videos, questions, "--out", whole, "--bundle", bundle)[0] == 0
    data = whole.read_bytes()
    rows = data.splitlines(keepends=True)
    assert len(rows) == 9
    cut = len(b"".join(rows[:4])) + len(rows[4]) // 2  # killed while writing the fifth row
    out.write_bytes(data[:cut])
    code, stdout, err = _batch(
        capsys, monkeypatch, videos, questions, "--out", out, "--bundle", bundle, "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["skipped"], summary["answered"] + summary["errors"]) == (4, 5)
    assert summary["torn_line_dropped"] is True
    assert _stable(_rows(out)) == _stable(_rows(whole))
    before = out.read_bytes()
    code, stdout, _ = _batch(
        capsys, monkeypatch, videos, questions, "--out", out, "--bundle", bundle, "--json"
    )
    summary = json.loads(stdout)
    assert (code, summary["skipped"], summary["answered"], summary["errors"]) == (0, 9, 0, 0)
    assert summary["videos"] == 0 and out.read_bytes() == before


def test_library_call_with_an_open_pipeline(bundle, videos, tmp_path):
    from dfrt.runtime.pipeline import Pipeline

    questions = _write(tmp_path / "q.jsonl", _pairs()[3:5])
    seen: list[dict] = []
    with Pipeline(bundle) as pipe:
        options = BatchOptions(videos, questions, tmp_path / "a.jsonl")
        summary = run_batch(options, pipe, on_start=lambda n, s: seen.append({"n": n}), on_row=seen.append)
        assert not pipe.closed
    assert (summary.answered, summary.errors, summary.videos) == (2, 0, 2)
    assert seen[0] == {"n": 2} and [r["id"] for r in seen[1:]] == ["q3", "q4"]


def test_plain_progress_lines_without_tqdm(bundle, videos, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    questions = _write(tmp_path / "q.jsonl", _pairs()[:2])
    code, stdout, err = _batch(
        capsys, monkeypatch, videos, questions, "--out", tmp_path / "a.jsonl", "--bundle", bundle
    )
    assert code == 0, err
    assert "dfrt: batch 2/2 (0 errors)" in err.splitlines()
    assert stdout.startswith("2 pairs: 2 answered, 0 errors") and stdout.count("\n") == 1


def test_refuses_an_output_it_did_not_write(bundle, videos, tmp_path, capsys, monkeypatch):
    questions = _write(tmp_path / "q.jsonl", _pairs()[:1])
    out = tmp_path / "notes.txt"
    out.write_text("my notes\nmore notes\n")
    code, _, err = _batch(capsys, monkeypatch, videos, questions, "--out", out, "--bundle", bundle)
    assert code == 1 and "not a dfrt batch row" in err and len(err.splitlines()) == 1
    assert out.read_text() == "my notes\nmore notes\n"
    code, _, err = _batch(capsys, monkeypatch, videos, questions, "--out", questions, "--bundle", bundle)
    assert code == 1 and "is the input" in err


def test_ray_options_are_checked_before_anything_is_written(videos, tmp_path, capsys, monkeypatch):
    questions = _write(tmp_path / "q.jsonl", [*_pairs()[:1], "not json"])
    out = tmp_path / "a.jsonl"
    has_ray = importlib.util.find_spec("ray") is not None  # the runtime-only job installs no dfrt[ray]
    unreachable = "no Ray cluster reachable there" if has_ray else "pip install 'dfrt[ray]'"
    for args, message in (
        (["--replicas", "2"], "--replicas needs --ray"),
        (["--ray", "--replicas", "0"], "--replicas must be an integer from 1 to 1024"),
        (["--ray", "--replicas", "encoder=2"], "does not say how many for llm"),
        (["--ray", "--replicas", "3", "--max-replicas", "2"], "--max-replicas encoder=2 is below"),
        (["--ray", "--gpus", "1.5"], "whole number of GPUs"),
        (["--ray", "--resources", "[1]"], "must be a JSON object"),
        (["--ray", "--resources", '{"GPU": 1}'], "not a custom resource name"),
        (["--ray", "host-without-port"], "give HOST:PORT"),
        (["--ray", "127.0.0.1:1"], unreachable),  # nothing listens on port 1
    ):
        code, _, err = _batch(capsys, monkeypatch, videos, questions, "--out", out, *args)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists()
