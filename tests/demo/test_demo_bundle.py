"""The shipped demo: the default bundle, its answers on the sample clips, a slice of the held-out evaluation,
and ONNX vs PyTorch parity of the shipped weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfrt.demo.evaluate import GREEDY, OnnxEmbedder, evaluate, held_out_set, normalise
from dfrt.demo.world import ANSWER_TYPES, KINDS
from dfrt.metrics import cosine
from dfrt.runtime.default_bundle import demo_bundle, resolve_bundle, shipped_demo
from dfrt.runtime.llm import LlamaModel
from dfrt.runtime.pipeline import Pipeline
from dfrt.runtime.visual import VisualPipeline

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SAMPLES_RIGHT = 6  # of 7; the shipped weights (stage 3 at random budgets, 2026-12-01) miss brief shape
SLICE_ACCURACY = 0.85  # measured 0.943 (33 of 35) here (2026-12-01, random budgets); chance about 0.24


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bundle(cache: Path) -> Path:
    return demo_bundle(root=cache / "demo")


def test_demo_bundle_is_assembled_once_and_verifies(bundle: Path, cache: Path) -> None:
    manifest = json.loads((bundle / "dfrt.json").read_text())
    assert manifest["config"]["name"] == "demo" and manifest["llm"]["file"].endswith(".gguf")
    shipped_llm = shipped_demo() / manifest["llm"]["file"]
    assert (bundle / manifest["llm"]["file"]).read_bytes() == shipped_llm.read_bytes()
    stamp = (bundle / "dfrt.json").stat().st_mtime_ns
    assert demo_bundle(root=bundle) == bundle
    assert (bundle / "dfrt.json").stat().st_mtime_ns == stamp  # not copied again
    VisualPipeline.open(bundle)  # hashes every file, the LLM included
    assert not [p for p in cache.iterdir() if p.name.startswith(".demo-")]


def test_stale_demo_bundle_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    target.mkdir()
    (target / "dfrt.json").write_text("{}")
    (target / "leftover.onnx").write_bytes(b"old")
    demo_bundle(root=target)
    assert (target / "dfrt.json").read_bytes() == (shipped_demo() / "dfrt.json").read_bytes()
    assert not (target / "leftover.onnx").exists()


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFRT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DFRT_BUNDLE", raising=False)
    assert resolve_bundle(tmp_path / "mine") == tmp_path / "mine"
    assert resolve_bundle(None, assemble=False) == tmp_path / "demo"
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "dfrt.json").write_text("{}")
    assert resolve_bundle(None, assemble=False) == tmp_path / "bundle"
    monkeypatch.setenv("DFRT_BUNDLE", str(tmp_path / "env"))
    assert resolve_bundle(None) == tmp_path / "env"


def test_infer_without_bundle_answers_the_sample_clips(cache: Path) -> None:
    """`dfrt infer VIDEO QUESTION` with no --bundle: the trained demo, set up on first use, answers each
    sample with one word of the right kind, and the samples its accuracy covers (benchmarks/RESULTS.md)
    right."""
    entries = json.loads((SAMPLES / "questions.json").read_text())
    env = {k: v for k, v in os.environ.items() if k != "DFRT_BUNDLE"} | {"DFRT_CACHE_DIR": str(cache)}
    typed, right = 0, 0
    for entry in entries:
        command = [sys.executable, "-m", "dfrt.cli", "infer", str(SAMPLES / entry["video"])]
        result = subprocess.run(
            [*command, entry["question"], "--json", "--temperature", "0", "--max-tokens", "6"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        answer = normalise(document["answer"])
        typed += answer in ANSWER_TYPES[entry["kind"]]
        right += answer == entry["answer"]
        assert len(document["answer"].split()) <= 2, document["answer"]
    assert typed == len(entries), f"{typed}/{len(entries)} answers of the right kind"
    assert right >= SAMPLES_RIGHT, f"{right}/{len(entries)} sample answers right"


def test_held_out_slice_accuracy_is_well_above_chance(bundle: Path, tmp_path: Path) -> None:
    """Five clips per question kind through `dfrt eval`'s code, on the shipped weights: accuracy well above
    chance (about 0.24), every answer of the question's type, and DPE's key frames showing every brief
    event's answer. The full held-out figures (and the issue's targets they miss) are in RESULTS.md."""
    items = held_out_set(5 * len(KINDS), tmp_path / "clips")
    with Pipeline(bundle, backend="onnxruntime", n_ctx=512) as pipe:
        scores = evaluate(items, pipe, OnnxEmbedder(pipe), ["dynfocus"])
    result = scores["dynfocus"]
    assert sum(result.total.values()) == len(items)
    assert result.accuracy() >= SLICE_ACCURACY, result.to_dict()
    assert result.well_typed_share() >= 0.95, result.to_dict()
    assert result.evidence_share() == 1.0, result.to_dict()
    assert result.accuracy(["count"]) >= 0.8, result.to_dict()


def test_shipped_onnx_matches_shipped_pytorch_weights(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dfrt.demo.evaluate import ReferenceEmbedder
    from dfrt.demo.training.reference import load_reference

    pipe = Pipeline(bundle, backend="onnxruntime", n_ctx=512)
    visual = pipe.visual
    reference = ReferenceEmbedder(load_reference(pipe.bundle), pipe)
    onnx = OnnxEmbedder(pipe)
    (item,) = held_out_set(1, tmp_path / "clips")
    from dfrt.runtime.video import read_video

    frames = read_video(item.video, shortest_edge=visual.config.vision.image_size).frames
    encoded_onnx, encoded_reference = onnx.encode(frames), reference.encode(frames)
    for strategy in ("dynfocus", "uniform"):
        (a, frames_a), (b, frames_b) = (
            onnx.embed(encoded_onnx, item.clip.question, strategy, 0),
            reference.embed(encoded_reference, item.clip.question, strategy, 0),
        )
        assert frames_a.tolist() == frames_b.tolist()
        assert a.shape == b.shape
        assert cosine(a, b) > 0.9999 and np.abs(a - b).max() < 1e-2
    pipe.close()


def test_int8_calibrated_on_the_demo_questions_keeps_the_answers(bundle: Path, tmp_path: Path) -> None:
    """`dfrt build --precision int8` of the shipped demo, calibrated on training-distribution clips and their
    questions (`questions.txt`), answers held-out clips as the FP32 graphs do (140 clips: RESULTS.md)."""
    import shutil

    pytest.importorskip("onnx", reason="INT8 quantization needs onnx (dfrt[export])")

    from dfrt.calibration.build import build_variants
    from dfrt.demo.samples import write_calibration
    from dfrt.runtime.generate import Generator
    from dfrt.runtime.video import read_video

    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    write_calibration(tmp_path / "calib", 12)
    result = build_variants(copy, "int8", tmp_path / "calib")
    assert len(result.questions) > 3 and "How many shapes are there?" in result.questions
    assert {"question", "fusion"} <= set(result.kept)
    fp32, int8 = VisualPipeline.open(copy), VisualPipeline.open(copy, precision="int8")
    items = held_out_set(2 * len(KINDS), tmp_path / "clips")
    agree = 0
    with LlamaModel(copy / fp32.bundle.llm_file, n_ctx=512) as llm:  # type: ignore[operator]
        generator = Generator(llm, fp32.bundle.manifest.prompt)
        for item in items:
            frames = read_video(item.video, fps=1.0, shortest_edge=112).frames
            a = fp32.embed(fp32.encode_frames(frames), item.clip.question)
            b = int8.embed(int8.encode_frames(frames), item.clip.question)
            assert np.array_equal(a.selection.key_frames, b.selection.key_frames)
            assert cosine(a.embeds, b.embeds) >= 0.99
            answers = [normalise(generator.answer(item.clip.question, e.embeds, GREEDY).text) for e in (a, b)]
            agree += answers[0] == answers[1]
    assert agree >= len(items) - 1, f"INT8 and FP32 agree on {agree} of {len(items)} answers"
