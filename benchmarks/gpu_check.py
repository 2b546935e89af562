"""The one prepared GPU check: TensorRT and onnxruntime-gpu on a fresh NVIDIA machine, in one short run.

    python benchmarks/gpu_check.py --out DIR [--budget 480] [--dry-run] [--wheels DIR] [--paper PATH|export]

Each step runs in a child process with its own timeout inside the total ``--budget``; a step that fails or
times out is recorded and the next one runs. Everything lands in ``--out`` (``$OUT`` by default):
``plan.json`` (steps, commands, budget), ``result.json`` (rewritten after every step) and
``gpu_check.log``. Bundles, engines and installed packages go to ``--work`` (default: a temporary folder),
never to ``--out``.

Steps: the environment (GPU, driver, packages, providers); installs (``onnxruntime-gpu`` with its CUDA 12
libraries, ``tensorrt-cu12`` 10.x then 11.x, each into its own ``--target`` folder put first on the step's
PYTHONPATH, so the image's CPU onnxruntime stays intact; from ``--wheels DIR`` or the package index, skipped
when neither answers); the demo bundle copied and given gated FP16 and INT8 graphs on the CPU (plus an
ungated FP16 vision graph for timing); onnxruntime CPU parity and per-graph timing; the engine cache's
foreign-engine rule on fake metadata; cuda-python device memory on the real GPU; onnxruntime CUDA parity and
timing; per TensorRT version FP16 and INT8 engines (build time, parity against onnxruntime FP32 on the CPU:
FP16 cosine >= 0.999, INT8 >= 0.99, identical key frames), per-graph timing against the FLOP roofline
(:func:`dfrt.bench.measure.roofline`), and a rebuild of an engine whose metadata claims another TensorRT
version or GPU; ``pytest -m gpu``; ``dfrt infer --backend tensorrt``; ``dfrt eval --count 35``.
``--dry-run`` runs what needs no GPU (planning, bundles, CPU parity and timing, the cache rehearsal) and
lists the commands of the rest. The paper-size vision graph is timed when ``--paper`` names an exported
bundle (``python benchmarks/paper_export.py --out DIR`` where torch is installed) or is ``export`` (exported
here with the machine's torch: minutes, so give it its own run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "dfrt" / "data" / "demo"
SAMPLES = ROOT / "samples"
TRT_VERSIONS = ("10.16.1.11", "11.4.0.106")  # newest 10.x, then 11.x (tensorrt-cu12)
ORT_GPU = "onnxruntime-gpu==1.31.1"
ORT_CUDA_LIBS = (  # what onnxruntime-gpu's CUDA provider loads (CUDA 12 build), installed with --no-deps
    "nvidia-cuda-runtime-cu12",
    "nvidia-cublas-cu12",
    "nvidia-cudnn-cu12",
    "nvidia-cufft-cu12",
    "nvidia-curand-cu12",
    "nvidia-cuda-nvrtc-cu12",
    "nvidia-nvjitlink-cu12",
)
CUDA_PYTHON = "cuda-python>=12"
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
# dense peaks by GPU name for the roofline: (FP16 tensor TFLOP/s, INT8 TOP/s, FP32 non-tensor TFLOP/s)
PEAKS = {"H200": (989.0, 1979.0, 67.0), "H100": (989.0, 1979.0, 67.0), "A100": (312.0, 624.0, 19.5)}
CALIBRATION_CLIPS, PARITY_CLIPS = 4, 3  # samples/: the first 4 calibrate and gate, the last 3 check parity
QUESTIONS = ("How many shapes can you see?", "Which way did the shape move?")
STATUSES = ("ok", "failed", "timeout", "skipped", "planned")


@dataclass
class Step:
    """One step: run as ``gpu_check.py --step NAME`` in a child (or as ``command``), within its timeout."""

    name: str
    timeout_s: int
    gpu: bool  # needs a GPU: only planned on --dry-run
    min_s: int = 10  # skipped when less of the budget is left
    command: list[str] = field(default_factory=list)  # empty: this script's own --step
    site: list[str] = field(default_factory=list)  # folders put first on PYTHONPATH
    env: dict[str, str] = field(default_factory=dict)
    arg: str = ""  # e.g. the TensorRT version
    function: str = ""  # the STEP_FUNCTIONS entry (default: the name without its digits)


@dataclass
class Outcome:
    status: str
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    output_tail: str = ""


# -- helpers used inside steps ------------------------------------------------------------------------------
def sample_videos() -> list[Path]:
    return sorted(SAMPLES.glob("*.mp4"))


def peaks(gpu: str) -> tuple[float, float, float] | None:
    return next((p for name, p in PEAKS.items() if name in gpu), None)


def median_ms(run: Callable[[], object], min_runs: int = 5, seconds: float = 1.0) -> dict[str, float]:
    """Median and minimum wall time of ``run`` after 2 warm-ups, at least ``min_runs`` runs or ``seconds``."""
    for _ in range(2):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < seconds and len(times) < 200):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 4), "min_ms": round(times[0], 4), "runs": len(times)}


def record_feeds(bundle: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Run the FP32 demo once on the CPU and keep each graph's largest real inputs (``feeds.npz``)."""
    import numpy as np

    from dfrt.runtime.loader import CPU
    from dfrt.runtime.video import read_video
    from dfrt.runtime.visual import VisualPipeline

    reference = VisualPipeline.open(bundle, "onnxruntime", [CPU], precision="fp32")
    seen: dict[str, dict[str, Any]] = {}

    class Recorder:
        def __init__(self, name: str, inner: Any) -> None:
            self.name, self.inner, self.spec = name, inner, inner.spec

        def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
            size = sum(a.size for a in inputs.values())
            if size >= sum(a.size for a in seen.get(self.name, {}).values()):
                seen[self.name] = {k: np.array(v) for k, v in inputs.items()}
            return self.inner.run(inputs)

        def close(self) -> None:
            self.inner.close()

    pipe = VisualPipeline(reference.bundle, {n: Recorder(n, r) for n, r in reference.runners.items()})
    frames = read_video(sample_videos()[-1], max_frames=16, shortest_edge=pipe.config.vision.image_size)
    pipe.embed(pipe.encode_frames(frames.frames), QUESTIONS[0])
    pipe.close()
    np.savez(out, **{f"{g}/{k}": v for g, feeds in seen.items() for k, v in feeds.items()})
    return {g: {k: list(v.shape) for k, v in feeds.items()} for g, feeds in seen.items()}


