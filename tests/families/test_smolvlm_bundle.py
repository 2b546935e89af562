"""A SmolVLM2 bundle on the runtime alone (no torch, no onnx, no transformers): the runtime-only CI job
answers a real video with it, through the CLI and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
EXPORT_SIDE = ("torch", "onnx", "transformers", "dfrt.export", "dfrt.families.smolvlm.export", "dfrt.model")


def test_infer_answers_a_video_with_a_smolvlm_bundle(smolvlm_bundle, tmp_path) -> None:
    code = (
        "import json, sys\n"
        "from dfrt.cli import main\n"
        "code = main(sys.argv[1:])\n"
        f"side = {EXPORT_SIDE!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in side or m in side)\n"
        "print(json.dumps(loaded), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "infer", str(SAMPLE), "How many shapes are there?", "--bundle",
         str(smolvlm_bundle), "--json", "--temperature", "0", "--max-tokens", "8"],
        capture_output=True, text=True, timeout=300, check=False,
        env={"DFRT_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["tokens"]["visual"] == sum(f["tokens"] for f in document["frames"]) <= 320
    assert document["tokens"]["generated"] >= 1 and document["stop_reason"] in ("eos", "max_tokens")
    assert len(document["frames"]) == document["video"]["sampled_frames"] == 16
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []  # nothing of the export side was imported


def test_the_python_api_reuses_a_video_for_many_questions(smolvlm_bundle) -> None:
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    with Pipeline(smolvlm_bundle, threads=2) as pipe:
        assert pipe.family == "smolvlm"
        video = pipe.load_video(SAMPLE, max_frames=8, visual_tokens=64)
        answers = [pipe.ask(video, q, SamplingConfig(max_tokens=4, temperature=0)) for q in ("Why?", "How?")]
    for result in answers:
        assert result.answer.visual_tokens <= 64
        assert result.selection.key_frames.size >= 1
