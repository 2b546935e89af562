"""The serving engine, free of any web framework: one :class:`Pipeline`, one worker thread, a bounded
queue, the video cache, metrics, and one request's work (:meth:`Engine.work`) run in that worker.

The pipeline serves one request at a time (its lock serialises; the worker is a single thread, so the
event loop never runs pipeline work). A request waits in the queue at most until its deadline; the
generation callbacks check the request's cancel event (client gone, timeout) and raise :class:`Cancelled`,
which ends the LLM's sampling loop at the next token (the sampler is freed, the next answer resets the
context).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfrt.errors import DfrtError
from dfrt.runtime.generate import Answer
from dfrt.runtime.pipeline import InferenceResult, Pipeline, Video
from dfrt.runtime.report import answer_document
from dfrt.runtime.visual import VisualResult
from dfrt.serve.cache import VideoCache
from dfrt.serve.errors import Cancelled, from_dfrt
from dfrt.serve.media import MediaResolver, Source
from dfrt.serve.metrics import Metrics
from dfrt.serve.schema import ChatRequest

log = logging.getLogger(__name__)

Emit = Callable[[str, Any], None]  # ("text", str) as the answer streams


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``dfrt serve`` is configured with (the CLI's flags, one to one)."""

    bundle: Path | None = None
    llm: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    media_paths: tuple[Path, ...] = ()
    api_key: str | None = None
    backend: str = "auto"
    precision: str | None = None
    ctx: int | None = None
    queue: int = 8  # requests waiting beyond the one running; more get 429
    timeout: float = 300.0  # seconds per request, queueing included
    cache_mb: float = 512.0
    max_body_mb: float = 64.0
    allow_remote_media: bool = False
    remote_timeout: float = 30.0
    model_name: str | None = None  # the id in /v1/models; default: the bundle directory's name


@dataclass
class Job:
    """One request's state shared by the event loop and the worker."""

    request: ChatRequest
    source: Source
    deadline: float
    emit: Emit | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled"

    def stop(self, reason: str) -> None:
        self.reason = reason
        self.cancel.set()

    def check(self) -> None:
        if not self.cancel.is_set() and time.monotonic() > self.deadline:
            self.stop("timeout")
        if self.cancel.is_set():
            raise Cancelled(self.reason)


@dataclass
class Outcome:
    text: str
    finish_reason: str  # "stop" or "length"
    usage: dict[str, int]
    dfrt: dict[str, Any]


class _StopHit(Exception):
    """A request's own stop string appeared: generation ends there."""