def load_feeds(path: Path) -> dict[str, dict[str, Any]]:
    import numpy as np

    feeds: dict[str, dict[str, Any]] = {}
    with np.load(path) as data:
        for key in data.files:
            graph, name = key.split("/", 1)
            feeds.setdefault(graph, {})[name] = data[key]
    return feeds


def parity(bundle: Path, backend: str, precision: str, providers: list[str] | None) -> dict[str, Any]:
    """Embedding cosine and key-frame agreement against onnxruntime FP32 on the CPU, on held-out clips."""
    from dfrt.calibration.gate import compare
    from dfrt.runtime.loader import CPU
    from dfrt.runtime.visual import VisualPipeline

    reference = VisualPipeline.open(bundle, "onnxruntime", [CPU], precision="fp32")
    started = time.perf_counter()
    candidate = VisualPipeline.open(bundle, backend, providers, precision=precision)
    opened = time.perf_counter() - started
    try:
        videos = sample_videos()[-PARITY_CLIPS:]
        report = compare(reference, candidate, precision, videos, list(QUESTIONS), max_frames=16)
        graphs = candidate.graphs
        return {
            "open_s": round(opened, 2),
            "line": report.line(),
            "cosine_min": report.cosine_min,
            "key_agreement": report.key_agreement,
            "passes": bool(report.cosine_min >= MIN_COSINE[precision] and report.key_agreement == 1.0),
            "providers": dict(graphs.providers),
            "graph_precisions": dict(graphs.graph_precisions),
        }
    finally:
        candidate.close()
        reference.close()


def time_graphs(runners: dict[str, Any], feeds: dict[str, dict[str, Any]], config: Any, peak: float | None):
    """Per-graph latency on the recorded feeds; the vision graph also as frames/s against the roofline."""
    from dfrt.bench.measure import roofline

    timings: dict[str, Any] = {}
    for name, runner in runners.items():
        if name not in feeds:
            continue
        timings[name] = median_ms(lambda r=runner, f=feeds[name]: r.run(f))
    if "vision" in timings:
        frames = next(iter(feeds["vision"].values())).shape[0]
        fps = frames / (timings["vision"]["median_ms"] / 1e3)
        timings["vision"]["roofline"] = asdict(roofline(config, peak, fps))
    return timings


