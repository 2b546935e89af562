"""Watch a live source and answer questions about its last seconds at any time.

with Pipeline(bundle) as pipe, Watcher(pipe, "udp://127.0.0.1:5000", window=16, fps=1) as watcher:
    watcher.wait_for_frames(8)
    print(watcher.ask("Which direction did the red circle move?").answer, watcher.status())

Two threads per watcher. The reader decodes the stream, keeps about ``fps`` frames a second (by stream
time), shrinks them to the model's input size and hands them over through a queue of ``queue_size`` (1-8):
when the encoder falls behind, the oldest waiting frame is dropped and counted, never queued without bound.
The encoder computes each frame's question-independent features (vision and encoding graphs, small batches)
into a :class:`~dfrt.live.window.FeatureWindow` of ``window`` seconds. A question snapshots the window and
runs prototypes, scores and key-frame selection over exactly those frames, then the pipeline's embed and
answer (:meth:`Pipeline.ask <dfrt.runtime.pipeline.Pipeline.ask>`, serialised by the pipeline's lock).

A file is read as fast as it is encoded (no frame dropped) unless ``realtime``: then it is paced by its own
clock like a live stream. A stream that drops is reopened with bounded exponential backoff; ``reconnect.
attempts`` consecutive failures end the watcher (its window stays answerable). :meth:`Watcher.ask` and
:meth:`Watcher.status` are thread-safe; :meth:`Watcher.close` stops both threads (bounded by the open and
read timeouts) and leaves the pipeline open.

A live source is untrusted: a frame that cannot be used (absurd or empty size, not three channels, a
conversion error) is skipped and counted (``frames_refused``), never the end of the watcher; a stream that
changes resolution is encoded in runs of equal frame sizes; a live source that opens with an absurd size is
retried like one that cannot be opened.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfrt.errors import BackendError, ConfigError, DfrtError, InputError
from dfrt.live.sources import (
    OPEN_TIMEOUT_MS,
    READ_TIMEOUT_MS,
    Source,
    StreamClock,
    open_capture,
    parse_source,
    reported_fps,
    to_rgb,
)
from dfrt.live.window import FeatureWindow, FrameEntry, WindowSnapshot, thumbnail
from dfrt.runtime import options
from dfrt.runtime.conversation import Conversation
from dfrt.runtime.generate import SamplingConfig, sampling_config
from dfrt.runtime.pipeline import InferenceResult, Pipeline, Video
from dfrt.runtime.video import SampledVideo

log = logging.getLogger(__name__)

WINDOW_RANGE = (1.0, 86400.0)  # seconds
QUEUE_RANGE = (1, 8)
RATE_SPAN = 5.0  # seconds over which fps_in and fps_sampled are measured


@dataclass(frozen=True)
class Reconnect:
    """Backoff between reconnection attempts: ``initial`` doubling up to ``maximum`` seconds; ``attempts``
    consecutive failures end the watcher (None: keep trying)."""

    initial: float = 0.5
    maximum: float = 10.0
    attempts: int | None = None

    def __post_init__(self) -> None:
        options.real("reconnect initial", self.initial, 0.0, 3600.0)
        options.real("reconnect maximum", self.maximum, self.initial, 3600.0)
        if self.attempts is not None:
            options.integer("--max-reconnects", self.attempts, 0, 1 << 30)

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * 2.0 ** max(0, failures - 1))


@dataclass
class LiveAnswer:
    """One answer about the window as it was when the question was asked."""

    question: str
    answer: str
    asked_at: float  # seconds on the watcher's clock
    window: WindowSnapshot
    key_frame_times: list[float]
    first_token_seconds: float | None  # from the question to the first streamed text
    seconds: float  # from the question to the end of the answer
    result: InferenceResult

    def to_dict(self) -> dict[str, Any]:
        """Stable snake_case keys: one JSON line of ``dfrt watch``."""
        return {
            "question": self.question,
            "answer": self.answer,
            "asked_at": round(self.asked_at, 3),
            "window": {
                "start": _rounded(self.window.start),
                "end": _rounded(self.window.end),
                "frames": self.window.num_frames,
            },
            "key_frame_times": [round(t, 3) for t in self.key_frame_times],
            "visual_tokens": self.result.answer.visual_tokens,
            "latency": {
                "first_token": _rounded(self.first_token_seconds),
                "total": round(self.seconds, 3),
            },
        }


class _Rate:
    """Events per second over the last :data:`RATE_SPAN` seconds; thread-safe."""

    def __init__(self) -> None:
        self._times: deque[float] = deque(maxlen=4096)
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)

    def per_second(self, now: float) -> float:
        with self._lock:
            recent = [t for t in self._times if t > now - RATE_SPAN]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(now - recent[0], 1e-6)


class Watcher:
    """A live source, its rolling window of frame features, and questions about it (see the module doc)."""

    def __init__(
        self,
        pipe: Pipeline,
        source: str | int | Path,
        window: float = 120.0,
        fps: float = 1.0,
        realtime: bool = False,
        loop: bool = False,
        queue_size: int = 2,
        batch: int = 4,
        reconnect: Reconnect | None = None,
        key_count: int | None = None,
        visual_tokens: int | None = None,
    ) -> None:
        """``window`` seconds of frames sampled at ``fps``; ``key_count`` key frames per answer (None: the
        model's ratio); ``visual_tokens`` caps each answer's visual tokens as ``dfrt infer --visual-tokens``
        does (fewer key frames, then fewer of the window's frames, spread evenly).
        Raises :class:`~dfrt.errors.DfrtError` for a bad source or option, before any
        thread starts; a source that cannot be opened yet is retried in the background."""
        if not isinstance(pipe, Pipeline) or pipe.closed:
            raise ConfigError("pipe must be an open dfrt.runtime.pipeline.Pipeline")
        self.source: Source = parse_source(source)
        self.span = options.real("--window", window, *WINDOW_RANGE)
        self.fps = options.fps(fps)
        frames = math.ceil(self.span * self.fps) + 1
        if frames > options.MAX_FRAMES_RANGE[1]:
            raise ConfigError(
                f"--window {self.span:g}s at --fps {self.fps:g} holds {frames} frames, more than "
                f"{options.MAX_FRAMES_RANGE[1]}: shorten the window or lower the fps"
            )
        self.realtime = options.flag("realtime", realtime)
        self.loop = options.flag("loop", loop)
        if self.loop and self.source.kind != "file":
            raise ConfigError("--loop replays files only")
        queue_size = options.integer("queue_size", queue_size, *QUEUE_RANGE)
        self.batch = options.integer("batch", batch, 1, 64)
        self.reconnect = reconnect or Reconnect()
        if not isinstance(self.reconnect, Reconnect):
            raise ConfigError(f"reconnect must be a Reconnect, got {type(self.reconnect).__name__}")
        self.key_count = None if key_count is None else options.integer("key_count", key_count, 1, frames)
        if self.source.kind == "file":  # a file that cannot be opened is an error now, not a retry
            capture = open_capture(self.source)
            if capture is None:
                raise InputError(f"{self.source.display}: cannot be opened as a video")
            capture.release()
        self.visual_tokens = options.visual_tokens(visual_tokens)
        pipe.visual.check_budget(self.visual_tokens)  # below one frame's tokens: refused now
        self.pipe = pipe
        self.window = FeatureWindow(self.span, frames)
        self._paced = self.source.live or self.realtime  # frames arrive in real time: drop, never block
        self._origin = time.monotonic()
        self._clock = StreamClock(self._origin, live=self._paced)
        self._queue: queue.Queue[tuple[float, float, np.ndarray]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the counters below
        self._graph_lock = pipe.graph_lock  # held while this watcher's threads run the graphs directly
        self._stats: dict[str, Any] = dict.fromkeys(
            (
                "frames_read",
                "frames_sampled",
                "frames_encoded",
                "frames_dropped",
                "frames_refused",
                "reconnects",
                "loops",
            ),
            0,
        )
        self._stats.update(connected=False, ended=False, error=None, encode_seconds=0.0, source_fps=0.0)
        self._read_rate, self._sample_rate = _Rate(), _Rate()
        self._reader = threading.Thread(target=self._guard, args=(self._read,), name="dfrt-watch-reader")
        self._encoder = threading.Thread(target=self._guard, args=(self._encode,), name="dfrt-watch-encoder")
        self._reader.daemon = self._encoder.daemon = True
        self._encoding_done = threading.Event()
        self._reader.start()
        self._encoder.start()

    # -- questions -------------------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        sampling: SamplingConfig | None = None,
        on_text: Callable[[str], None] | None = None,
        wait: float = 0.0,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> LiveAnswer:
        """Answer ``question`` about the window as it is now (waiting up to ``wait`` seconds for a first
        frame); thread-safe. Raises :class:`InputError` when the window is still empty. ``system`` (a system
        message) and ``conversation`` (earlier exchanges), as :meth:`Pipeline.ask
        <dfrt.runtime.pipeline.Pipeline.ask>`."""
        options.question(question)
        sampling = sampling_config(sampling)
        options.callback("on_text", on_text)
        options.real("wait", wait, 0.0, 3600.0)
        start = time.perf_counter()
        if wait and not self.wait_for_frames(1, wait):
            raise InputError(f"{self.source.display}: no frame arrived within {wait:g} s")
        asked_at = time.monotonic() - self._origin
        snapshot = self.window.snapshot()
        if not snapshot.num_frames:
            raise InputError("the window holds no frames yet: wait for the stream")
        with self._graph_lock:
            states = [e.state for e in snapshot.entries]
            features, kept = self.pipe.visual.live_features(
                states, snapshot.times, self.visual_tokens, self.key_count
            )
        snapshot = WindowSnapshot(tuple(snapshot.entries[i] for i in kept))
        times = snapshot.times
        sampled = SampledVideo(
            frames=np.zeros((0, 1, 1, 3), dtype=np.uint8),  # the window keeps features, not frames
            timestamps=times,
            frame_indices=np.arange(times.size, dtype=np.int64),
            path=Path(self.source.display),
            decoded_frames=int(self._stats["frames_read"]),
            source_fps=float(self._stats["source_fps"]),
        )
        first: list[float] = []

        def streamed(text: str) -> None:
            if not first:
                first.append(time.perf_counter())
            if on_text is not None:
                on_text(text)

        video = Video(sampled, features)
        result = self.pipe.ask(video, question, sampling, streamed, system=system, conversation=conversation)
        end = time.perf_counter()
        key_times = [float(times[i]) for i in result.selection.key_frames]
        return LiveAnswer(
            question,
            result.answer.text.strip(),
            asked_at,
            snapshot,
            key_times,
            first[0] - start if first else None,
            end - start,
            result,
        )

    # -- state -----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A JSON-ready dict: connection, rates, counters, the window's span; thread-safe."""
        now = time.monotonic()
        snapshot = self.window.snapshot()
        with self._lock:
            stats = dict(self._stats)
        encoded = stats.pop("frames_encoded")
        per_frame = stats.pop("encode_seconds") / encoded if encoded else None
        start, end = snapshot.start, snapshot.end
        return {
            "source": self.source.display,
            "kind": self.source.kind,
            **{k: stats[k] for k in ("connected", "ended", "error")},
            "uptime": round(now - self._origin, 3),
            "fps_in": round(self._read_rate.per_second(now), 2),
            "fps_sampled": round(self._sample_rate.per_second(now), 2),
            "source_fps": round(stats["source_fps"], 3),
            "frames_read": stats["frames_read"],
            "frames_sampled": stats["frames_sampled"],
            "frames_encoded": encoded,
            "frames_dropped": stats["frames_dropped"],
            "frames_refused": stats["frames_refused"],
            "encode_seconds_per_frame": _rounded(per_frame, 4),
            "reconnects": stats["reconnects"],
            "loops": stats["loops"],
            "clock": {"stream": self._clock.stream_frames, "arrival": self._clock.arrival_frames},
            "window": {
                "seconds": self.span,
                "start": _rounded(start),
                "end": _rounded(end),
                "span": round(end - start, 3) if start is not None and end is not None else 0.0,
                "frames": snapshot.num_frames,
                "bytes": sum(e.nbytes for e in snapshot.entries),
            },
        }

    @property
    def ended(self) -> bool:
        """The source is over (a file played to its end, or reconnecting gave up) and every frame encoded."""
        return self._encoding_done.is_set()

    def wait_for_frames(self, count: int, timeout: float) -> bool:
        """Wait until the window holds ``count`` frames (True) or ``timeout`` seconds pass or it ended."""
        deadline = time.monotonic() + timeout
        while len(self.window) < count:
            if self.ended or self._stop.is_set() or time.monotonic() >= deadline:
                return len(self.window) >= count
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop reading and encoding; waits for both threads (bounded by the timeouts); idempotent."""
        self._stop.set()
        limit = (OPEN_TIMEOUT_MS + READ_TIMEOUT_MS) / 1000.0 + 5.0
        for thread in (self._reader, self._encoder):
            if thread is not threading.current_thread():
                thread.join(limit)
                if thread.is_alive():
                    log.warning("%s still running after %.0f s", thread.name, limit)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads ---------------------------------------------------------------------------------------------
    def _guard(self, work: Callable[[], None]) -> None:
        try:
            work()
        except DfrtError as e:
            self._fail(str(e))
        except Exception as e:  # a bug: keep the traceback in the log, the message in status()
            log.exception("%s failed", threading.current_thread().name)
            self._fail(f"internal error: {type(e).__name__}: {e}")
        finally:
            if threading.current_thread() is self._encoder:
                self._encoding_done.set()

    def _fail(self, message: str) -> None:
        log.warning("%s: %s", self.source.display, message)
        with self._lock:
            self._stats.update(error=message, ended=True, connected=False)
        self._stop.set()

    def _read(self) -> None:
        failures = 0
        next_sample = -math.inf
        size = self.pipe.visual.frame_size
        while not self._stop.is_set():
            refused = None
            try:
                capture = open_capture(self.source)
            except InputError as e:  # an absurd frame size: a file is refused, a live source retried
                if self.source.kind == "file":
                    raise
                capture, refused = None, str(e)
            if capture is None:
                failures += 1
                message = refused or f"cannot open {self.source.display}"
                with self._lock:
                    self._stats["error"] = message
                if self.source.kind == "file" or (
                    self.reconnect.attempts is not None and failures > self.reconnect.attempts
                ):
                    raise InputError(f"{message} ({failures} attempts)")
                self._stop.wait(self.reconnect.delay(failures))
                continue
            failures = 0
            self._clock.reset()
            with self._lock:
                self._stats.update(connected=True, error=None, source_fps=reported_fps(capture))
            try:
                next_sample = self._read_frames(capture, next_sample, size)
            finally:
                capture.release()
                with self._lock:
                    self._stats["connected"] = False
            if self._stop.is_set():
                break
            if self.source.kind == "file":
                if not self.loop:
                    break
                with self._lock:
                    self._stats["loops"] += 1
                continue
            with self._lock:
                self._stats["reconnects"] += 1
            log.info("%s: stream dropped, reconnecting", self.source.display)
            self._stop.wait(self.reconnect.delay(1))
        with self._lock:
            self._stats["ended"] = True

    def _read_frames(self, capture: cv2.VideoCapture, next_sample: float, size: int) -> float:
        """Read until the stream ends or drops; returns the next sampling time."""
        interval = 1.0 / self.fps
        paced_from: tuple[float, float] | None = None  # (stream seconds, monotonic) for --realtime files
        while not self._stop.is_set() and capture.grab():
            position = capture.get(cv2.CAP_PROP_POS_MSEC)
            if self.realtime and self.source.kind == "file" and math.isfinite(position):
                if paced_from is None:
                    paced_from = (position / 1000.0, time.monotonic())
                delay = paced_from[1] + position / 1000.0 - paced_from[0] - time.monotonic()
                if delay > 0 and self._stop.wait(min(delay, 10.0)):
                    break
            arrival = time.monotonic()
            stamp = self._clock.stamp(position, arrival)
            self._read_rate.tick(arrival)
            with self._lock:
                self._stats["frames_read"] += 1
            if stamp + 1e-6 < next_sample:
                continue
            rgb = self._convert(capture, size)
            if rgb is None:
                continue
            # the next sample one interval on; after a gap (or at the start), one interval after this frame
            if next_sample == -math.inf or stamp - next_sample > interval:
                next_sample = stamp
            next_sample += interval
            self._sample_rate.tick(arrival)
            with self._lock:
                self._stats["frames_sampled"] += 1
            self._offer((stamp, time.time(), rgb))
        return next_sample

    def _convert(self, capture: cv2.VideoCapture, size: int) -> np.ndarray | None:
        """The grabbed frame decoded and shrunk, or None (counted) when it cannot be used: a hostile or
        damaged stream's frame is skipped, the stream read on."""
        try:
            ok, frame = capture.retrieve()
            if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
                raise InputError("not a 3-channel frame")
            options.frame_size(frame.shape[1], frame.shape[0], self.source.display)
            return to_rgb(frame, size)
        except (InputError, cv2.error, ValueError, ArithmeticError) as e:
            with self._lock:
                self._stats["frames_refused"] += 1
            log.debug("%s: frame skipped (%s)", self.source.display, e)
            return None

    def _offer(self, item: tuple[float, float, np.ndarray]) -> None:
        if not self._paced:  # a file read at the encoder's pace: wait, drop nothing
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue
            return
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        dropped = 0
        try:
            self._queue.get_nowait()  # the oldest waiting frame gives way to the newest
            dropped += 1
        except queue.Empty:
            pass
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            dropped += 1
        with self._lock:
            self._stats["frames_dropped"] += dropped

    def _encode(self) -> None:
        visual = self.pipe.visual
        while True:
            try:
                items = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                if self._stop.is_set() or not self._reader.is_alive():
                    return
                continue
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            start = time.perf_counter()
            if self.pipe.closed:
                raise BackendError("pipeline is closed")
            for run in _same_shape_runs(items):  # a stream that changed resolution: one stack per size
                with self._graph_lock:
                    states = visual.live_frames(np.stack([frame for _, _, frame in run]))
                for (stamp, wall, frame), state in zip(run, states, strict=True):
                    self.window.add(FrameEntry(stamp, wall, state, thumbnail(frame)))
            with self._lock:
                self._stats["frames_encoded"] += len(items)
                self._stats["encode_seconds"] += time.perf_counter() - start


def pipe_watch(pipe: Pipeline, source: str | int | Path, **kwargs: Any) -> Watcher:
    """A :class:`Watcher` of ``source`` answering through ``pipe`` (keywords as :class:`Watcher`)."""
    return Watcher(pipe, source, **kwargs)


def _same_shape_runs(
    items: list[tuple[float, float, np.ndarray]],
) -> list[list[tuple[float, float, np.ndarray]]]:
    """``items`` in order, cut where the frame shape changes."""
    runs: list[list[tuple[float, float, np.ndarray]]] = []
    for item in items:
        if runs and runs[-1][-1][2].shape == item[2].shape:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
