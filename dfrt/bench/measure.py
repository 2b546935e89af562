"""`dfrt bench`: token budget, host-side scaling, bounded decode memory, stage latency, ORT vs PyTorch,
the vision tower's roofline, seek vs sequential decoding (LLM prefill: :mod:`dfrt.bench.llm_prefill`).

Every figure is measured in the same run and printed with its ratio to the baseline beside it. Two things are
properties, not timings, and fail the run when violated: the visual-token count equals DynFocus's formula
(bounded by 1296 + 2T beyond 80 frames), and decoding memory stays bounded by the frame cap whatever the
video's length. torch is imported only by :func:`torch_vs_onnxruntime`.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfrt.config import DynFocusConfig, VisionConfig
from dfrt.errors import DfrtError
from dfrt.runtime.selection import interleave_order, kmeans_prototypes, prototype_means, select_key_frames

UNIFORM_FRAMES = 8  # what llama.cpp / NanoLLM / TensorRT-LLM video demos feed: 8 frames of full patch tokens


class PropertyViolation(DfrtError):
    """A benchmark property (token budget, bounded memory) does not hold."""


@dataclass
class TokenRow:
    seconds: int
    frames: int
    dynfocus_tokens: int
    uniform_8_frame_tokens: int  # 8 frames x all patch tokens
    llamavid_tokens: int  # 2 tokens per frame
    host_seconds: float  # k-means + selection + interleave on the host


def token_budget(config: DynFocusConfig, durations: tuple[int, ...], fps: float = 1.0) -> list[TokenRow]:
    """Run the host-side DPE steps on random pooled features for each video length; check the formula."""
    rng = np.random.default_rng(0)
    rows = []
    for seconds in durations:
        frames = max(1, round(seconds * fps))
        pooled = rng.standard_normal((frames, config.pooled_tokens, config.vision.width), dtype=np.float32)
        start = time.perf_counter()
        prototypes = kmeans_prototypes(pooled, config.dpe.max_prototypes, config.dpe.kmeans_iters)
        if prototypes.num_prototypes < frames:
            prototype_means(pooled, prototypes)
        scores = rng.random(prototypes.num_prototypes)
        selection = select_key_frames(scores, prototypes, frames, config.dpe.key_ratio)
        tokens = interleave_order(selection, config.cone_tokens).size
        host = time.perf_counter() - start
        expected = config.visual_token_count(frames)
        bound = config.cone_tokens * 36 + 2 * frames if frames > config.dpe.max_prototypes else expected
        if tokens != expected or tokens > bound:
            raise PropertyViolation(
                f"{frames} frames gave {tokens} visual tokens; the formula says {expected}"
            )
        rows.append(
            TokenRow(seconds, frames, tokens, UNIFORM_FRAMES * config.vision.num_patches, 2 * frames, host)
        )
    return rows


@dataclass
class DecodeMemory:
    video_seconds: int
    decoded_frames: int
    kept_frames: int
    peak_mib: float


def decode_memory(
    cap: int, minutes: tuple[int, ...], fps: int = 5, size: tuple[int, int] = (64, 48)
) -> list[DecodeMemory]:
    """Peak Python-heap memory (numpy arrays included) decoding ever longer generated videos with a cap."""
    from dfrt.runtime.video import read_video

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in minutes:
            path = _long_video(Path(tmp) / f"{m}min.mp4", m * 60, fps, size)
            tracemalloc.start()
            video = read_video(path, fps=float(fps), max_frames=cap)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            results.append(DecodeMemory(m * 60, video.decoded_frames, video.num_frames, peak / 2**20))
    frame_mib = size[0] * size[1] * 3 / 2**20
    limit = (2 * cap + 4) * frame_mib * 2 + 8  # at most 2 x cap frames kept, a copy while stacking, slack
    for r in results:
        if r.kept_frames > cap or r.peak_mib > limit:
            raise PropertyViolation(
                f"decoding {r.video_seconds} s kept {r.kept_frames} frames and peaked at "
                f"{r.peak_mib:.1f} MiB (cap {cap}, limit {limit:.1f} MiB)"
            )
    return results


def _long_video(path: Path, seconds: int, fps: int, size: tuple[int, int]) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frame = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for i in range(seconds * fps):
        frame[:] = (i * 7) % 256
        writer.write(frame)
    writer.release()
    return path


def as_records(rows: list[Any]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


@dataclass
class StageLatency:
    frames: int
    visual_tokens: int
    stages: dict[str, float]  # seconds per stage (decode, preprocess, vision, ..., fusion[, llm_*])
    visual_wall: float  # wall time of the visual path (encode video + embed question)
    glue_fraction: float  # (visual wall - sum of graph/host stage times) / visual wall


def stage_latency(bundle: Path, clip_seconds: int, llm: Path | None, repeats: int) -> StageLatency:
    """Per-stage times of the visual path on a generated clip (median of ``repeats``); the LLM if given."""
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    question = "What happens in this video?"
    with Pipeline(bundle, llm=llm, backend="onnxruntime", with_llm=llm is not None) as pipe:
        with tempfile.TemporaryDirectory() as tmp:
            path = _long_video(Path(tmp) / "clip.mp4", clip_seconds, 10, (320, 240))
            runs = []
            for _ in range(repeats + 1):  # the first run warms up
                start = time.perf_counter()
                video = pipe.load_video(path)
                result = pipe.embed(video, question)
                runs.append((time.perf_counter() - start - video.timings["decode"], video, result))
        wall, video, result = sorted(runs[1:], key=lambda r: r[0])[len(runs[1:]) // 2]
        stages = {**video.timings, **result.timings}
        covered = sum(result.timings.values())
        if llm is not None:
            answer = pipe.answer(question, result.embeds, SamplingConfig(max_tokens=32, temperature=0))
            stages |= {
                "llm_prefill": answer.prefill_seconds,
                "llm_first_token": answer.first_token_seconds,
                "llm_decode_tokens_per_second": answer.decode_tokens_per_second,
            }
    frames = video.sampled.num_frames
    return StageLatency(frames, result.num_tokens, stages, wall, max(0.0, (wall - covered) / wall))


# -- onnxruntime vs PyTorch eager ------------------------------------------------------------------------
@dataclass
class GraphTiming:
    graph: str
    axes: dict[str, int]  # the feed's dynamic axis sizes
    onnxruntime_seconds: float  # median of the repeats, after one warm-up run
    torch_seconds: float
    torch_over_onnxruntime: float


@dataclass
class BackendComparison:
    config: str
    same_weights: bool  # False: PyTorch runs the same architecture with its own random weights
    torch_threads: int
    graphs: list[GraphTiming]


def torch_vs_onnxruntime(
    bundle: Path, model: Any | None = None, frames: int = 8, repeats: int = 3
) -> BackendComparison:
    """Time each graph of ``bundle`` in onnxruntime (CPU) and the same computation in PyTorch eager.

    ``model``: the :class:`~dfrt.model.dynfocus.DynFocus` the bundle was exported from; without it, a model
    of the bundle's config with seeded random weights (dense graphs: the cost does not depend on the values).
    Feeds are random at the contract's ``opt`` axis sizes, frame-like axes capped at ``frames``.
    """
    import torch

    from dfrt.export.bundle_writer import build_model
    from dfrt.export.graphs import GraphModule, example_feed, run_torch
    from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph
    from dfrt.runtime.bundle import Bundle

    opened = Bundle.open(bundle)
    manifest = opened.manifest
    same = model is not None
    if model is None:
        model, _ = build_model(manifest.config, scoring=manifest.scoring)
    timings = []
    for name, entry in manifest.graphs.items():
        spec = entry.spec
        axes = {
            a: opt if a in ("text", "keys", "prototypes") else min(opt, frames)
            for a, (_, opt, _) in spec.ranges
        }
        feed = example_feed(spec, axes, manifest.config.qformer.vocab_size)
        session = OnnxRuntimeGraph(opened.graph_path(name, "fp32"), spec)
        module = GraphModule(model, name).eval()
        ort_s = _median_seconds(repeats, session.run, feed)
        torch_s = _median_seconds(repeats, run_torch, module, spec, feed)
        timings.append(GraphTiming(name, axes, ort_s, torch_s, torch_s / ort_s))
    return BackendComparison(manifest.config.name, same, torch.get_num_threads(), timings)


def _median_seconds(repeats: int, work: Callable[..., object], *args: Any) -> float:
    work(*args)  # warm-up: allocations, kernel selection
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        work(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# -- roofline of the vision tower ------------------------------------------------------------------------
def vision_flops_per_frame(vision: VisionConfig) -> int:
    """Matmul FLOPs (2 per multiply-add) of one frame through the tower: patch embedding, then per block
    qkv, q·k, attention·v, output projection and the two MLP layers (norms, softmax, GELU left out)."""
    n, w, h, p = 1 + vision.num_patches, vision.width, vision.mlp_hidden, vision.patch_size
    patch = 2 * vision.num_patches * 3 * p * p * w
    block = 2 * n * w * 3 * w + 2 * 2 * n * n * w + 2 * n * w * w + 2 * 2 * n * w * h
    return patch + vision.depth * block


@dataclass
class Roofline:
    config: str
    gflops_per_frame: float
    weights_mib_fp16: float  # the tower's parameters in FP16, read once per chunk of frames
    peak_tflops: float | None
    roofline_frames_per_second: float | None  # peak / FLOPs per frame: compute-bound ceiling
    measured_frames_per_second: float | None  # onnxruntime CPU in this run, when timed
    measured_gflops_per_second: float | None


def roofline(
    config: DynFocusConfig, peak_tflops: float | None, measured_frames_per_second: float | None = None
) -> Roofline:
    """FLOPs per frame from the config; the compute roofline in frames/s given a peak (TFLOP/s)."""
    v = config.vision
    flops = vision_flops_per_frame(v)
    params = (3 * v.patch_size**2 + 1) * v.width + (v.num_patches + 2) * v.width  # patches, cls, positions
    params += v.depth * (4 * v.width * v.width + 2 * v.width * v.mlp_hidden + 8 * v.width + v.mlp_hidden)
    return Roofline(
        config.name,
        flops / 1e9,
        params * 2 / 2**20,
        peak_tflops,
        peak_tflops * 1e12 / flops if peak_tflops else None,
        measured_frames_per_second,
        measured_frames_per_second * flops / 1e9 if measured_frames_per_second else None,
    )


# -- frame decoding: seek per sampled frame vs one sequential pass ----------------------------------------
@dataclass
class DecodeThroughput:
    cap: int  # frame cap given to read_video (its 1 fps samples, uniformly thinned to the cap)
    sampled_frames: int
    decoded_frames: int  # frames the sequential pass decoded (grab) in total
    sequential_seconds: float  # dfrt.runtime.video.read_video: grab every frame, retrieve the sampled ones
    seek_seconds: float  # CAP_PROP_POS_FRAMES then read, per sampled frame
    seek_over_sequential: float  # time ratio: above 1, seeking is slower
    mismatched_frames: int  # seeked frames that differ from the sequential pass's (mean abs diff > 1)


def decode_throughput(path: Path, caps: tuple[int, ...]) -> list[DecodeThroughput]:
    """Sample ``path`` at 1 fps under each frame cap both ways; the same frames are delivered."""
    from dfrt.runtime.video import read_video

    rows = []
    for cap in caps:
        start = time.perf_counter()
        video = read_video(path, fps=1.0, max_frames=cap)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        seeked = _seek_frames(path, video.frame_indices)
        seek = time.perf_counter() - start
        mismatched = sum(
            1
            for a, b in zip(video.frames, seeked, strict=False)
            if a.shape != b.shape or np.abs(a.astype(np.int16) - b).mean() > 1
        )
        mismatched += video.num_frames - len(seeked)
        rows.append(
            DecodeThroughput(
                cap, video.num_frames, video.decoded_frames, sequential, seek, seek / sequential, mismatched
            )
        )
    return rows


def _seek_frames(path: Path, indices: np.ndarray) -> list[np.ndarray]:
    import cv2

    from dfrt.runtime.native_log import silenced_native_stderr

    frames = []
    with silenced_native_stderr():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            for index in indices:
                capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
                ok, frame = capture.read()
                if ok:
                    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
    return frames


def looped_video(path: Path, seconds: int, fps: int, size: tuple[int, int], source: Path | None) -> Path:
    """An mp4 (MPEG-4 part 2) of ``seconds`` at ``fps``: ``source`` (a real video) looped and resized, or
    moving noise when there is none, so the codec has real content to compress."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (size[1] * 2, size[0] * 2, 3), dtype=np.uint8)
    written, total = 0, seconds * fps
    try:
        while written < total:
            for frame in _frames_of(source):
                if written >= total:
                    break
                writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
                written += 1
            if source is None or written == 0:
                for i in range(written, total):
                    x, y = (i * 3) % size[0], (i * 2) % size[1]
                    writer.write(np.ascontiguousarray(noise[y : y + size[1], x : x + size[0]]))
                written = total
    finally:
        writer.release()
    return path


def _frames_of(source: Path | None) -> Any:
    import cv2

    if source is None or not source.is_file():
        return
    capture = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()