def gpu_name() -> str:
    """The first NVIDIA GPU's name ("" without one): the query ``dfrt info`` makes."""
    from dfrt.runtime.info import nvidia_gpus

    gpus = nvidia_gpus()
    return gpus[0][0] if gpus else ""


# -- the steps (each runs in its own child process) ---------------------------------------------------------
def step_environment(work: Path, args: argparse.Namespace, arg: str) -> dict[str, Any]:
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    dists = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12", "tensorrt-cu13")
    dists += ("cuda-python", "cuda-bindings", "pycuda", "torch", "llama_cpp_python", "opencv-python-headless")
    smi = shutil.which("nvidia-smi")
    query = "name,driver_version,compute_cap,memory.total,clocks.max.sm"
    gpus = (
        subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True)
        if smi
        else None
    )
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError as e:
        providers = [f"onnxruntime missing: {e}"]
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpus": gpus.stdout.strip().splitlines() if gpus and gpus.returncode == 0 else [],
        "packages": {d: version(d) for d in dists},
        "onnxruntime_providers": providers,
    }


def step_bundles(work: Path, args: argparse.Namespace, arg: str) -> dict[str, Any]:
    """The demo bundle with gated FP16 and INT8 graphs (CPU), its recorded feeds, an ungated FP16 vision
    graph for timing, and the paper vision graph when asked for."""
    from dfrt.calibration.build import build_variants
    from dfrt.calibration.fp16 import convert_graph
    from dfrt.runtime.bundle import Bundle

    bundle = work / "demo"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(DEMO, bundle)
    detail: dict[str, Any] = {"bundle": str(bundle)}
    clips = sample_videos()[:CALIBRATION_CLIPS]
    for precision in ("fp16", "int8"):
        started = time.perf_counter()
        result = build_variants(bundle, precision, clips, list(QUESTIONS), max_frames=16)
        detail[precision] = {
            "kept": result.kept,
            "gate": result.gate.line(),
            "s": round(time.perf_counter() - started, 1),
        }
    detail["feeds"] = record_feeds(bundle, work / "feeds.npz")
    extra = work / "extra"
    extra.mkdir(exist_ok=True)
    feeds = load_feeds(work / "feeds.npz")
    converted = convert_graph("vision", bundle / "vision.onnx", extra / "vision.fp16.onnx", [feeds["vision"]])
    detail["vision_fp16_ungated"] = converted.line()
    if args.paper:
        detail["paper"] = paper = paper_bundle(work, args.paper)
        (work / "paper.json").write_text(json.dumps(paper))
        entry = Bundle.open(paper["bundle"], verify=False).manifest.graphs["vision"]
        source = Path(paper["bundle"]) / entry.file
        large = entry.data_file is not None
        target = extra / "paper.vision.fp16.onnx"
        detail["paper"]["fp16"] = convert_graph(
            "vision", source, target, [spec_feeds(entry.spec)], large=large
        ).line()
    return detail


def paper_bundle(work: Path, paper: str) -> dict[str, Any]:
    """The paper-size bundle: ``export`` exports it here (torch needed), else the folder given."""
    if paper == "export":
        target = work / "paper"
        command = [sys.executable, "-m", "dfrt.cli", "export", "--config", "paper", "--out", str(target)]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
        return {"bundle": str(target), "exported_s": round(time.perf_counter() - started, 1)}
    if not (Path(paper) / "dfrt.json").is_file():
        raise FileNotFoundError(f"--paper {paper}: no dfrt.json there")
    return {"bundle": str(Path(paper).resolve())}


def step_cpu(work: Path, args: argparse.Namespace, arg: str) -> dict[str, Any]:
    """onnxruntime on the CPU: parity of the FP16 and INT8 graphs, per-graph timing, the cache rule."""
    from dfrt.runtime.loader import CPU
    from dfrt.runtime.visual import VisualPipeline

    bundle, feeds = work / "demo", load_feeds(work / "feeds.npz")
    detail: dict[str, Any] = {"parity": {}, "timing": {}}
    for precision in ("fp16", "int8"):
        detail["parity"][precision] = parity(bundle, "onnxruntime", precision, [CPU])
    for precision in ("fp32", "fp16", "int8"):
        with VisualPipeline.open(bundle, "onnxruntime", [CPU], precision=precision) as pipe:
            detail["timing"][precision] = time_graphs(pipe.runners, feeds, pipe.config, None)
    detail["engine_cache"] = cache_rehearsal(work)
    return detail


