"""Full-size conversion: a random-weight LLaMA-VID checkpoint at the paper's dimensions (Vicuna-7B, fp16,
10 GB shards) + eva_vit_g.pth -> bundle, under 16 GiB peak RSS. Slow: about half an hour, 40 GB of disk."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_full_size_llamavid_checkpoint_converts_within_16_gib(tmp_path):
    if shutil.disk_usage(tmp_path).free < 45e9:
        pytest.skip("needs about 45 GB of free disk")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "checkpoint_export.py"),
            "--work",
            str(tmp_path / "w"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    print(json.dumps(figures, indent=2))
    assert figures["peak_rss_gib"] < 16
    assert figures["parity_ok"] and figures["scoring"] == "question"
    assert figures["files_mb"]["llm.gguf"] > 3500  # Q4_K_M of 6.7B parameters
    assert "vision.onnx.data" in figures["files_mb"]
    assert not (tmp_path / "w").exists()  # the 16 GB checkpoint is removed afterwards
