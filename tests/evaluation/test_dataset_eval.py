"""`dfrt eval --dataset` on the demo bundle: the same accuracy as `dfrt eval` on the same held-out clips,
hostile lines as error rows, a killed run resumed without duplicates, files that are not JSON Lines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfrt import cli
from dfrt.batch.jobs import MAX_LINE_BYTES
from dfrt.demo.evaluate import OnnxEmbedder, evaluate, held_out_set
from dfrt.demo.world import ANSWER_TYPES, KINDS
from dfrt.runtime.pipeline import Pipeline

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CLIPS = 2 * len(KINDS)  # two held-out clips of each question kind
VARYING = ("timings",)


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    """The first held-out clips, as `dfrt eval` writes them, and a dataset of them: each clip once as
    multiple choice (options from the demo's answer vocabulary, lettered on odd clips) and once free."""
    root = tmp_path_factory.mktemp("demo-set")
    items = held_out_set(CLIPS, root / "clips")
    rows = []
    for item in items:
        clip, vocabulary = item.clip, list(ANSWER_TYPES[item.clip.kind])
        options = [clip.answer, *[w for w in vocabulary if w != clip.answer][:3]]
        turn = item.index % len(options)
        options = options[turn:] + options[:turn]  # the right letter moves from clip to clip
        letter = "ABCD"[options.index(clip.answer)]
        if item.index % 2:
            options = [f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)]
        common = {"video": f"clips/{item.video.name}", "question": clip.question, "type": clip.kind}
        rows.append({"id": f"mc-{item.index}", **common, "options": options, "answer": letter})
        rows.append({"id": f"free-{item.index}", **common, "answer": clip.answer})
    return items, _write(root / "dataset.jsonl", rows)


def _write(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _eval(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VARYING} for row in rows]