def cache_rehearsal(work: Path) -> dict[str, Any]:
    """An engine stored for one target is never looked up for another; metadata edited to claim another
    TensorRT version or GPU makes the engine missing (so it is rebuilt)."""
    from dfrt.runtime.backends.tensorrt.engine_cache import EngineCache, Target
    from dfrt.runtime.bundle import Bundle

    copy = work / "cache-rehearsal"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(work / "demo", copy, ignore=shutil.ignore_patterns("engines"))
    cache = EngineCache(Bundle.open(copy))
    here = Target("NVIDIA H200", "9.0", "10.16.1")
    engine = cache.store("scoring", "fp32", here, b"plan")
    found = {"same target": cache.lookup("scoring", "fp32", here) is not None}
    found["other TensorRT"] = cache.lookup("scoring", "fp32", Target(here.gpu, "9.0", "11.4.0")) is not None
    meta = engine.parent / "meta.json"
    for key, value in (("tensorrt", "9.9.9"), ("gpu", "Another GPU")):
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps({**data, key: value}))
        found[f"meta claims another {key}"] = cache.lookup("scoring", "fp32", here) is not None
        cache.store("scoring", "fp32", here, b"plan")
    return {"found": found, "passes": found == {k: k == "same target" for k in found}}


def step_cuda_memory(work: Path, args: argparse.Namespace, arg: str) -> dict[str, Any]:
    """dfrt's device-memory layer on the real GPU: device query, allocation, a round trip of bytes."""
    import numpy as np

    from dfrt.runtime.backends.tensorrt.cuda_memory import device_memory

    memory = device_memory()
    try:
        name, capability = memory.device()
        data = np.arange(1 << 18, dtype=np.float32)
        back = np.empty_like(data)
        pointer = memory.alloc(data.nbytes)
        memory.to_device(pointer, data)
        memory.to_host(back, pointer)
        memory.synchronize()
        memory.free(pointer)
        return {
            "layer": type(memory).__name__,
            "gpu": name,
            "capability": capability,
            "round_trip": bool((back == data).all()),
        }
    finally:
        memory.close()


def step_ort_cuda(work: Path, args: argparse.Namespace, arg: str) -> dict[str, Any]:
    """onnxruntime-gpu's CUDA provider: parity against the CPU and per-graph timing."""
    import onnxruntime

    from dfrt.runtime.loader import _available_providers, onnxruntime_providers
    from dfrt.runtime.visual import VisualPipeline

    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()  # the CUDA/cuDNN libraries pip installed beside it
    wanted = onnxruntime_providers(_available_providers())
    detail: dict[str, Any] = {
        "version": onnxruntime.__version__,
        "providers": wanted,
        "parity": {},
        "timing": {},
    }
    if wanted[0] == "CPUExecutionProvider":
        raise RuntimeError(f"onnxruntime {onnxruntime.__version__} offers no CUDA provider here")
    bundle, feeds = work / "demo", load_feeds(work / "feeds.npz")
    peak = peaks(gpu_name())
    for precision in ("fp32", "fp16", "int8"):
        detail["parity"][precision] = parity(bundle, "onnxruntime", precision, wanted)
        with VisualPipeline.open(bundle, "onnxruntime", wanted, precision=precision) as pipe:
            detail["timing"][precision] = time_graphs(pipe.runners, feeds, pipe.config, peak and peak[2])
    if (work / "paper.json").is_file():
        from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph
        from dfrt.runtime.bundle import Bundle

        paper = Bundle.open(json.loads((work / "paper.json").read_text())["bundle"], verify=False)
        spec = paper.manifest.graphs["vision"].spec
        runner = OnnxRuntimeGraph(paper.graph_path("vision"), spec, wanted)
        vision = {"vision": spec_feeds(spec)}
        detail["paper_vision_fp32"] = time_graphs(
            {"vision": runner}, vision, paper.manifest.config, peak and peak[2]
        )
    return detail


