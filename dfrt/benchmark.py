"""`dfrt bench`: token budget, host-side scaling, bounded decode memory, stage latency, ORT vs PyTorch.

Every figure is measured in the same run and printed with its ratio to the baseline beside it. Two things are
properties, not timings, and fail the run when violated: the visual-token count equals DynFocus's formula
(bounded by 1296 + 2T beyond 80 frames), and decoding memory stays bounded by the frame cap whatever the
video's length.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfrt.config import DynFocusConfig
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
    from dfrt.runtime.generate import Generator, SamplingConfig
    from dfrt.runtime.llm import LlamaModel
    from dfrt.runtime.video import read_video
    from dfrt.runtime.visual import VisualPipeline

    pipeline = VisualPipeline.open(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        path = _long_video(Path(tmp) / "clip.mp4", clip_seconds, 10, (320, 240))
        start = time.perf_counter()
        video = read_video(path, fps=1.0, shortest_edge=pipeline.config.vision.image_size)
        decode = time.perf_counter() - start
    runs = []
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        result = pipeline.embed(pipeline.encode_frames(video.frames), "What happens in this video?")
        runs.append((time.perf_counter() - start, result))
    wall, result = sorted(runs[1:], key=lambda r: r[0])[len(runs[1:]) // 2]
    stages = {"decode": decode, **result.timings}
    covered = sum(v for k, v in result.timings.items())
    if llm is not None:
        with LlamaModel(llm, n_ctx=4096) as model:
            answer = Generator(model, pipeline.bundle.manifest.prompt).answer(
                "What happens in this video?", result.embeds, SamplingConfig(max_tokens=32, temperature=0)
            )
        stages |= {
            "llm_prefill": answer.prefill_seconds,
            "llm_first_token": answer.first_token_seconds,
            "llm_decode_tokens_per_second": answer.decode_tokens_per_second,
        }
    return StageLatency(video.num_frames, result.num_tokens, stages, wall, max(0.0, (wall - covered) / wall))