def test_the_same_accuracy_as_dfrt_eval_on_the_same_clips(bundle, demo_set, tmp_path, capsys):
    items, dataset = demo_set
    with Pipeline(bundle, backend="onnxruntime") as pipe:
        demo = evaluate(items, pipe, OnnxEmbedder(pipe), ["dynfocus", "uniform"])
    out = tmp_path / "rows.jsonl"
    # the demo LM answers its own questions with a word: ask the question alone, read the option's text
    code, stdout, err = _eval(
        capsys, "--dataset", dataset, "--out", out, "--bundle", bundle, "--strategies", "dfrt,uniform",
        "--mc-prompt", "{question}", "--json", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["lines"] == 2 * CLIPS and summary["unusable_lines"] == 0
    assert summary["formats"] == {"multiple_choice": CLIPS, "free": CLIPS}
    for ours, theirs in (("dfrt", "dynfocus"), ("uniform", "uniform")):
        scores, reference = summary["strategies"][ours], demo[theirs].to_dict()
        assert scores["errors"] == 0 and scores["answered"] == 2 * CLIPS
        assert scores["accuracy"] == pytest.approx(reference["overall"]), ours
        for fmt in ("multiple_choice", "free"):
            assert scores["per_format"][fmt]["accuracy"] == pytest.approx(reference["overall"]), (ours, fmt)
        per_type = {kind: v["accuracy"] for kind, v in scores["per_type"].items()}
        assert per_type == pytest.approx(reference["per_kind"]), ours
        assert scores["mean_visual_tokens"] == pytest.approx(reference["mean_visual_tokens"]), ours
    rows = _rows(out)
    assert len(rows) == 2 * 2 * CLIPS
    assert len({(r["id"], r["strategy"]) for r in rows}) == len(rows)
    mc = [r for r in rows if r["format"] == "multiple_choice"]
    assert all(r["options"] == [o.split(". ", 1)[-1] for o in r["options"]] for r in mc)  # letters gone
    assert all(r["matched_by"] in ("text", None) for r in mc)  # a word, never a letter, from the demo LM
    assert summary["strategies"]["dfrt"]["accuracy"] >= 0.7  # the demo answers these well (docs/demo.md)


def test_the_same_accuracy_within_a_visual_token_budget(bundle, demo_set, tmp_path, capsys):
    """--visual-tokens 104: fewer DynFocus key frames, and uniform gets as many cones as those tokens hold."""
    items, dataset = demo_set
    items = items[: len(KINDS)]
    with Pipeline(bundle, backend="onnxruntime") as pipe:
        demo = evaluate(items, pipe, OnnxEmbedder(pipe), ["dynfocus", "uniform"], visual_tokens=104)
    free = [x for x in map(json.loads, dataset.read_text().splitlines()) if x["id"].startswith("free-")]
    small = _write(dataset.parent / "budget.jsonl", free[: len(KINDS)])
    code, stdout, err = _eval(
        capsys, "--dataset", small, "--out", tmp_path / "rows.jsonl", "--bundle", bundle,
        "--strategies", "dfrt,uniform", "--visual-tokens", "104", "--json", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)["strategies"]
    for ours, theirs in (("dfrt", "dynfocus"), ("uniform", "uniform")):
        reference = demo[theirs].to_dict()
        assert summary[ours]["accuracy"] == pytest.approx(reference["overall"]), ours
        assert summary[ours]["mean_visual_tokens"] == pytest.approx(reference["mean_visual_tokens"]), ours
    assert summary["dfrt"]["mean_visual_tokens"] == 104


def test_the_text_summary_has_a_row_per_strategy_and_type(bundle, demo_set, tmp_path, capsys):
    _, dataset = demo_set
    small = _write(tmp_path / "small.jsonl", [json.loads(x) for x in dataset.read_text().splitlines()[:4]])
    shutil.copytree(dataset.parent / "clips", tmp_path / "clips")
    code, stdout, err = _eval(
        capsys, "--dataset", small, "--out", tmp_path / "rows.jsonl", "--bundle", bundle, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("4 questions (2 multiple choice, 2 free answer), 0 unusable lines")
    assert [line.split()[0] for line in lines[2:5]] == ["dfrt", "uniform", "uniform-full"]
    assert any(line.startswith("brief_colour") for line in lines)
    assert "dfrt eval" not in err  # no progress bar asked for
    full = [r for r in _rows(tmp_path / "rows.jsonl") if r["strategy"] == "uniform-full"]
    # uniform-full: as many cone-only frames as the demo LM's 512-token context holds with the prompt
    for row in full:
        assert row["visual_tokens"] == 38 * row["frames_shown"]
        assert row["visual_tokens"] + row["tokens"]["prompt"] + 1 + 16 <= 512
        assert row["visual_tokens"] + 38 + row["tokens"]["prompt"] + 1 + 16 > 512


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """The sample clips, a clip that is not a video, and a symbolic link out of the folder."""
    root = tmp_path_factory.mktemp("videos")
    outside = tmp_path_factory.mktemp("outside")
    for name in ("04-moved.mp4", "07-count.mp4"):
        shutil.copyfile(SAMPLES / name, root / name)
    (root / "broken.mp4").write_bytes(b"not a video at all" * 100)
    shutil.copyfile(SAMPLES / "01-brief-colour.mp4", outside / "secret.mp4")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    return root


MOVED = "Which direction did the yellow square move?"
COUNT = "How many shapes can you see?"


def test_hostile_lines_are_error_rows_and_the_run_goes_on(bundle, videos, tmp_path, capsys):
    options = ["A. left", "B. right", "C. up", "D. down"]
    what = {"video": "04-moved.mp4", "question": "What?"}
    lines = [
        {"id": "ok", "video": "04-moved.mp4", "question": MOVED, "options": options, "answer": "B"},
        '{"video": "04-moved.mp4", "question": ',
        "[1, 2]",
        {"id": "noquestion", "video": "04-moved.mp4", "answer": "right"},
        {"id": "noanswer", **what},
        {"id": "range", **what, "options": options, "answer": "E"},
        {"id": "notalist", **what, "options": "left, right", "answer": "A"},
        {"id": "one", **what, "options": ["left"], "answer": "A"},
        {"id": "nottext", **what, "options": ["left", 3], "answer": "A"},
        {"id": "neither", **what, "options": options, "answer": "sideways"},
        {"id": "missing", "video": "nope.mp4", "question": "What?", "answer": "x"},
        {"id": "dotdot", "video": "../outside/secret.mp4", "question": "What?", "answer": "x"},
        {"id": "absolute", "video": str(SAMPLES / "04-moved.mp4"), "question": "What?", "answer": "x"},
        {"id": "link", "video": "escape.mp4", "question": "What?", "answer": "x"},
        {"id": "broken", "video": "broken.mp4", "question": "What?", "answer": "x"},
        {"id": "ok", "video": "07-count.mp4", "question": COUNT, "answer": "two"},
        {"id": "type", **what, "answer": "x", "type": 3},
        {"id": "article", **what, "answer": "The"},
        '{"video": "04-moved.mp4", "question": "' + "a" * MAX_LINE_BYTES + '"}',
        "",
        {"video": "07-count.mp4", "question": COUNT, "answer": "two", "task": "count"},
        {"id": "lettered", **what, "options": options, "answer": "C. left"},
        {
            "id": "lettered-ok",
            "video": "07-count.mp4",
            "question": COUNT,
            "options": ["one", "two"],
            "answer": "(B) two",
        },
    ]
    dataset = _write(tmp_path / "dataset.jsonl", lines)
    out = tmp_path / "rows.jsonl"
    code, stdout, err = _eval(
        capsys, "--dataset", dataset, "--videos", videos, "--out", out, "--bundle", bundle,
        "--strategies", "dfrt,uniform", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["lines"], summary["unusable_lines"]) == (4, 18)  # broken.mp4 is usable until decoded
    rows = _rows(out)
    by_line: dict[int, list[dict]] = {}
    for row in rows:
        by_line.setdefault(row["line"], []).append(row)
    assert 20 not in by_line  # the blank line is no question
    expected = {
        2: "not valid JSON",
        3: "not a JSON object",
        4: '"question" must be text',
        5: '"answer" must be text',
        6: '"answer" E is not one of the 4 options (A-D)',
        7: '"options" must be a list of 2 to 26 texts',
        8: '"options" must be a list of 2 to 26 texts',
        9: "every option must be non-empty text",
        10: "neither an option letter (A-D) nor the text of exactly one option",
        11: "no such file",
        12: "'..' is refused",
        13: "absolute paths are refused",
        14: "symbolic link out of VIDEOS",
        15: "broken.mp4",
        16: "duplicate of line 1",
        17: '"type" (or "task") must be text',
        18: '"answer" is empty once normalised',
        19: f"longer than {MAX_LINE_BYTES} bytes",
        22: '"answer" C. left is not the text of option C',
    }
    for line, words in expected.items():
        for row in by_line[line]:
            assert words in row["error"], row
            assert "response" not in row
    assert [r.get("strategy") for r in by_line[15]] == ["dfrt", "uniform"]  # the video failed per strategy
    assert all(len(by_line[n]) == 1 and "strategy" not in by_line[n][0] for n in set(expected) - {15})
    assert by_line[16][0]["duplicate_of"] == 1
    answered = [r for r in rows if "response" in r]
    assert sorted((r["line"], r["strategy"]) for r in answered) == [
        (1, "dfrt"), (1, "uniform"), (21, "dfrt"), (21, "uniform"), (23, "dfrt"), (23, "uniform")
    ]  # fmt: skip
    assert by_line[23][0]["expected"] == "B" and by_line[23][0]["options"] == ["one", "two"]
    assert by_line[1][0]["options"] == ["left", "right", "up", "down"] and by_line[1][0]["expected"] == "B"
    assert by_line[21][0]["type"] == "count" and by_line[21][0]["expected"] == "two"
    assert summary["strategies"]["dfrt"]["errors"] == 1 and summary["strategies"]["dfrt"]["answered"] == 3


def test_a_killed_run_resumes_without_duplicates(bundle, videos, tmp_path, capsys):
    lines = [
        {"id": "m", "video": "04-moved.mp4", "question": MOVED, "options": ["left", "right"], "answer": "B"},
        {"video": "04-moved.mp4", "question": MOVED, "answer": "right"},
        {"id": 7, "video": "07-count.mp4", "question": COUNT, "answer": "two"},
        "oops",
    ]
    dataset = _write(tmp_path / "dataset.jsonl", lines)
    whole = tmp_path / "whole.jsonl"
    args = ["--dataset", dataset, "--videos", videos, "--bundle", bundle, "--no-progress", "--json"]
    code, stdout, err = _eval(capsys, *args, "--out", whole)
    assert code == 0, err
    whole_summary = json.loads(stdout)["strategies"]
    reference = _rows(whole)
    assert len(reference) == 1 + 3 * 3

    # a real kill: SIGKILL once an answer is written, then the same command again (on a busy machine the
    # child may finish before it is killed: then once more, on a new file)
    for attempt in range(3):
        out = tmp_path / f"killed-{attempt}.jsonl"
        command = [sys.executable, "-m", "dfrt.cli", "eval", *map(str, args), "--out", str(out)]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:  # the error row and one answer
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        child.wait(timeout=60)
        written = out.read_bytes().count(b"\n")
        if child.returncode == -signal.SIGKILL and written < len(reference):
            break
    assert child.returncode == -signal.SIGKILL and 2 <= written < len(reference)
    code, stdout, err = _eval(capsys, *args, "--out", out)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["skipped"] == written and summary["written"] == len(reference) - written
    assert _stable(_rows(out)) == _stable(reference)
    assert summary["strategies"] == whole_summary

    # killed while writing a row: the torn line is cut off and that row written again
    data = whole.read_bytes()
    rows = data.splitlines(keepends=True)
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b"".join(rows[:5]) + rows[5][: len(rows[5]) // 2])
    code, stdout, err = _eval(capsys, *args, "--out", torn)
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["skipped"], summary["written"], summary["torn_line_dropped"]) == (5, 5, True)
    assert _stable(_rows(torn)) == _stable(reference)

    # nothing left to do: nothing written, the same summary
    before = torn.read_bytes()
    code, stdout, _ = _eval(capsys, *args, "--out", torn)
    summary = json.loads(stdout)
    assert (code, summary["written"], summary["videos"], summary["strategies"]) == (0, 0, 0, whole_summary)
    assert torn.read_bytes() == before


def test_files_that_are_not_json_lines_are_one_error(videos, tmp_path, capsys):
    row = {"video": "04-moved.mp4", "question": MOVED, "answer": "right"}
    files = {
        "array.json": json.dumps([row, row], indent=2),
        "one-line-array.json": json.dumps([row, row]) + "\n",
        "table.csv": "video,question,answer\n04-moved.mp4,Which way?,right\n",
        "data.parquet": "PAR1" + "\0" * 64,
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        out = tmp_path / f"{name}.rows"
        code, stdout, err = _eval(capsys, "--dataset", path, "--videos", videos, "--out", out)
        assert code == 1 and not stdout and len(err.strip().splitlines()) == 1, (name, err)
        assert "not JSON Lines" in err and "Traceback" not in err, err
        assert not out.exists()


def test_refusals_before_any_work(bundle, videos, tmp_path, capsys):
    dataset = _write(tmp_path / "d.jsonl", [{"video": "04-moved.mp4", "question": MOVED, "answer": "right"}])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    batch_rows = tmp_path / "batch.jsonl"
    batch_rows.write_text(json.dumps({"line": 1, "video": "a.mp4", "question": "q", "answer": "x"}) + "\n")
    new = ["--dataset", dataset, "--out", tmp_path / "o.jsonl"]
    for args, message in (
        (["--out", tmp_path / "o.jsonl"], "--out needs --dataset"),
        (["--dataset", dataset], "--dataset needs --out"),
        ([*new, "--count", "3"], "--count is for the demo"),
        ([*new, "--strategies", "dfrt,random"], "unknown random"),
        ([*new, "--mc-prompt", "Q?"], "must contain {question}"),
        (["--dataset", dataset, "--out", notes, "--videos", videos], "not a dfrt batch row"),
        (["--dataset", dataset, "--out", batch_rows, "--videos", videos], "not a dfrt eval row"),
        (["--dataset", dataset, "--out", dataset, "--videos", videos], "is the input"),
        (["--dataset", tmp_path / "none.jsonl", "--out", tmp_path / "o.jsonl"], "--dataset"),
        ([*new, "--videos", tmp_path / "no"], "--videos"),
    ):
        code, _, err = _eval(capsys, *args, "--bundle", bundle)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert notes.read_text() == "my notes\n" and not (tmp_path / "o.jsonl").exists()