def step_tensorrt(work: Path, args: argparse.Namespace, arg: str) -> dict[str, Any]:
    """One TensorRT version: FP16 and INT8 engines (strongly typed from the gated graphs), parity, timing,
    the ungated FP16 vision engine against the roofline, and rebuilds on foreign metadata."""
    from dfrt.runtime.backends.tensorrt.engine_builder import current_target, network_typing, tensorrt
    from dfrt.runtime.bundle import Bundle
    from dfrt.runtime.visual import VisualPipeline

    trt = tensorrt()
    typing = network_typing(trt)
    bundle, feeds = work / f"demo-trt{trt.__version__}-{typing}", load_feeds(work / "feeds.npz")
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(work / "demo", bundle, ignore=shutil.ignore_patterns("engines"))
    target = current_target()
    peak = peaks(target.gpu)
    detail: dict[str, Any] = {
        "tensorrt": trt.__version__,
        "typing": network_typing(trt),
        "target": asdict(target),
    }
    for precision in ("fp16", "int8"):
        detail[precision] = parity(bundle, "tensorrt", precision, None)
        with VisualPipeline.open(bundle, "tensorrt", precision=precision) as pipe:
            chosen = pipe.graphs.graph_precisions
            detail[precision]["timing"] = time_graphs(
                pipe.runners,
                feeds,
                pipe.config,
                peak and peak[{"fp32": 2, "fp16": 0, "int8": 1}[chosen["vision"]]],
            )
    cache = work / f"timing-trt{trt.__version__}.cache"
    fp16_peak = peak and peak[0]
    onnx = work / "extra" / "vision.fp16.onnx"
    detail["vision_fp16_ungated"] = vision_engine(onnx, bundle, feeds["vision"], fp16_peak, cache)
    detail["rebuild"] = rebuilds(bundle)
    paper = work / "extra" / "paper.vision.fp16.onnx"
    if paper.is_file():
        paper_bundle_dir = Path(json.loads((work / "paper.json").read_text())["bundle"])
        spec = Bundle.open(paper_bundle_dir, verify=False).manifest.graphs["vision"].spec
        detail["paper_vision_fp16"] = vision_engine(
            paper, paper_bundle_dir, spec_feeds(spec), fp16_peak, cache
        )
    return detail


def spec_feeds(spec: Any) -> dict[str, Any]:
    """Random float32 inputs at each dynamic axis's optimum (timing the paper graph, no video needed)."""
    import numpy as np

    ranges = spec.axis_ranges
    generator = np.random.default_rng(0)
    return {
        t.name: generator.standard_normal(
            [d if isinstance(d, int) else ranges[d][1] for d in t.shape]
        ).astype("float32")
        for t in spec.inputs
    }


def vision_engine(
    onnx: Path, bundle: Path, feeds: dict[str, Any], peak: float | None, cache: Path
) -> dict[str, Any]:
    """An FP16 vision graph outside the gate (the demo's refused one, the paper's), strongly typed:
    build time, latency and roofline only."""
    from dfrt.runtime.backends.tensorrt.cuda_memory import device_memory
    from dfrt.runtime.backends.tensorrt.engine_builder import build_engine, build_recipe
    from dfrt.runtime.backends.tensorrt.runner import TensorRTGraph
    from dfrt.runtime.bundle import Bundle

    opened = Bundle.open(bundle, verify=False)
    spec = opened.manifest.graphs["vision"].spec
    started = time.perf_counter()
    plan = build_engine(onnx, spec, build_recipe("fp16", {"fp16"}, "strong"), 8192, cache)
    engine = onnx.with_suffix(f".{cache.stem}.engine")
    engine.write_bytes(plan)
    runner = TensorRTGraph(engine, spec, device_memory())
    try:
        timing = time_graphs({"vision": runner}, {"vision": feeds}, opened.manifest.config, peak)
    finally:
        runner.close()
    return {"build_s": round(time.perf_counter() - started, 1), **timing["vision"]}


def rebuilds(bundle: Path) -> dict[str, Any]:
    """Edit the scoring engine's meta.json to claim another TensorRT version, then another GPU: each time
    the next open must build that engine again (and only that one)."""
    from dfrt.runtime.backends.tensorrt.engine_builder import current_target
    from dfrt.runtime.backends.tensorrt.engine_cache import EngineCache
    from dfrt.runtime.bundle import Bundle
    from dfrt.runtime.visual import VisualPipeline

    result: dict[str, Any] = {}
    for key, value in (("tensorrt", "9.9.9"), ("gpu", "Another GPU")):
        cache = EngineCache(Bundle.open(bundle))
        meta = cache.root / cache.key("scoring", "fp32", current_target()) / "meta.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), key: value}))
        built: list[str] = []
        with VisualPipeline.open(bundle, "tensorrt", precision="fp16", progress=built.append):
            pass
        result[f"meta claims another {key}"] = built
    result["passes"] = all(len(v) == 1 and "scoring" in v[0] for v in result.values())
    return result


