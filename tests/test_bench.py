"""`dfrt bench --quick` (the CI variant): the token budget and bounded decode memory are properties; the
other sections (onnxruntime vs PyTorch, roofline, seek vs sequential decoding, LLM prefill, plot) must be
present with sane figures. Timings themselves are never asserted."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dfrt.bench import measure as benchmark
from dfrt.config import DynFocusConfig, VisionConfig, paper, tiny
from tests.media import smollm2_gguf


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "bench", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


def test_bench_quick_checks_the_properties(tmp_path):
    record_path, plot = tmp_path / "record.json", tmp_path / "bench.png"
    result = _bench(
        "--quick", "--json", "--record", str(record_path), "--plot", str(plot), "--peak-tflops", "100"
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
    backends = record["backends"]
    assert [g["graph"] for g in backends["graphs"]] == ["vision", "scoring", "encoding", "question", "fusion"]
    assert backends["same_weights"] and backends["config"] == "tiny"
    for g in backends["graphs"]:
        assert g["onnxruntime_seconds"] > 0 and g["torch_seconds"] > 0
        assert g["torch_over_onnxruntime"] == pytest.approx(g["torch_seconds"] / g["onnxruntime_seconds"])
    paper_roof, tiny_roof = record["roofline"]
    assert paper_roof["config"] == "paper" and 500 < paper_roof["gflops_per_frame"] < 540
    assert paper_roof["roofline_frames_per_second"] == pytest.approx(100e3 / paper_roof["gflops_per_frame"])
    assert paper_roof["measured_frames_per_second"] is None and tiny_roof["measured_frames_per_second"] > 0
    decode = record["decode_throughput"]
    assert decode["video"]["seconds"] == 120
    capped, every = decode["rows"]
    assert capped["sampled_frames"] == 16 and every["sampled_frames"] == 120
    for row in decode["rows"]:
        assert row["decoded_frames"] == 1200 and row["sequential_seconds"] > 0 and row["seek_seconds"] > 0
        assert 0 <= row["mismatched_frames"] <= row["sampled_frames"]
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 1000


def test_bench_rejects_bad_arguments(tmp_path):
    result = _bench("--quick", "--peak-tflops", "0")
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == "dfrt: error: --peak-tflops must be a positive number, got 0.0"
    )
    result = _bench("--quick", "--llm", str(tmp_path / "missing.gguf"))
    assert result.returncode == 1 and "dfrt: error: LLM not found" in result.stderr


def test_vision_flops_match_torch_flop_counter():
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from dfrt.model.vit import VisionTower

    config = tiny()
    tower = VisionTower(config.vision).eval()
    size = config.vision.image_size
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tower(torch.randn(1, 3, size, size))
    assert benchmark.vision_flops_per_frame(config.vision) == counter.get_total_flops()
    weights = sum(p.numel() for p in tower.parameters()) * 2 / 2**20
    assert benchmark.roofline(config, None).weights_mib_fp16 == pytest.approx(weights)
    paper_roof = benchmark.roofline(paper(), 989.0)  # H100 SXM dense FP16
    assert paper_roof.roofline_frames_per_second == pytest.approx(
        989e12 / (paper_roof.gflops_per_frame * 1e9)
    )


def test_llm_prefill_times_each_fitting_count():
    from dfrt.bench.llm_prefill import llm_prefill

    small = DynFocusConfig(
        name="small", vision=VisionConfig(image_size=56, patch_size=14, width=64, depth=1, heads=4)
    )
    result = llm_prefill(smollm2_gguf(), small, (2,), context_limit=64)
    assert result.n_embd == 576 and result.n_ctx_train == 8192
    rows = {r.method: r for r in result.rows}
    assert {m: r.tokens for m, r in rows.items()} == {"dynfocus": 40, "uniform_8_frame": 128, "llamavid": 4}
    assert not rows["uniform_8_frame"].fits and rows["uniform_8_frame"].prefill_seconds is None
    for method in ("dynfocus", "llamavid"):
        assert rows[method].fits and rows[method].prefill_seconds > 0
        assert rows[method].peak_mib is None or rows[method].peak_mib > 0


def test_plot_draws_prefill_panels_with_missing_points(tmp_path):
    from dfrt.bench.plot import save_plot

    budget = [
        {
            "seconds": s,
            "dynfocus_tokens": paper().visual_token_count(s),
            "uniform_8_frame_tokens": 2048,
            "llamavid_tokens": 2 * s,
            "host_seconds": 0.001 * s,
        }
        for s in (8, 30, 600, 3600)
    ]
    rows = [
        {"video_seconds": s, "method": m, "prefill_seconds": None if t > 8192 else t / 500}
        for s in (8, 30, 600, 3600)
        for m, t in (
            ("dynfocus", paper().visual_token_count(s)),
            ("uniform_8_frame", 2048),
            ("llamavid", 2 * s),
        )
    ]
    record = {"token_budget": budget, "llm_prefill": {"model": "m.gguf", "threads": 2, "rows": rows}}
    save_plot(record, tmp_path / "plot.png", "caption")
    image = cv2.imread(str(tmp_path / "plot.png"))
    assert image is not None and image.shape[1] == 1280
    assert (image != 255).any(axis=2).mean() > 0.01  # something was drawn


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
        return real(path, fps=fps, max_frames=2048, shortest_edge=shortest_edge)  # ignores the cap

    monkeypatch.setattr(video, "read_video", hoarding)
    with pytest.raises(benchmark.PropertyViolation, match="kept"):
        benchmark.decode_memory(4, (1,))


def test_bench_quick_without_torch_times_the_shipped_demo(tmp_path):
    from tests.test_layers import BLOCKER

    code = BLOCKER + (
        "sys.meta_path.insert(0, Block({'torch', 'onnx'}))\n"
        "from dfrt.cli import main\n"
        "sys.exit(main(['bench', '--quick', '--json']))\n"
    )
    env = {"DFRT_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    latency = record["stage_latency"]  # measured on the demo bundle, not skipped
    assert {"decode", "vision", "scoring", "encoding", "question", "fusion"} <= set(latency["stages"])
    assert record["backends"] is None  # no PyTorch to compare against
    assert "timing the shipped demo bundle" in result.stderr
