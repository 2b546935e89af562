"""The prepared GPU check rehearses on a CPU: ``--dry-run`` plans every step, runs what needs no GPU and
writes its result folder (plan.json, result.json, the log), within a small budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_dry_run_plans_everything_and_runs_the_cpu_steps(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    command = [
        sys.executable,
        str(SCRIPT),
        "--dry-run",
        "--out",
        str(out),
        "--work",
        str(work),
        "--budget",
        "90",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "plan.json", "result.json"]
    plan = json.loads((out / "plan.json").read_text())
    names = [step["name"] for step in plan["steps"]]
    for expected in (
        "cuda_memory",
        "install:onnxruntime-gpu",
        "install:tensorrt10",
        "tensorrt10",
        "tensorrt11",
    ):
        assert expected in names
    assert all(step["command"] for step in plan["steps"])
    assert any("tensorrt-cu12==10." in " ".join(s["command"]) for s in plan["steps"])
    result = json.loads((out / "result.json").read_text())
    steps = result["steps"]
    assert result["dry_run"] and list(steps) == names
    assert steps["environment"]["status"] == "ok"
    assert all(steps[s["name"]]["status"] == "planned" for s in plan["steps"] if s["gpu"])
    if steps["cpu"]["status"] == "ok":  # the CPU steps fit the budget (they do on 2 free cores: ~25 s)
        checks = result["checks"]
        assert checks["onnxruntime cpu fp16 parity"] and checks["onnxruntime cpu int8 parity"]
        assert checks["engine cache refuses foreign metadata"]
    else:
        assert steps["cpu"]["status"] in ("skipped", "timeout", "failed")


def test_importable_without_a_gpu() -> None:
    path = str(SCRIPT.parent)
    code = f"import sys; sys.path.insert(0, {path!r}); import gpu_check; print(len(gpu_check.TRT_VERSIONS))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "2"