STEP_FUNCTIONS: dict[str, Callable[[Path, argparse.Namespace, str], dict[str, Any]]] = {
    "environment": step_environment,
    "bundles": step_bundles,
    "cpu": step_cpu,
    "cuda_memory": step_cuda_memory,
    "ort_cuda": step_ort_cuda,
    "tensorrt": step_tensorrt,
}


# -- planning and running ----------------------------------------------------------------------------------
def pip_install(target: Path, specs: list[str], wheels: Path | None, deps: bool = False) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--target",
        str(target),
    ]
    command += ["--timeout", "15", "--retries", "1", "--upgrade", "--prefer-binary"]
    command += ["--no-index", "--find-links", str(wheels)] if wheels else []
    return command + ([] if deps else ["--no-deps"]) + specs


def plan(args: argparse.Namespace, work: Path) -> list[Step]:
    """The steps, most informative first (the budget may end the run early)."""
    wheels = Path(args.wheels).resolve() if args.wheels else None
    ort_site, cuda_site, demo = str(work / "site-ort"), str(work / "site-cuda"), str(work / "demo")
    cli = [sys.executable, "-m", "dfrt.cli"]
    infer = [*cli, "infer", str(SAMPLES / "07-count.mp4"), QUESTIONS[0], "--bundle", demo]
    infer += ["--backend", "tensorrt", "--json", "--temperature", "0"]
    pytest_gpu = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py"]
    eval_ = [*cli, "eval", "--count", "35", "--bundle", demo, "--clips", str(work / "clips"), "--json"]
    steps = [
        Step("environment", 60, False),
        Step("bundles", 300 if args.paper else 150, False, min_s=30),
        Step("cpu", 120, False, min_s=20),
        Step("cuda_memory", 60, True, site=[cuda_site]),
    ]
    if args.install:
        cuda = pip_install(Path(cuda_site), [CUDA_PYTHON], wheels, deps=True)
        ort = pip_install(Path(ort_site), [ORT_GPU, *ORT_CUDA_LIBS], wheels)
        steps += [Step("install:cuda-python", 120, True, command=cuda)]
        steps += [Step("install:onnxruntime-gpu", 240, True, 30, command=ort)]
    for i, version in enumerate(args.trt):
        major, site = version.split(".")[0], str(work / f"site-trt{version.split('.')[0]}")
        libs = [f"tensorrt-cu12{part}=={version}" for part in ("", "-libs", "-bindings")]
        if args.install:
            install = pip_install(Path(site), [*libs, "nvidia-cuda-runtime-cu12"], wheels)
            steps.append(Step(f"install:tensorrt{major}", 300, True, 60, install))
        steps.append(Step(f"tensorrt{major}", 300, True, 60, site=[site, cuda_site], arg=version))
        if i == 0:  # after the first TensorRT: what the rest of the issue asks for, then the next version
            steps.append(Step("ort_cuda", 150, True, 30, site=[ort_site]))
            steps.append(Step("infer_tensorrt", 120, True, 30, infer, site=[site, cuda_site]))
            steps.append(Step("pytest_gpu", 240, True, 60, pytest_gpu, site=[site, cuda_site]))
            steps.append(Step("eval", 240, True, 60, eval_, site=[ort_site]))
    if args.trt and args.trt[0].startswith("10."):  # last: 10.x weakly typed (FP16 flag), to compare
        site = str(work / "site-trt10")
        weak = {"DFRT_TRT_TYPING": "weak"}
        steps.append(
            Step("tensorrt10_weak", 240, True, 60, site=[site, cuda_site], env=weak, function="tensorrt")
        )
    if not args.trt:
        steps.append(Step("ort_cuda", 150, True, 30, site=[ort_site]))
    return steps


def child_command(step: Step, args: argparse.Namespace, work: Path, result: Path) -> list[str]:
    if step.command:
        return step.command
    function = step.function or step.name.rstrip("0123456789")
    command = [sys.executable, str(Path(__file__).resolve()), "--step", function]
    command += ["--work", str(work), "--step-result", str(result), "--arg", step.arg]
    return command + (["--paper", args.paper] if args.paper else [])


