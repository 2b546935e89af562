"""The pipeline the Ray ingress serves with: the same calls as :class:`~dfrt.runtime.pipeline.Pipeline`
(what :class:`~dfrt.serve.engine.Engine` uses), each a call to a visual-encoder or LLM replica.

A replica that dies mid-call (killed, its node gone) is retried on another (:data:`RETRIES`); Serve starts
a replacement meanwhile. A streamed answer cut off mid-way is asked again and the text already sent is
skipped, if the new answer begins with it (greedy or seeded sampling answers the same); otherwise the
request fails with one error line. An error raised in a replica (a video that does not decode) arrives
here as that same :class:`~dfrt.errors.DfrtError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfrt.errors import BackendError, DfrtError
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.conversation import Conversation
from dfrt.runtime.generate import Answer, SamplingConfig, sampling_config
from dfrt.runtime.pipeline import InferenceResult, Video
from dfrt.runtime.visual import VisualResult
from dfrt.serve.errors import ApiError

log = logging.getLogger(__name__)
RETRIES = 4  # a call is tried again this often when its replica dies
RETRY_PAUSE = 0.5  # seconds before a retry, doubled each time (Serve is starting a replacement)


class RemotePipeline:
    """:class:`~dfrt.runtime.pipeline.Pipeline`'s serving surface over Ray Serve deployment handles."""

    def __init__(
        self,
        bundle: Bundle,
        encoder: Any,
        llm: Any,
        max_video_bytes: int = 64 << 20,
        call_timeout: float = 300.0,
    ) -> None:
        """``max_video_bytes``: the largest video sent to an encoder (``--max-body-mb``; local files too).
        ``call_timeout``: seconds one encoder call may take (the request's ``--timeout``): a replica that
        hangs without dying frees the ingress's worker then."""
        self.bundle = bundle
        self.max_video_bytes = max_video_bytes
        self.call_timeout = call_timeout
        self.encoder, self.llm = encoder, llm
        self.generator = _RemotePrompt(self)
        self.closed = False
        self._described: dict[str, Any] | None = None  # asked of an encoder at first use (not on the loop)
        self._describing = threading.Lock()

    def _describe(self) -> dict[str, Any]:
        with self._describing:
            if self._described is None:
                self._described = self._call(self.encoder.describe)
            return self._described

    @property
    def backend(self) -> str:
        return str(self._describe()["backend"])

    @property
    def precision(self) -> str:
        return str(self._describe()["precision"])

    @property
    def providers(self) -> dict[str, str]:
        return dict(self._describe()["providers"])

    @property
    def config(self) -> Any:
        return self.bundle.manifest.config

    @property
    def manifest(self) -> Any:
        return self.bundle.manifest

    def load_video(
        self, path: str | Path, fps: float, max_frames: int, visual_tokens: int | None = None
    ) -> Video:
        """Decode and encode on an encoder replica; the file's bytes travel (at most ``max_video_bytes``)."""
        path = Path(path)
        with open(path, "rb") as handle:  # bounded: a local --media-path file may be any size
            data = handle.read(self.max_video_bytes + 1)
        if len(data) > self.max_video_bytes:
            raise ApiError(
                413,
                f"the video is over {self.max_video_bytes} bytes, the most a Ray server sends to an encoder "
                "(--max-body-mb)",
                code="request_too_large",
            )
        video: Video = self._call(self.encoder.load_video, data, path.suffix, fps, max_frames, visual_tokens)
        return video

    def ask(
        self,
        video: Video,
        question: str,
        sampling: SamplingConfig | None = None,
        on_text: Callable[[str], None] | None = None,
        on_visual: Callable[[VisualResult], None] | None = None,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> InferenceResult:
        visual: VisualResult = self._call(self.encoder.embed, video, question)
        if on_visual is not None:
            on_visual(visual)
        answer = self._answer(question, visual, sampling_config(sampling), on_text, system, conversation)
        timings = {
            **video.timings,
            **visual.timings,
            "llm_prefill": answer.prefill_seconds,
            "llm_first_token": answer.first_token_seconds,
        }
        return InferenceResult(answer, video, visual, timings)

    def close(self) -> None:
        self.closed = True  # the replicas belong to Serve: they stop with the application

    # -- calls to replicas ----------------------------------------------------------------------------------
    def _call(self, method: Any, *args: Any) -> Any:
        """``method.remote(*args)``'s result, retried when the replica dies."""
        for attempt in range(RETRIES + 1):
            try:
                return method.remote(*args).result(timeout_s=self.call_timeout)
            except Exception as e:
                _raise_dfrt(e)
                if isinstance(e, TimeoutError):  # Ray's GetTimeoutError is one
                    raise BackendError(f"a Ray replica did not answer within {self.call_timeout:g} s") from e
                if not _replica_lost(e) or attempt == RETRIES:
                    raise BackendError(f"a Ray replica failed: {_one_line(e)}") from e
                log.warning("a replica died (%s); retrying", _one_line(e))
                time.sleep(RETRY_PAUSE * 2**attempt)
        raise AssertionError("unreachable")

    def _answer(
        self,
        question: str,
        visual: VisualResult,
        sampling: SamplingConfig,
        on_text: Callable[[str], None] | None,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> Answer:
        sent = ""  # text already handed to on_text, over every attempt
        for attempt in range(RETRIES + 1):
            text = ""
            stream = self.llm.options(stream=True).answer.remote(
                question, visual.prompt, sampling, system, conversation
            )
            try:
                for kind, value in stream:
                    if kind == "answer":
                        if not value.text.startswith(sent):
                            raise _differs()
                        return value  # type: ignore[no-any-return]
                    text += value
                    if len(text) <= len(sent):  # replaying what was sent: it must be the same text
                        if not sent.startswith(text):
                            raise _differs()
                        continue
                    if not text.startswith(sent):
                        raise _differs()
                    new, sent = text[len(sent) :], text
                    if on_text is not None:
                        on_text(new)
            except Exception as e:
                stream.cancel()
                _raise_dfrt(e)
                if not _is_ray_error(e):
                    raise  # the caller's own, from on_text (cancelled, a stop string)
                if not _replica_lost(e) or attempt == RETRIES:
                    raise BackendError(f"the LLM replica failed: {_one_line(e)}") from e
                log.warning("an LLM replica died mid-answer (%s); asking again", _one_line(e))
                time.sleep(RETRY_PAUSE * 2**attempt)
            except BaseException:
                stream.cancel()
                raise
        raise BackendError("the LLM stream ended without an answer")


def _differs() -> BackendError:
    return BackendError(
        "the LLM replica died mid-answer and the retried answer differs from what was already sent "
        "(sampling is not reproducible); ask again"
    )


class _RemotePrompt:
    """``pipe.generator.prompt_ids`` for the engine's stop strings, asked of an LLM replica."""

    def __init__(self, pipe: RemotePipeline) -> None:
        self._pipe = pipe

    def prompt_ids(self, question: str) -> tuple[list[int], list[int]]:
        ids: tuple[list[int], list[int]] = self._pipe._call(self._pipe.llm.prompt_ids, question)
        return ids


def _is_ray_error(error: BaseException) -> bool:
    from ray.exceptions import RayError

    return isinstance(error, RayError)


def _replica_lost(error: BaseException) -> bool:
    """The replica (or its node) is gone: worth another replica's try."""
    from ray import exceptions

    lost: tuple[type[BaseException], ...] = (exceptions.RayActorError, exceptions.ActorUnavailableError)
    lost += tuple(
        getattr(exceptions, name)
        for name in ("NodeDiedError", "ObjectLostError")
        if hasattr(exceptions, name)
    )
    return isinstance(error, lost)


def _raise_dfrt(error: BaseException) -> None:
    """A :class:`DfrtError` raised inside a replica, re-raised here as itself (one line, its status)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, DfrtError):
        raise cause from None
    if isinstance(error, DfrtError) and not _is_ray_error(error):
        raise error


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return " ".join((lines[0] if lines else type(error).__name__).split())[:300]
