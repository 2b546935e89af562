"""The Python API for embedded apps: load a bundle and an LLM once, ask many questions about many videos.

with Pipeline("bundle/") as pipe:
    video = pipe.load_video("clip.mp4")          # decode + question-independent encoding, once
    for q in questions:
        result = pipe.ask(video, q, on_text=print)  # Q-Former, rods, fusion, LLM per question
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dfrt.errors import ConfigError
from dfrt.runtime.generate import Answer, Generator, SamplingConfig
from dfrt.runtime.llm import LlamaModel
from dfrt.runtime.video import SampledVideo, read_video
from dfrt.runtime.visual import VideoFeatures, VisualPipeline, VisualResult

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAMES = 128  # 1296 + 2 * 128 = 1552 visual tokens at most: fits a 2048-token context


@dataclass
class Video:
    """A decoded video and its question-independent features; reuse it for every question about it."""

    sampled: SampledVideo
    features: VideoFeatures
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class InferenceResult:
    answer: Answer
    video: Video
    visual: VisualResult
    timings: dict[str, float]


def resolve_backend(backend: str) -> str:
    """``auto`` is TensorRT when tensorrt imports and a CUDA device answers, else onnxruntime."""
    if backend == "auto":
        return "tensorrt" if tensorrt_available() else "onnxruntime"
    if backend not in ("onnxruntime", "tensorrt"):
        raise ConfigError(f"unknown backend {backend!r}: choose auto, onnxruntime or tensorrt")
    if backend == "tensorrt" and not tensorrt_available():
        raise ConfigError(
            "TensorRT is not usable here (no tensorrt package or no CUDA GPU): use --backend onnxruntime"
        )
    return backend


def tensorrt_available() -> bool:
    try:
        from dfrt.runtime.engine_build import current_target

        current_target()
    except Exception:  # missing packages, no driver, no device: all mean "not here"
        return False
    return True


class Pipeline:
    def __init__(
        self,
        bundle: str | Path,
        llm: str | Path | None = None,
        backend: str = "auto",
        n_ctx: int = 4096,
        threads: int | None = None,
        precision: str | None = None,
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.backend = resolve_backend(backend)
        precision = precision or ("fp16" if self.backend == "tensorrt" else "fp32")
        self.visual = VisualPipeline.open(
            bundle, backend=self.backend, precision=precision, progress=progress
        )
        try:
            self.llm = self._open_llm(Path(llm) if llm else None, n_ctx, threads)
        except BaseException:
            self.visual.close()
            raise
        self.generator = Generator(self.llm, self.visual.bundle.manifest.prompt)

    def _open_llm(self, llm_path: Path | None, n_ctx: int, threads: int | None) -> LlamaModel:
        """The bundle's own GGUF unless one is given; its width must be the bundle's projection width."""
        bundle = self.visual.bundle
        if llm_path is None and bundle.llm_file:
            llm_path = bundle.path(bundle.llm_file)
        if llm_path is None:
            raise ConfigError(f"{bundle.root}: the bundle carries no LLM; pass one with --llm MODEL.gguf")
        model = LlamaModel(llm_path, n_ctx=n_ctx, threads=threads)
        width, llm_width = bundle.manifest.config.llm_width, model.n_embd
        if llm_width != width:
            model.close()
            raise ConfigError(
                f"{llm_path.name} has embedding width {llm_width}, the bundle projects into "
                f"{width}: they do not belong together"
            )
        return model

    def load_video(self, path: str | Path, fps: float = 1.0, max_frames: int = DEFAULT_MAX_FRAMES) -> Video:
        start = time.perf_counter()
        size = self.visual.config.vision.image_size
        sampled = read_video(path, fps=fps, max_frames=max_frames, shortest_edge=size)
        decode = time.perf_counter() - start
        features = self.visual.encode_frames(sampled.frames)
        return Video(sampled, features, {"decode": decode})

    def ask(
        self,
        video: Video | str | Path,
        question: str,
        sampling: SamplingConfig | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> InferenceResult:
        if not isinstance(video, Video):
            video = self.load_video(video)
        visual = self.visual.embed(video.features, question)
        answer = self.generator.answer(question, visual.embeds, sampling or SamplingConfig(), on_text)
        timings = {
            **video.timings,
            **visual.timings,
            "llm_prefill": answer.prefill_seconds,
            "llm_first_token": answer.first_token_seconds,
        }
        return InferenceResult(answer, video, visual, timings)

    def close(self) -> None:
        self.llm.close()
        self.visual.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
