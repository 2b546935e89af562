"""The batch's questions file against hostile content (issue 33): an unusable id never claims its (video,
question) pair, on the first run or on resume; a huge or sparse questions file is refused unread."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dfrt.batch.jobs import open_output, read_jobs
from dfrt.errors import InputError


def test_an_id_error_and_a_later_valid_line_of_the_same_pair_are_kept_apart_on_resume(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not decoded here")
    questions = tmp_path / "q.jsonl"
    lines = [
        {"id": True, "video": "a.mp4", "question": "What?"},  # an unusable id: an error row
        {"id": "", "video": "a.mp4", "question": "What?"},  # another
        {"video": "a.mp4", "question": "What?"},  # the same pair, valid: answered
    ]
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    jobs = read_jobs(questions, videos.resolve())
    assert [j.error is None for j in jobs] == [False, False, True]
    assert "duplicate" not in (jobs[2].error or "") and len({j.key for j in jobs}) == 3
    out = tmp_path / "answers.jsonl"
    output = open_output(out)
    for job in jobs[:2]:  # a run killed after writing the two error rows
        output.append({**job.fields, "error": job.error})
    output.close()
    resumed = open_output(out)
    try:
        pending = [j for j in read_jobs(questions, videos.resolve()) if j.key not in resumed.done]
    finally:
        resumed.close()
    assert [j.fields["line"] for j in pending] == [3]  # the valid line is still to answer


def test_a_sparse_64_gib_questions_file_is_refused_unread(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    with open(questions, "wb") as f:
        f.truncate(64 << 30)
    start = time.monotonic()
    with pytest.raises(InputError, match="over the limit"):
        read_jobs(questions, tmp_path.resolve())
    assert time.monotonic() - start < 1.0


def test_a_questions_file_over_a_smaller_cap_is_refused(tmp_path: Path, monkeypatch) -> None:
    from dfrt.batch import jobs

    monkeypatch.setattr(jobs, "MAX_FILE_BYTES", 4096)
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(b"x" * 4000 + b"\n")
    with open(questions, "ab") as f:
        f.write(b"y" * (1 << 20))  # one endless line
    with pytest.raises(InputError, match="over the limit"):
        read_jobs(questions, tmp_path.resolve())
