"""The Ray Serve replicas of ``dfrt serve --ray``: the visual encoder and the LLM, each its own deployment.

Plain classes (:mod:`dfrt.cluster.serve` turns them into deployments with their replica counts and
reservations), so they import without Ray. A :class:`VisualEncoder` decodes a video sent as bytes (the
ingress's temporary files are not on this node) and encodes what does not depend on the question, then
each question's embeddings; a :class:`LanguageModel` streams an answer about given embeddings. Both hold
one pipeline or model whose lock serialises their calls; Serve routes further requests to other replicas.
Each closes its native handles in ``__del__``, which Serve calls when it stops a replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import re
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfrt.errors import DfrtError
from dfrt.runtime.conversation import Conversation
from dfrt.runtime.generate import Generator, SamplingConfig, VisualPrompt
from dfrt.runtime.pipeline import Pipeline, Video, open_llm
from dfrt.runtime.visual import VisualResult

log = logging.getLogger(__name__)
SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}", re.ASCII)
END = object()  # the generation thread's last queue item


@dataclass(frozen=True)
class ModelSettings:
    """What every replica opens: the bundle (None: the one dfrt infer would use), an LLM, backend."""

    bundle: Path | None = None
    llm: Path | None = None
    backend: str = "auto"
    precision: str | None = None
    ctx: int | None = None
    threads: int | None = None  # CPU threads of the graphs and the LLM (None: their defaults)
    selection: str | None = None  # key frames of open-VLM bundles

    def bundle_path(self) -> Path:
        from dfrt.runtime.default_bundle import resolve_bundle

        return Path(resolve_bundle(self.bundle, lambda message: log.info("%s", message)))


class VisualEncoder:
    """Decodes videos and computes their visual embeddings (a pipeline without its LLM)."""

    def __init__(self, settings: ModelSettings) -> None:
        self.pipe = Pipeline(
            settings.bundle_path(),
            backend=settings.backend,
            precision=settings.precision,
            threads=settings.threads,
            with_llm=False,
            selection=settings.selection,
        )

    def describe(self) -> dict[str, Any]:
        """The backend, precision and per-graph providers this replica runs."""
        pipe = self.pipe
        return {"backend": pipe.backend, "precision": pipe.precision, "providers": pipe.providers}

    def load_video(
        self, data: bytes, suffix: str, fps: float, max_frames: int, visual_tokens: int | None
    ) -> Video:
        """Decode ``data`` (a video file's bytes) and encode its frames; the path is not reported."""
        suffix = suffix if SUFFIX.fullmatch(suffix) else ".mp4"
        with tempfile.NamedTemporaryFile(prefix="dfrt-video-", suffix=suffix) as handle:
            handle.write(data)
            handle.flush()
            try:
                video = self.pipe.load_video(handle.name, fps, max_frames, visual_tokens)
            except DfrtError as e:  # the message names this replica's temporary file: name the video instead
                e.args = tuple(str(a).replace(handle.name, "the video") for a in e.args)
                raise
        # the pixels stay here: what travels back is the features (the frame count is kept in the shape)
        frames = np.zeros((video.sampled.num_frames, 1, 1, 3), dtype=np.uint8)
        sampled = dataclasses.replace(video.sampled, frames=frames, path=Path("video"))
        return dataclasses.replace(video, sampled=sampled)

    def embed(self, video: Video, question: str) -> VisualResult:
        return self.pipe.embed(video, question)

    def __del__(self) -> None:
        pipe = getattr(self, "pipe", None)
        if pipe is not None:
            pipe.close()


class LanguageModel:
    """The bundle's GGUF LLM behind its prompt template; streams answers."""

    def __init__(self, settings: ModelSettings) -> None:
        from dfrt.runtime.bundle import Bundle

        bundle = Bundle.open(settings.bundle_path())
        self.llm = open_llm(bundle, settings.llm, settings.ctx, settings.threads)
        tokenizer = None if bundle.has_question_tokenizer else bundle.prompt_tokenizer
        self.generator = Generator(self.llm, bundle.manifest.prompt, tokenizer)

    def prompt_ids(self, question: str) -> tuple[list[int], list[int]]:
        return self.generator.prompt_ids(question)

    async def answer(
        self,
        question: str,
        embeds: np.ndarray | VisualPrompt,
        sampling: SamplingConfig,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """``("text", piece)`` as the answer streams, then ``("answer", Answer)``. The generation runs in a
        thread of its own; when the stream is cancelled (the client went away, a stop string), the
        ``finally`` below runs and the generation stops at its next token, freeing the model for the next
        request. (A sync generator would not do: Serve drains it in a thread that a cancel does not stop.)"""
        pieces: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()

        def on_text(piece: str) -> None:
            if stop.is_set():
                raise _Stopped
            pieces.put(("text", piece))

        def generate() -> None:
            try:
                answer = self.generator.answer(question, embeds, sampling, on_text, system, conversation)
                pieces.put(("answer", answer))
            except _Stopped:
                pass
            except BaseException as e:  # handed to the stream
                pieces.put(("error", e))
            finally:
                pieces.put(END)

        threading.Thread(target=generate, name="dfrt-llm-answer", daemon=True).start()
        try:
            while (item := await asyncio.to_thread(pieces.get)) is not END:
                if item[0] == "error":
                    raise item[1]
                yield item
        finally:
            stop.set()

    def __del__(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()


class _Stopped(Exception):
    """The stream was closed: generation ends."""