def run_step(step: Step, args: argparse.Namespace, work: Path, timeout: float, log: Any) -> Outcome:
    result = work / "steps" / f"{step.name.replace(':', '-')}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([*step.site, str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = child_command(step, args, work, result)
    log.write(f"\n== {step.name} (timeout {timeout:.0f} s): {' '.join(command)}\n")
    log.flush()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        output, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as e:
        output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        log.write(output)
        return Outcome("timeout", round(time.perf_counter() - started, 1), output_tail=output[-3000:])
    log.write(output)
    seconds = round(time.perf_counter() - started, 1)
    detail: dict[str, Any] = {}
    if result.is_file():
        detail = json.loads(result.read_text())
    elif step.command:
        detail = json_document(output)
    error = detail.pop("error", None) or (f"exit code {code}" if code else None)
    return Outcome("failed" if error else "ok", seconds, detail, error, output[-3000:])


def json_document(output: str) -> dict[str, Any]:
    """The JSON document a ``--json`` command printed among its progress lines, else its last line."""
    for start in [i for i, line in enumerate(output.splitlines()) if line.startswith("{")]:
        try:
            found = json.loads("\n".join(output.splitlines()[start:]))
            return found if isinstance(found, dict) else {"document": found}
        except ValueError:
            continue
    lines = [line for line in output.splitlines() if line.strip()]
    return {"last_line": lines[-1]} if lines else {}


