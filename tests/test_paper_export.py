"""Full-size export (EVA-ViT-g, BERT-base Q-Former, 4096-wide projectors), random weights. Slow: minutes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_paper_config_exports_with_external_data(tmp_path):
    out = tmp_path / "paper"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "paper_export.py"), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert "vision.onnx.data" in figures["files_mb"]  # over 2 GB: external data
    assert figures["files_mb"]["vision.onnx.data"] > 3000
    assert all(r["ok"] for r in figures["parity"])
    print(json.dumps(figures, indent=2))
