"""The serving engine, free of any web framework: one :class:`Pipeline`, its worker threads, a bounded
queue, the video cache, metrics, and one request's work (:meth:`Engine.work`) run in a worker.

A local pipeline serves ``--parallel`` requests at a time (that many worker threads and LLM slots; 1 by
default, when its lock serialises; the event loop never runs pipeline work); on Ray
(:mod:`dfrt.cluster.serve`) the pipeline fans out to replicas and the engine has as many workers as they
take requests at once. A request waits in the queue at most until its
deadline; the generation callbacks check the request's cancel event (client gone, timeout) and raise
:class:`Cancelled`, which ends the LLM's sampling loop at the next token (the sampler is freed, the next
answer resets the context). Live streams (``--watch NAME=SRC``) are :class:`~dfrt.live.Watcher` s on the
same pipeline; a request whose video is ``stream://NAME`` is answered over that stream's window as it is
then.
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
from typing import TYPE_CHECKING, Any

from dfrt import __version__
from dfrt.errors import DfrtError, InputError
from dfrt.runtime.generate import Answer
from dfrt.runtime.pipeline import InferenceResult, Pipeline, Video
from dfrt.runtime.report import answer_document
from dfrt.runtime.visual import VisualResult
from dfrt.serve.cache import VideoCache
from dfrt.serve.errors import ApiError, Cancelled, from_dfrt
from dfrt.serve.media import MediaResolver, Source, remove_dead_leftovers
from dfrt.serve.metrics import Metrics, Sample
from dfrt.serve.schema import ChatRequest, MediaRef

if TYPE_CHECKING:
    from dfrt.live.watcher import Watcher

log = logging.getLogger(__name__)

Emit = Callable[[str, Any], None]  # ("text", str) as the answer streams
STREAM_SCHEME = "stream://"
# per-stream series in /metrics: name, help, the value from Watcher.status()
STREAM_SERIES: tuple[tuple[str, str, Callable[[dict[str, Any]], float]], ...] = (
    ("dfrt_stream_connected", "1 while the stream is connected", lambda s: float(s["connected"])),
    ("dfrt_stream_fps_in", "frames read per second (last 5 s)", lambda s: s["fps_in"]),
    ("dfrt_stream_fps_sampled", "frames sampled per second (last 5 s)", lambda s: s["fps_sampled"]),
    ("dfrt_stream_frames_dropped_total", "sampled frames dropped (encoder behind)",
     lambda s: s["frames_dropped"]),
    ("dfrt_stream_reconnects_total", "times the stream was reopened", lambda s: s["reconnects"]),
    ("dfrt_stream_window_span_seconds", "seconds between the window's first and last frame",
     lambda s: s["window"]["span"]),
    ("dfrt_stream_window_frames", "frames in the window", lambda s: s["window"]["frames"]),
)  # fmt: skip


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
    selection: str | None = None  # key frames of open-VLM bundles (dfrt.scorers.selection.METHODS)
    threads: int | None = None  # CPU threads of the graphs and the LLM, prefill included (None: per core)
    ctx: int | None = None
    queue: int = 8  # requests waiting beyond the ones running; more get 429
    parallel: int = 1  # requests worked on at once (LLM slots, each its own context; 1 to 64)
    timeout: float = 300.0  # seconds per request, queueing included
    cache_mb: float = 512.0
    max_body_mb: float = 64.0
    allow_remote_media: bool = False
    remote_timeout: float = 30.0
    allow_private_media: bool = False  # remote URLs may reach loopback, link-local and private addresses
    max_media_mb: float = 2048.0  # the largest local media file read
    read_timeout: float = 30.0  # seconds a client has to send a request's head, and again its body
    max_connections: int = 256  # open connections in all (more are aborted as they are accepted)
    max_connections_per_client: int = 32  # open connections from one address
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted beyond the bound address's ("*": any)
    model_name: str | None = None  # the id in /v1/models; default: the bundle directory's name
    watch: tuple[tuple[str, str], ...] = ()  # (NAME, SRC): live streams asked as stream://NAME
    watch_window: float = 120.0  # seconds each stream's window holds
    watch_fps: float = 1.0  # frames sampled per second of each stream
    alerts: tuple[tuple[str, str], ...] = ()  # (NAME, RULE): standing questions on stream NAME
    alert_every: float = 5.0  # seconds between checks of a stream's rules
    confirm: int = 2  # consecutive checks that must agree before a rule fires or clears
    cooldown: float = 60.0  # seconds before a rule may fire again
    events_dir: Path | None = None  # --events: the event log (dfrt.live.events)
    events_size: int = 64 << 20
    webhooks: tuple[str, ...] = ()  # URLs each event is POSTed to (dfrt.live.hooks.Webhook)
    events_kept: int = 100  # events (with thumbnails) each stream keeps for /v1/streams/NAME/events
    max_event_clients: int = 32  # clients following stream events at once (more get 503)


@dataclass
class Job:
    """One request's state shared by the event loop and the worker."""

    request: ChatRequest
    source: Source | None  # None for a live stream
    deadline: float
    stream: str | None = None  # the watched stream's name (stream://NAME)
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

    def __init__(self, options: ServeOptions, pipe: Pipeline, model_id: str, workers: int = 1) -> None:
        """``workers``: requests worked on at once (a local pipeline's ``parallel``, its LLM slots; more
        when ``pipe`` fans out to remote replicas, as on Ray)."""
        self.options = options
        self.workers = workers
        self._counting = threading.Lock()  # running and mean_seconds change in the worker threads
        self.pipe = pipe
        self.model_id = model_id
        self.cache = VideoCache(int(options.cache_mb * (1 << 20)))
        self.resolver = MediaResolver(
            options.media_paths,
            options.allow_remote_media,
            int(options.max_body_mb * (1 << 20)),
            options.remote_timeout,
            max_local_bytes=int(options.max_media_mb * (1 << 20)),
            allow_private=options.allow_private_media,
        )
        for name in remove_dead_leftovers():  # a killed server's copies of uploaded videos
            log.info("removed %s (left by a server that no longer runs)", name)
        self.metrics = Metrics()
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="dfrt-pipeline")
        self.pending = 0  # queued + running; changed on the event loop only
        self.running = 0
        self.mean_seconds = 2.0  # running mean of a request's work: the Retry-After estimate
        self.watchers: dict[str, Watcher] = {}  # NAME -> its watcher (added by open_engine; closed here)
        self.events: Any = None  # dfrt.serve.stream_events.EventStore (set by open_engine with streams)
        self.closing: list[Callable[[], None]] = []  # run first by close (the alert scheduler's stop)
        m = self.metrics
        m.collectors.append(self._stream_samples)
        m.gauges["dfrt_queue_depth"] = (
            "requests waiting for the pipeline",
            lambda: self.pending - self.running,
        )
        m.gauges["dfrt_inflight_requests"] = ("requests queued or running", lambda: self.pending)
        m.gauges["dfrt_requests_running"] = ("requests being worked on", lambda: self.running)
        m.gauges["dfrt_slots"] = ("requests worked on at once (--parallel)", lambda: self.workers)
        m.gauges["dfrt_slots_busy"] = (
            "LLM slots generating an answer now",
            lambda: getattr(pipe, "slots_busy", 0),
        )
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
        return self.options.queue + self.workers

    def retry_after(self) -> int:
        return max(1, round(self.mean_seconds * max(1, self.pending - self.running) / self.workers))

    def close(self) -> None:
        """Finish the running request, stop every watcher, free the cache and the pipeline."""
        for stop in self.closing:
            stop()
        self.executor.shutdown(wait=True, cancel_futures=True)
        for watcher in self.watchers.values():
            watcher.close()
        self.cache.clear()
        self.resolver.close()
        self.pipe.close()

    # -- live streams ----------------------------------------------------------------------------------
    def stream_for(self, media: MediaRef) -> str | None:
        """The watched stream a request names (``stream://NAME``), None for a video; :class:`ApiError` 404
        for an unknown name, 503 while its window is still empty."""
        if media.kind != "url" or not media.value.startswith(STREAM_SCHEME):
            return None
        name = media.value[len(STREAM_SCHEME) :]
        watcher = self.watchers.get(name)
        if watcher is None:
            known = ", ".join(sorted(self.watchers)) or "none"
            message = f"no stream {name[:64]!r} on this server (streams: {known})"
            raise ApiError(404, message, media.param, "stream_not_found")
        if len(watcher.window) == 0:
            raise _empty(name)
        return name

    def props(self) -> dict[str, Any]:
        """What this server runs (``GET /props``): the model, its family, budget, backend and precision; no
        server path beyond the bundle directory's own name."""
        pipe = self.pipe
        manifest = pipe.manifest
        plan = getattr(pipe.config, "default_visual_tokens", None)
        return {
            "model": self.model_id,
            "bundle": Path(pipe.bundle.root).name,
            "family": manifest.family,
            "config": manifest.config.name,
            "frame_selection": getattr(pipe.visual, "selection", "dpe"),
            "scorer": None if manifest.scorer is None else manifest.scorer.kind,
            "default_visual_tokens": plan,
            "n_ctx": None if pipe.llm is None else pipe.llm.n_ctx,
            "backend": pipe.backend,
            "precision": pipe.precision,
            "parallel": self.workers,
            "dfrt_version": __version__,
        }

    def streams(self) -> dict[str, dict[str, Any]]:
        """Each stream's state for ``/health``: connection, rates, counters and its window."""
        out = {}
        for name, watcher in self.watchers.items():
            s = watcher.status()
            keys = ("connected", "ended", "error", "fps_in", "fps_sampled", "frames_dropped", "reconnects")
            window = {k: s["window"][k] for k in ("seconds", "start", "end", "span", "frames")}
            out[name] = {**{k: s[k] for k in keys}, "window": window}
        return out

    def _stream_samples(self) -> list[Sample]:
        samples: list[Sample] = []
        for name, watcher in sorted(self.watchers.items()):
            status = watcher.status()
            key = (("stream", name),)
            samples += [(metric, text, key, read(status)) for metric, text, read in STREAM_SERIES]
        return samples

    # -- in the worker thread --------------------------------------------------------------------------
    def work(self, job: Job) -> Outcome:
        """Decode (or reuse) the video, select frames, answer; runs in the pipeline's worker thread."""
        started = time.perf_counter()
        with self._counting:
            self.running += 1  # read by the gauges only
        try:
            job.check()  # timed out or abandoned while queued
            request = job.request
            if job.stream is not None:
                outcome = self._answer_stream(job, request, started)
            else:
                outcome = self._answer(job, request, started)
        finally:
            if job.source is not None:
                job.source.close()  # a local file's descriptor, held since its check
            with self._counting:
                self.running -= 1
        spent = time.perf_counter() - started
        with self._counting:
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * spent
        return outcome

    def _video(self, job: Job) -> tuple[Video, bool]:
        request, source = job.request, job.source
        assert source is not None
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
            result = self.pipe.ask(
                video, request.question, request.sampling, on_text, on_visual=on_visual,
                system=request.system, conversation=request.conversation,
            )  # fmt: skip
            tail = text.flush()
            if tail and job.emit is not None:
                job.emit("text", tail)
        except _StopHit:
            result = self._stopped(video, seen["visual"], request.question, text.text, seen["pieces"])
        except DfrtError as e:
            raise from_dfrt(e) from None
        total = time.perf_counter() - started
        assert job.source is not None
        video = {"sha256": job.source.sha256, "cached": hit}
        return self._outcome(request, result, text.text, hit, total, video)

    def _answer_stream(self, job: Job, request: ChatRequest, started: float) -> Outcome:
        """Answer over a watched stream's window as it is now (no cache: the window moves). A stop string
        ends what is sent; the model's generation runs on to its own end."""
        assert job.stream is not None
        text, stopped = _StopFilter(request.stop), [False]

        def on_text(piece: str) -> None:
            job.check()
            if stopped[0]:
                return
            out, stopped[0] = text.feed(piece)
            if out and job.emit is not None:
                job.emit("text", out)

        try:
            live = self.watchers[job.stream].ask(
                request.question, request.sampling, on_text, system=request.system,
                conversation=request.conversation,
            )  # fmt: skip
        except InputError as e:
            if len(self.watchers[job.stream].window) == 0:
                raise _empty(job.stream) from None
            raise from_dfrt(e) from None
        except DfrtError as e:
            raise from_dfrt(e) from None
        if not stopped[0]:
            tail = text.flush()
            if tail and job.emit is not None:
                job.emit("text", tail)
        window = live.window
        stream = {
            "name": job.stream,
            "source": self.watchers[job.stream].source.display,
            "asked_at": round(live.asked_at, 3),
            "window": {
                "start": None if window.start is None else round(window.start, 3),
                "end": None if window.end is None else round(window.end, 3),
                "span": round((window.end or 0.0) - (window.start or 0.0), 3),
                "frames": window.num_frames,
            },
            "key_frame_times": [round(t, 3) for t in live.key_frame_times],
        }
        total = time.perf_counter() - started
        outcome = self._outcome(request, live.result, text.text, False, total, None, stream)
        if stopped[0]:
            outcome.finish_reason = "stop"
        return outcome

    def _stopped(
        self, video: Video, visual: VisualResult, question: str, text: str, pieces: int
    ) -> InferenceResult:
        """The result of an answer ended by a request's stop string (the token count is approximate)."""
        before, after = self.pipe.generator.prompt_ids(question)  # type: ignore[union-attr]
        answer = Answer(text, len(before) + len(after), 0, visual.num_tokens, pieces, "stop", 0.0, 0.0, 0.0)
        return InferenceResult(answer, video, visual, {**visual.timings})

    def _outcome(
        self,
        request: ChatRequest,
        result: InferenceResult,
        text: str,
        hit: bool,
        total: float,
        video: dict[str, Any] | None,
        stream: dict[str, Any] | None = None,
    ) -> Outcome:
        """The response's text, finish reason, usage and ``dfrt`` document (``video`` for a file: sha256
        and cached; ``stream`` for a live stream: its name, window and key-frame times)."""
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
        if video is not None:
            cached = video["cached"]
            doc["video"] = {
                "sha256": video["sha256"],
                **{k: v for k, v in doc["video"].items() if k != "path"},
                "cached": cached,
            }
        else:
            doc.pop("video", None)
            doc["stream"] = stream
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


def _empty(name: str) -> ApiError:
    return ApiError(
        503, f"stream {name!r} has no frames in its window yet: wait for it to connect and retry",
        code="stream_empty", headers={"Retry-After": "1"},
    )  # fmt: skip


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