class Engine:
    """The pipeline, its worker and the shared state; :meth:`close` frees everything."""

    def __init__(self, options: ServeOptions, pipe: Pipeline, model_id: str) -> None:
        self.options = options
        self.pipe = pipe
        self.model_id = model_id
        self.cache = VideoCache(int(options.cache_mb * (1 << 20)))
        self.resolver = MediaResolver(
            options.media_paths,
            options.allow_remote_media,
            int(options.max_body_mb * (1 << 20)),
            options.remote_timeout,
        )
        self.metrics = Metrics()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dfrt-pipeline")
        self.pending = 0  # queued + running; changed on the event loop only
        self.running = 0
        self.mean_seconds = 2.0  # running mean of a request's work: the Retry-After estimate
        m = self.metrics
        m.gauges["dfrt_queue_depth"] = (
            "requests waiting for the pipeline",
            lambda: self.pending - self.running,
        )
        m.gauges["dfrt_inflight_requests"] = ("requests queued or running", lambda: self.pending)
        m.gauges["dfrt_cache_bytes"] = ("bytes held by the video cache", lambda: self.cache.bytes)
        m.gauges["dfrt_cache_entries"] = ("videos in the cache", lambda: len(self.cache))
        m.gauges["dfrt_cache_hits_total"] = ("video cache hits (decoding skipped)", lambda: self.cache.hits)
        m.gauges["dfrt_cache_misses_total"] = ("video cache misses", lambda: self.cache.misses)
        m.gauges["dfrt_cache_evictions_total"] = (
            "videos evicted from the cache",
            lambda: self.cache.evictions,
        )

    @property
    def capacity(self) -> int:
        return self.options.queue + 1

    def retry_after(self) -> int:
        return max(1, round(self.mean_seconds * max(1, self.pending - self.running)))

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.cache.clear()
        self.pipe.close()

    # -- in the worker thread --------------------------------------------------------------------------
    def work(self, job: Job) -> Outcome:
        """Decode (or reuse) the video, select frames, answer; runs in the pipeline's worker thread."""
        started = time.perf_counter()
        self.running += 1  # read by the gauges only
        try:
            job.check()  # timed out or abandoned while queued
            request = job.request
            outcome = self._answer(job, request, started)
        finally:
            self.running -= 1
        spent = time.perf_counter() - started
        self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * spent
        return outcome

    def _video(self, job: Job) -> tuple[Video, bool]:
        request, source = job.request, job.source
        key = (source.sha256, request.fps, request.max_frames, request.visual_tokens, source.image)
        video = self.cache.get(key)
        if video is not None:
            return video, True
        with self.resolver.materialized(source) as path:
            try:
                video = self.pipe.load_video(path, request.fps, request.max_frames, request.visual_tokens)
            except DfrtError as e:
                raise from_dfrt(e, request.media.param, {str(path): "the video"}) from None
        video = dataclasses.replace(video, sampled=dataclasses.replace(video.sampled, path=Path("video")))
        self.cache.put(key, video)
        return video, False

    def _answer(self, job: Job, request: ChatRequest, started: float) -> Outcome:
        video, hit = self._video(job)
        job.check()
        seen: dict[str, Any] = {"visual": None, "pieces": 0}
        text = _StopFilter(request.stop)

        def on_visual(visual: VisualResult) -> None:
            seen["visual"] = visual
            job.check()

        def on_text(piece: str) -> None:
            job.check()
            seen["pieces"] += 1
            out, hit_stop = text.feed(piece)
            if out and job.emit is not None:
                job.emit("text", out)
            if hit_stop:
                raise _StopHit

        try:
            result = self.pipe.ask(video, request.question, request.sampling, on_text, on_visual=on_visual)
            tail = text.flush()
            if tail and job.emit is not None:
                job.emit("text", tail)
        except _StopHit:
            result = self._stopped(video, seen["visual"], request.question, text.text, seen["pieces"])
        except DfrtError as e:
            raise from_dfrt(e) from None
        total = time.perf_counter() - started
        return self._outcome(request, result, text.text, hit, total, job.source.sha256)

    def _stopped(
        self, video: Video, visual: VisualResult, question: str, text: str, pieces: int
    ) -> InferenceResult:
        """The result of an answer ended by a request's stop string (the token count is approximate)."""
        before, after = self.pipe.generator.prompt_ids(question)  # type: ignore[union-attr]
        answer = Answer(text, len(before) + len(after), 0, visual.num_tokens, pieces, "stop", 0.0, 0.0, 0.0)
        return InferenceResult(answer, video, visual, {**visual.timings})

    def _outcome(
        self, request: ChatRequest, result: InferenceResult, text: str, hit: bool, total: float, sha256: str
    ) -> Outcome:
        answer = result.answer
        doc = answer_document(self.pipe, result, request.question, total)
        video_stages = set(result.video.timings) | set(result.video.features.timings)
        if hit:  # reused, not recomputed: report (and measure) only what this request did
            doc["timings"] = {k: (0.0 if k in video_stages else v) for k, v in doc["timings"].items()}
        for stage, seconds in doc["timings"].items():
            if stage != "total" and not (hit and stage in video_stages):
                self.metrics.observe("dfrt_stage_seconds", "seconds per pipeline stage", seconds, stage=stage)
        for name in ("answer", "question", "bundle"):
            doc.pop(name, None)
        doc["video"] = {
            "sha256": sha256,
            **{k: v for k, v in doc["video"].items() if k != "path"},
            "cached": hit,
        }
        doc["model"] = self.model_id
        finish = "length" if answer.stop_reason in ("max_tokens", "context") else "stop"
        prompt = answer.visual_tokens + answer.prompt_tokens
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": answer.generated_tokens,
            "total_tokens": prompt + answer.generated_tokens,
        }
        self.metrics.inc("dfrt_generated_tokens_total", "tokens generated", answer.generated_tokens)
        return Outcome(text, finish, usage, doc)


class _StopFilter:
    """Holds back text that may start a stop string; reports when one appears (the text is cut before it)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.emitted = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        self.text += piece
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self.hold), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        out = self.text[self.emitted : end]
        self.emitted = end
        return out