def verdicts(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The checks the issue asks for, from the step details (None: not measured)."""
    found: dict[str, Any] = {}
    cpu = results.get("cpu", {}).get("detail", {})
    for precision, report in cpu.get("parity", {}).items():
        found[f"onnxruntime cpu {precision} parity"] = report.get("passes")
    if "engine_cache" in cpu:
        found["engine cache refuses foreign metadata"] = cpu["engine_cache"].get("passes")
    for name, outcome in results.items():
        detail = outcome.get("detail", {})
        if name.startswith("tensorrt"):
            for precision in ("fp16", "int8"):
                found[f"{name} {precision} parity"] = detail.get(precision, {}).get("passes")
            found[f"{name} rebuilds foreign engines"] = detail.get("rebuild", {}).get("passes")
        if name == "ort_cuda":
            for precision, report in detail.get("parity", {}).items():
                found[f"onnxruntime cuda {precision} parity"] = report.get("passes")
        if name == "cuda_memory":
            found[name] = detail.get("round_trip")
        if name in ("pytest_gpu", "infer_tensorrt", "eval"):
            found[name] = (
                outcome["status"] == "ok" if outcome["status"] in ("ok", "failed", "timeout") else None
            )
    return found


def orchestrate(args: argparse.Namespace) -> int:
    out = Path(args.out or os.environ.get("OUT") or "gpu-check-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="dfrt-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    steps = plan(args, work)
    (out / "plan.json").write_text(
        json.dumps(
            {
                "dry_run": args.dry_run,
                "budget_s": args.budget,
                "work": str(work),
                "steps": [
                    {**asdict(s), "command": child_command(s, args, work, work / "steps" / f"{s.name}.json")}
                    for s in steps
                ],
            },
            indent=2,
        )
    )
    results: dict[str, dict[str, Any]] = {}
    document: dict[str, Any] = {"dry_run": args.dry_run, "budget_s": args.budget, "steps": results}
    with open(out / "gpu_check.log", "a") as log:
        for step in steps:
            left = deadline - time.monotonic() - 5
            if args.dry_run and step.gpu:
                outcome = Outcome("planned", 0.0)
            elif left < step.min_s:
                outcome = Outcome(
                    "skipped", 0.0, error=f"budget: {left:.0f} s left, the step needs {step.min_s}"
                )
            elif step.name.startswith("install:") and not args.wheels and index_unreachable(results):
                outcome = Outcome("skipped", 0.0, error="the package index did not answer an earlier install")
            elif skip := missing_prerequisite(step, results):
                outcome = Outcome("skipped", 0.0, error=skip)
            else:
                outcome = run_step(step, args, work, min(step.timeout_s, left), log)
            results[step.name] = asdict(outcome)
            document["checks"] = verdicts(results)
            document["elapsed_s"] = round(args.budget - (deadline - time.monotonic()), 1)
            (out / "result.json").write_text(json.dumps(document, indent=2, default=str))
            log.write(f"-- {step.name}: {outcome.status} {outcome.seconds} s {outcome.error or ''}\n")
            log.flush()
            print(
                f"gpu_check: {step.name}: {outcome.status} ({outcome.seconds} s) {outcome.error or ''}",
                flush=True,
            )
    if not args.work and not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, r in results.items() if r["status"] in ("failed", "timeout")]
    print(f"gpu_check: results in {out}; failed: {', '.join(failed) or 'none'}", flush=True)
    return 0


def index_unreachable(results: dict[str, dict[str, Any]]) -> bool:
    """An earlier install could not reach the package index (no network): skip the other installs."""
    markers = ("NewConnectionError", "Failed to establish", "name resolution", "Network is unreachable")
    markers += ("ConnectTimeout", "timed out")
    return any(
        name.startswith("install:") and r["status"] != "ok" and any(m in r["output_tail"] for m in markers)
        for name, r in results.items()
    )


def installed_version(*dists: str) -> str | None:
    import importlib.metadata as md

    for dist in dists:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def missing_prerequisite(step: Step, results: dict[str, dict[str, Any]]) -> str | None:
    """Why ``step`` cannot run now, or None."""
    name = step.name
    if name == "install:cuda-python" and (importable("cuda.bindings") or importable("pycuda")):
        return "already installed (cuda.bindings or pycuda imports)"
    if name == "install:onnxruntime-gpu" and installed_version("onnxruntime-gpu"):
        return f"already installed (onnxruntime-gpu {installed_version('onnxruntime-gpu')})"
    if name.startswith("install:tensorrt"):
        have = installed_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12")
        if have and have.split(".")[0] == name.removeprefix("install:tensorrt"):
            return f"already installed (tensorrt {have})"
    needs_bundle = name in ("cpu", "ort_cuda", "infer_tensorrt", "eval") or name.startswith("tensorrt")
    if needs_bundle and results.get("bundles", {}).get("status") != "ok":
        return "needs the bundles step"
    trt_here = importable("tensorrt") or any(
        Path(step.site[0], module).is_dir() for module in ("tensorrt", "tensorrt_bindings") if step.site
    )
    if (name.startswith("tensorrt") or name == "infer_tensorrt") and not trt_here:
        return "tensorrt is not installed (its install step failed or was skipped)"
    if (
        name == "ort_cuda"
        and not Path(step.site[0], "onnxruntime").is_dir()
        and not installed_version("onnxruntime-gpu")
    ):
        return "onnxruntime-gpu is not installed (its install step failed or was skipped)"
    return None


def importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_child(args: argparse.Namespace) -> int:
    """``--step NAME``: one step in this process; its result (or error) goes to ``--step-result``."""
    sys.path.insert(0, str(ROOT))
    if args.step == "tensorrt" and not importable("tensorrt") and importable("tensorrt_bindings"):
        import tensorrt_bindings  # the wheel's module, where the tensorrt meta package did not install

        sys.modules["tensorrt"] = tensorrt_bindings
    try:
        detail = STEP_FUNCTIONS[args.step](Path(args.work), args, args.arg)
    except Exception as e:
        traceback.print_exc()
        detail = {"error": f"{type(e).__name__}: {e}"}
    Path(args.step_result).write_text(json.dumps(detail, indent=2, default=str))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", help="results folder (default $OUT, else ./gpu-check-out)")
    parser.add_argument("--work", help="bundles, engines and installs (default: a temporary folder, removed)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary --work folder")
    parser.add_argument(
        "--budget", type=float, default=480.0, help="total seconds for every step (default 480)"
    )
    parser.add_argument("--dry-run", action="store_true", help="run what needs no GPU, plan the rest")
    parser.add_argument("--wheels", help="install from this folder of wheels instead of the package index")
    parser.add_argument("--no-install", dest="install", action="store_false", help="use what is installed")
    parser.add_argument(
        "--trt",
        type=lambda s: tuple(v for v in s.split(",") if v),
        default=TRT_VERSIONS,
        help=f"tensorrt-cu12 versions to check, in order (default {','.join(TRT_VERSIONS)}; '' for none)",
    )
    parser.add_argument("--paper", help="exported paper bundle to time the vision graph of, or 'export'")
    parser.add_argument("--step", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--step-result", help=argparse.SUPPRESS)
    parser.add_argument("--arg", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return run_child(args) if args.step else orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
