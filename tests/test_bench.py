"""`dfrt bench --quick` (the CI variant): the token budget and bounded decode memory are properties."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dfrt import benchmark
from dfrt.config import paper, tiny


def test_bench_quick_checks_the_properties(tmp_path):
    record_path = tmp_path / "record.json"
    result = subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "bench", "--quick", "--json", "--record", str(record_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert json.loads(record_path.read_text()) == record
    for row in record["token_budget"]:
        assert row["dynfocus_tokens"] == paper().visual_token_count(row["frames"])
        if row["frames"] > 80:
            assert row["dynfocus_tokens"] == 1296 + 2 * row["frames"]
    short, long = record["decode_memory"]
    assert long["decoded_frames"] == 4 * short["decoded_frames"] and long["kept_frames"] <= 16
    assert long["peak_mib"] < 2 * short["peak_mib"] + 0.5  # memory does not grow with the video
    latency = record["stage_latency"]
    assert {"decode", "vision", "scoring", "encoding", "question", "fusion"} <= set(latency["stages"])
    assert latency["visual_tokens"] == tiny().visual_token_count(30)


def test_a_wrong_token_count_fails_the_benchmark(monkeypatch):
    monkeypatch.setattr(
        benchmark,
        "interleave_order",
        lambda selection, cone: np.arange(7),  # rows lost on the way
    )
    with pytest.raises(benchmark.PropertyViolation, match="the formula says 160"):
        benchmark.token_budget(tiny(), (8,))


def test_unbounded_decode_memory_fails_the_benchmark(monkeypatch):
    import dfrt.runtime.video as video

    real = video.read_video

    def hoarding(path, fps, max_frames, shortest_edge=None):
        return real(path, fps=fps, max_frames=10_000, shortest_edge=shortest_edge)  # ignores the cap

    monkeypatch.setattr(video, "read_video", hoarding)
    with pytest.raises(benchmark.PropertyViolation, match="kept"):
        benchmark.decode_memory(4, (1,))
