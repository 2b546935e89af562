"""`dfrt batch --ray` on a local two-worker Ray cluster: the single-process answers, resumable after a kill,
and a worker node lost mid-run loses no answer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")

from dfrt.batch import BatchOptions, run_batch

CLIPS = 40
COMPARED = ("answer", "stop_reason", "key_frames", "tokens", "sampled_frames", "error")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    """40 held-out demo clips, one file that is not a video, and their questions (one JSON line each)."""
    from dfrt.demo.world import held_out_clip

    root = tmp_path_factory.mktemp("archive")
    lines = []
    for i in range(CLIPS):
        clip = held_out_clip(i)
        clip.write(root / f"clip-{i:02d}.mp4")
        lines.append({"id": i, "video": f"clip-{i:02d}.mp4", "question": clip.question})
    (root / "broken.mp4").write_bytes(b"not a video at all" * 64)
    lines.append({"id": "broken", "video": "broken.mp4", "question": "What color was the square?"})
    questions = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, questions


@pytest.fixture(scope="module")
def one_process(archive, bundle, tmp_path_factory) -> dict[object, dict]:
    """The rows of the same batch in one process, by id."""
    root, questions = archive
    out = tmp_path_factory.mktemp("one") / "answers.jsonl"
    summary = run_batch(BatchOptions(root, questions, out, bundle=bundle))
    assert (summary.answered, summary.errors) == (CLIPS, 1)
    return _by_id(out)


def _by_id(path: Path) -> dict[object, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "a pair was answered twice"
    return {row["id"]: {k: row.get(k) for k in COMPARED} for row in rows}


def _command(archive: tuple[Path, Path], out: Path, bundle: Path, address: str, *extra: str) -> list[str]:
    root, questions = archive
    return [
        sys.executable, "-m", "dfrt.cli", "batch", str(root), str(questions), "--out", str(out),
        "--bundle", str(bundle), "--ray", address, "--no-progress", "--json", *extra,
    ]  # fmt: skip


def _rows(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_same_answers_as_one_process(ray_cluster, archive, bundle, one_process, tmp_path):
    out = tmp_path / "answers.jsonl"
    command = _command(archive, out, bundle, ray_cluster.address, "--replicas", "2", "--cpus", "1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["answered"], summary["errors"], summary["videos"]) == (CLIPS, 1, CLIPS)
    assert result.stderr == ""  # quiet: nothing of Ray's on stderr
    rows = _by_id(out)
    assert rows == one_process
    assert "decode" in rows["broken"]["error"] or "video" in rows["broken"]["error"]


def test_a_killed_run_resumes_to_the_same_file(ray_cluster, archive, bundle, one_process, tmp_path):
    out = tmp_path / "answers.jsonl"
    command = _command(archive, out, bundle, ray_cluster.address, "--replicas", "2", "--cpus", "1")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _rows(out) < 8 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the run ended before it could be killed"
    finally:
        first.kill()
        first.wait()
    done = _rows(out)
    assert 8 <= done < CLIPS + 1
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] >= done - 1  # the last row may have been torn by the kill
    assert summary["answered"] + summary["errors"] + summary["skipped"] == CLIPS + 1
    assert _by_id(out) == one_process


def test_an_actor_no_node_can_hold_is_one_error(ray_cluster, archive, bundle, tmp_path):
    out = tmp_path / "answers.jsonl"
    command = _command(archive, out, bundle, ray_cluster.address, "--gpus", "1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert (
        result.returncode == 1 and "no node of the Ray cluster has what one actor reserves" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_lost_worker_node_loses_no_answer(ray_cluster, archive, bundle, one_process, tmp_path):
    """The node of a running actor goes away mid-run: its video is retried on the other node."""
    import ray

    out = tmp_path / "answers.jsonl"
    command = _command(archive, out, bundle, ray_cluster.address, "--replicas", "2", "--cpus", "1")
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while _rows(out) < 4 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        victim = _node_running(ray, ray_cluster, "MapWorker")
        ray_cluster.remove_worker(victim)
        ray_cluster.add_worker()  # the cluster keeps its size for the tests after this one
        stdout, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["answered"] == CLIPS and summary["errors"] == 1
    assert _by_id(out) == one_process
    assert "Traceback" not in stderr and "raylet" not in stderr  # quiet without --verbose


def _node_running(ray, local, class_part: str):
    """A worker node that runs an alive actor whose class name contains ``class_part``."""
    from ray._private.state import actors

    nodes = {node.node_id: node for node in local.workers}
    for info in actors().values():
        if info["State"] == "ALIVE" and class_part in info.get("ActorClassName", ""):
            node = nodes.get(info["Address"]["NodeID"])
            if node is not None:
                return node
    raise AssertionError(f"no {class_part} actor alive on a worker node")
