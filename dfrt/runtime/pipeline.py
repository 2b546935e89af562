"""The Python API for embedded apps: load a bundle and an LLM once, ask many questions about many videos.

with Pipeline("bundle/") as pipe:
    video = pipe.load_video("clip.mp4")          # decode + question-independent encoding, once
    for q in questions:
        result = pipe.ask(video, q, on_text=print)  # Q-Former, rods, fusion, LLM per question

The pipeline owns the flow: it opens the bundle once, gets its graph runners from one loader
(:func:`dfrt.runtime.loader.open_graphs`: backend, precision and providers chosen there), and returns each
question's frame selection in its result; a :class:`Video` is never changed by a question.

Threads and lifetime: one :class:`Pipeline` serialises its calls (``load_video``, ``embed``, ``answer``,
``ask``) with one re-entrant lock, so calls from several threads queue. :meth:`Pipeline.close` takes the
same lock: it waits for the running call, then frees every native handle; it is idempotent, and afterwards
every call raises :class:`~dfrt.errors.BackendError` ("pipeline is closed").

``Pipeline(..., parallel=N)`` (N > 1) runs calls from several threads at once instead: decoding and the
visual graphs of one (onnxruntime sessions run from several threads; TensorRT engines one thread at a time,
under :attr:`Pipeline.graph_lock`) overlap the answers of others, and up to N answers generate at once, each
in its own llama.cpp context (a slot of :class:`~dfrt.runtime.slots.SlotPool`: its own KV cache, the
weights loaded once); an answer waits for a free slot. :meth:`Pipeline.close` refuses new calls, waits for
the running ones and then frees everything.

Closing from inside a callback (``on_text``, ``on_visual``) ends the running call with that error at its
next step. Every argument is checked (:mod:`dfrt.runtime.options`): a wrong type or value is one
:class:`~dfrt.errors.DfrtError`, never a ``TypeError`` or a native crash.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dfrt import registry
from dfrt.errors import BackendError, ConfigError, InputError
from dfrt.manifest import Manifest
from dfrt.runtime import options
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.conversation import Conversation
from dfrt.runtime.defaults import DEFAULT_FPS, DEFAULT_MAX_FRAMES
from dfrt.runtime.generate import Answer, Generator, SamplingConfig, VisualPrompt, sampling_config
from dfrt.runtime.llm import LlamaModel
from dfrt.runtime.loader import open_graphs
from dfrt.runtime.selection import KeyFrameSelection, frame_scores
from dfrt.runtime.slots import CallGate, SlotPool, check_parallel
from dfrt.runtime.visual import Video, VisualResult

__all__ = ["InferenceResult", "Pipeline", "Video", "VisualResult", "open_llm"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class InferenceResult:
    """One answer, the video it is about, and the frames this question selected (``visual.selection``)."""

    answer: Answer
    video: Video
    visual: VisualResult
    timings: dict[str, float]

    @property
    def selection(self) -> KeyFrameSelection:
        return self.visual.selection

    def frame_scores(self) -> np.ndarray | None:
        """Each sampled frame's DPE score for this question (a prototype's score for all its frames); None
        when the frames were given (a baseline) on a bundle whose scores depend on the question."""
        if self.visual.scores is None:
            return None
        return frame_scores(self.visual.scores, self.visual.prototypes)


def _serialised(method: Callable[..., T]) -> Callable[..., T]:
    """Run ``method`` under the pipeline's lock (with ``parallel`` > 1: counted by its gate, alongside other
    calls); refuse once the pipeline is closed."""

    @functools.wraps(method)
    def wrapper(self: Pipeline, *args: Any, **kwargs: Any) -> T:
        if self._gate is not None:
            with self._gate.call():
                return method(self, *args, **kwargs)
        with self._lock:
            if self._closed:
                raise BackendError("pipeline is closed")
            return method(self, *args, **kwargs)

    return wrapper


def open_llm(bundle: Bundle, llm_path: Path | None, n_ctx: int | None, threads: int | None) -> LlamaModel:
    """The bundle's own GGUF unless one is given; its width must be the bundle's projection width."""
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


class Pipeline:
    """A bundle's visual graphs and its LLM, opened once; calls from several threads queue (one lock), or
    run at once with ``parallel`` > 1 (that many answers at a time)."""

    _closed = True  # until __init__ has opened everything
    _gate: CallGate | None = None  # with parallel > 1: the calls in flight

    def __init__(
        self,
        bundle: str | Path,
        llm: str | Path | None = None,
        backend: str = "auto",
        n_ctx: int | None = None,
        threads: int | None = None,
        precision: str | None = None,
        progress: Callable[[str], None] = lambda message: None,
        with_llm: bool = True,
        selection: str | None = None,
        parallel: int = 1,
    ) -> None:
        """``n_ctx`` None: the model's trained context, at most 4096. ``threads``: CPU threads of the graphs
        (onnxruntime) and of the LLM, each slot's (None: their defaults, about one per core; with
        ``parallel`` > 1 the LLM's are the cores shared among the slots). ``with_llm=False`` opens the visual
        path alone (embeddings, no answers: benchmarks). ``selection``: how key frames are chosen where the
        bundle's family offers a choice (:data:`dfrt.scorers.selection.METHODS`; None: its default).
        ``parallel``: answers generated at once (1 to 64), each slot with its own ``n_ctx``-position KV
        cache; 1 serialises every call as before."""
        self._lock = threading.RLock()
        parallel = check_parallel(parallel)
        bundle = options.path("--bundle", bundle)
        llm = None if llm is None or llm == "" else options.path("--llm", llm)
        n_ctx = None if n_ctx is None else options.ctx(n_ctx)
        threads = options.threads(threads)
        options.callback("progress", progress)
        with_llm = options.flag("with_llm", with_llm)
        for name, value in (("--backend", backend), ("--precision", precision)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a name (str), got {type(value).__name__}")
        if selection is not None and not isinstance(selection, str):
            raise ConfigError(f"--selection must be a name (str), got {type(selection).__name__}")
        self.bundle = Bundle.open(bundle)
        family = registry.runtime(self.bundle.manifest.family)
        graphs = open_graphs(self.bundle, backend, precision, None, progress, threads)
        try:
            self.visual = family.open_visual(self.bundle, graphs, selection=selection)
        except BaseException:
            graphs.close()
            raise
        self.llm: LlamaModel | None = None  # slot 0's context (the model's owner)
        self.generator: Generator | None = None  # slot 0's
        self.slots: SlotPool | None = None
        self.parallel = parallel
        if with_llm:
            llm_threads = threads
            if threads is None and parallel > 1:
                llm_threads = max(1, (os.cpu_count() or 1) // parallel)
            try:
                self.llm = open_llm(self.bundle, llm, n_ctx, llm_threads)
                self.slots = SlotPool(self.llm, parallel, self._generator)
            except BaseException:
                if self.llm is not None:
                    self.llm.close()
                self.visual.close()
                raise
            self.generator = self.slots.generators[0]
        if parallel > 1:
            self._gate = CallGate()
        self._closed = False

    def _generator(self, llm: LlamaModel) -> Generator:
        return Generator(llm, self.bundle.manifest.prompt, self.visual.prompt_tokenizer)

    # -- what the pipeline runs ---------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def config(self) -> Any:
        """The family's config (a :class:`~dfrt.config.DynFocusConfig` for DynFocus bundles)."""
        return self.bundle.manifest.config

    @property
    def family(self) -> str:
        return self.bundle.manifest.family

    @property
    def backend(self) -> str:
        return self.visual.graphs.backend

    @property
    def precision(self) -> str:
        return self.visual.graphs.precision

    @property
    def providers(self) -> dict[str, str]:
        """Graph -> the execution provider it runs on (``tensorrt`` for engines)."""
        return dict(self.visual.graphs.providers)

    @property
    def closed(self) -> bool:
        return self._closed or (self._gate is not None and self._gate.closed)

    @property
    def slots_busy(self) -> int:
        """Answers generating now (LLM slots lent; at most :attr:`parallel`)."""
        return 0 if self.slots is None else self.slots.busy

    @property
    def graph_lock(self) -> AbstractContextManager[Any]:
        """What a thread that runs this pipeline's graphs directly (``pipe.visual``) holds meanwhile:
        onnxruntime sessions run from several threads at once (a no-op), TensorRT contexts one thread at a
        time (the pipeline's own lock, which every pipeline call takes with ``parallel`` 1, and the graph
        work of every call with ``parallel`` > 1)."""
        return self._lock if self.backend != "onnxruntime" else contextlib.nullcontext()

    # -- the flow --------------------------------------------------------------------------------------------
    @_serialised
    def load_video(
        self,
        path: str | Path,
        fps: float = DEFAULT_FPS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        visual_tokens: int | None = None,
    ) -> Video:
        """Decode and sample a video, then encode what does not depend on the question.

        ``visual_tokens`` caps every answer's visual tokens (:mod:`dfrt.runtime.budget`: fewer key frames
        first, then fewer sampled frames, never below one key frame); None keeps the config's key-frame ratio.
        """
        fps, max_frames = options.fps(fps), options.max_frames(max_frames)
        budget = options.visual_tokens(visual_tokens)
        with self.graph_lock:
            return self.visual.load_video(path, fps, max_frames, budget)

    @_serialised
    def embed(
        self, video: Video, question: str, frames: KeyFrameSelection | None = None, rods: bool = True
    ) -> VisualResult:
        """The visual embeddings of one question; ``frames``/``rods`` as in :meth:`VisualPipeline.embed`."""
        if not isinstance(video, Video):
            raise InputError(f"video must be a Video from load_video, got {type(video).__name__}")
        options.question(question)
        options.flag("rods", rods)
        if frames is not None and not isinstance(frames, KeyFrameSelection):
            raise ConfigError(f"frames must be a KeyFrameSelection or None, got {type(frames).__name__}")
        with self.graph_lock:
            return self.visual.embed(video.features, question, frames, rods)

    @_serialised
    def answer(
        self,
        question: str,
        embeds: np.ndarray | VisualPrompt | None,
        sampling: SamplingConfig | None = None,
        on_text: Callable[[str], None] | None = None,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> Answer:
        """The LLM's answer to ``question`` with ``embeds`` (rows, or a :class:`VisualPrompt`: a
        :class:`VisualResult`'s ``prompt``) spliced in at ``<image>``; ``system``: a system message;
        ``conversation``: earlier exchanges replayed before the question."""
        if self.slots is None:
            raise ConfigError("this pipeline was opened without its LLM (with_llm=False): it cannot answer")
        sampling = sampling_config(sampling)
        with self.slots.slot() as generator:  # a free slot (parallel > 1 may wait for one)
            return generator.answer(question, embeds, sampling, on_text, system, conversation)

    @_serialised
    def ask(
        self,
        video: Video | str | Path,
        question: str,
        sampling: SamplingConfig | None = None,
        on_text: Callable[[str], None] | None = None,
        frames: KeyFrameSelection | None = None,
        rods: bool = True,
        on_visual: Callable[[VisualResult], None] | None = None,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> InferenceResult:
        """Answer ``question`` about ``video`` (a :class:`Video`, or a path decoded with the defaults).

        ``on_text`` receives the answer as it streams; ``on_visual`` the frame selection before that;
        ``system``: a system message (where the model's prompt puts one); ``conversation``: earlier
        exchanges replayed before the question (key frames are chosen for ``question``, the latest).
        """
        options.question(question)
        sampling = sampling_config(sampling)
        options.callback("on_text", on_text)
        options.callback("on_visual", on_visual)
        if not isinstance(video, Video):
            video = self.load_video(video)
        visual = self.embed(video, question, frames, rods)
        if on_visual is not None:
            on_visual(visual)
        answer = self.answer(question, visual.prompt, sampling, on_text, system, conversation)
        timings = {
            **video.timings,
            **visual.timings,
            "llm_prefill": answer.prefill_seconds,
            "llm_first_token": answer.first_token_seconds,
        }
        return InferenceResult(answer, video, visual, timings)

    def close(self) -> None:
        """Free the LLM and the graphs; waits for the calls running in other threads; idempotent."""
        if self._gate is not None:
            self._gate.close(self._close_slots, self._free)
            return
        with self._lock:
            if self._closed:
                return
            self._free()

    def _close_slots(self) -> None:
        """Threads waiting for a slot raise; each slot's running answer ends, then its context is freed."""
        if self.slots is not None:
            self.slots.close()

    def _free(self) -> None:
        self._closed = True
        try:
            self._close_slots()
        finally:
            self.visual.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
