"""The layers hold: the parser imports nothing heavy, `dfrt --help` and `dfrt info` need no OpenCV, and
`dfrt infer` on the demo bundle never loads the torch side of the package (model, export, calibration, demo
training). Each check runs in a fresh interpreter, so what earlier tests imported cannot hide a leak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "07-count.mp4"
TORCH_SIDE = ("dfrt.model", "dfrt.export", "dfrt.calibration", "dfrt.demo.training", "dfrt.bench")
HEAVY = ("numpy", "cv2", "onnxruntime", "llama_cpp", "tokenizers", "torch", "onnx", "ray")

BLOCKER = """
import sys

class Block:
    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
        return None
"""


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def _modules_after(code: str) -> list[str]:
    result = _python(code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_building_the_whole_parser_imports_nothing_heavy() -> None:
    loaded = _modules_after("from dfrt.cli import build_parser\nbuild_parser()")
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"building the parser imported {heavy}"
    assert "dfrt.commands.export" in loaded and "dfrt.commands.bench" in loaded  # every verb registered


def test_the_infer_parser_imports_nothing_of_the_torch_side() -> None:
    loaded = _modules_after("from dfrt.cli import build_parser\nbuild_parser(['infer', 'v.mp4', 'q'])")
    torch_side = [m for m in loaded if m.startswith(TORCH_SIDE)]
    assert not torch_side, f"building the infer parser imported {torch_side}"
    assert "dfrt.commands.infer" in loaded and "dfrt.commands.export" not in loaded


@pytest.mark.parametrize("argv", [["--help"], ["infer", "--help"], ["export", "--help"], ["info"]])
def test_help_and_info_work_without_opencv(argv: list[str], tmp_path: Path) -> None:
    result = _python(
        BLOCKER
        + f"""
sys.meta_path.insert(0, Block({{"cv2"}}))
from dfrt.cli import main
sys.exit(main({argv!r}))
""",
        env={"DFRT_CACHE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip()


def test_infer_on_the_demo_bundle_loads_only_the_runtime(tmp_path: Path) -> None:
    """The whole answer path (decode, graphs, selection, llama.cpp) with torch, onnx and the torch side of
    the package blocked; then the modules it loaded are listed."""
    result = _python(
        BLOCKER
        + f"""
import json, os
sys.meta_path.insert(0, Block({{"torch", "onnx", "onnxscript", "safetensors", "gguf", "tqdm"}}))
from dfrt.cli import main
code = main(["infer", {str(SAMPLE)!r}, "How many shapes can you see?", "--temperature", "0", "--json"])
print("MODULES", json.dumps(sorted(sys.modules)))
sys.exit(code)
""",
        env={"DFRT_CACHE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    document, _, modules = result.stdout.rpartition("MODULES ")
    loaded = json.loads(modules)
    torch_side = [m for m in loaded if m.startswith(TORCH_SIDE)]
    assert not torch_side, f"dfrt infer loaded {torch_side}"
    answer = json.loads(document)
    assert answer["answer"].strip() and answer["backend"] == "onnxruntime"
    assert answer["tokens"]["visual"] == sum(f["tokens"] for f in answer["frames"])
    assert set(answer["providers"]) == {"vision", "question", "scoring", "encoding", "fusion"}
