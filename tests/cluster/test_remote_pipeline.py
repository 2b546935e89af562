"""The Ray ingress's pipeline without a cluster: replicas faked at the handle, so a replica dying at a chosen
moment is certain. A streamed answer cut off is asked again and only the new text is passed on; a retried
answer that differs fails in one line; a replica's own DfrtError arrives as itself; videos are bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray_exceptions = pytest.importorskip("ray.exceptions")

from dfrt.cluster import remote  # noqa: E402
from dfrt.cluster.remote import RemotePipeline  # noqa: E402
from dfrt.errors import BackendError, InputError  # noqa: E402
from dfrt.runtime.generate import Answer  # noqa: E402
from dfrt.serve.errors import ApiError  # noqa: E402

ANSWER = Answer("Hello there", 10, 0, 4, 3, "eos", 0.01, 0.02, 100.0)


class _Stream:
    """A DeploymentResponseGenerator stand-in: yields items, raising an exception where one is given."""

    def __init__(self, items: list[Any]) -> None:
        self.items, self.cancelled = items, False

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """``handle.options(stream=True).answer.remote(...)`` returning the next scripted stream."""

    def __init__(self, streams: list[list[Any]]) -> None:
        self.streams = [_Stream(items) for items in streams]
        self.calls = 0
        self.answer = self

    def options(self, **kwargs: Any) -> _Handle:
        return self

    def remote(self, *args: Any) -> _Stream:
        self.calls += 1
        return self.streams[self.calls - 1]


class _Visual:
    embeds = np.zeros((4, 8), dtype=np.float32)
    prompt = embeds  # what the LLM replica is sent (a VisualPrompt in the real pipeline)


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(remote, "RETRY_PAUSE", 0.0)


def _pipe(llm: Any = None, max_video_bytes: int = 1 << 20) -> RemotePipeline:
    return RemotePipeline(None, encoder=None, llm=llm, max_video_bytes=max_video_bytes)  # type: ignore[arg-type]


def test_a_stream_cut_off_is_asked_again_and_continues_where_it_stopped():
    died = ray_exceptions.ActorDiedError()
    llm = _Handle([
        [("text", "Hel"), ("text", "lo "), died],
        [("text", "Hello"), ("text", " there"), ("answer", ANSWER)],
    ])  # fmt: skip
    seen: list[str] = []
    answer = _pipe(llm)._answer("q?", _Visual(), None, seen.append)  # type: ignore[arg-type]
    assert answer is ANSWER and llm.calls == 2
    assert "".join(seen) == "Hello there" and seen == ["Hel", "lo ", "there"]
    assert llm.streams[0].cancelled


def test_a_retried_answer_that_differs_is_one_error():
    llm = _Handle([
        [("text", "Hello"), ray_exceptions.ActorUnavailableError("gone", None)],
        [("text", "Goodbye"), ("answer", ANSWER)],
    ])  # fmt: skip
    with pytest.raises(BackendError, match="retried answer differs"):
        _pipe(llm)._answer("q?", _Visual(), None, lambda text: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("retried", ["Hi", "Hello"])
def test_a_shorter_retry_that_does_not_match_what_was_sent_is_one_error(retried):
    """The client has "Hello wor"; the retry answers "Hi" (its replay differs) or "Hello" (its answer ends
    short of what was sent): neither may pass."""
    llm = _Handle([
        [("text", "Hello wor"), ray_exceptions.ActorDiedError()],
        [("text", retried), ("answer", Answer(retried, 10, 0, 4, 1, "eos", 0.0, 0.0, 1.0))],
    ])  # fmt: skip
    with pytest.raises(BackendError, match="retried answer differs"):
        _pipe(llm)._answer("q?", _Visual(), None, lambda text: None)  # type: ignore[arg-type]


def test_a_replica_that_keeps_dying_ends_in_one_error():
    llm = _Handle([[ray_exceptions.ActorDiedError()] for _ in range(remote.RETRIES + 1)])
    with pytest.raises(BackendError, match="the LLM replica failed"):
        _pipe(llm)._answer("q?", _Visual(), None, None)  # type: ignore[arg-type]
    assert llm.calls == remote.RETRIES + 1


def test_the_callers_own_exception_stops_the_stream_without_a_retry():
    llm = _Handle([[("text", "Hel"), ("text", "lo"), ("answer", ANSWER)]])

    class Gone(Exception):
        pass

    def on_text(text: str) -> None:
        raise Gone

    with pytest.raises(Gone):
        _pipe(llm)._answer("q?", _Visual(), None, on_text)  # type: ignore[arg-type]
    assert llm.calls == 1 and llm.streams[0].cancelled


def test_a_replicas_dfrt_error_arrives_as_itself():
    class _Call:
        def remote(self, *args: Any) -> Any:
            return self

        def result(self, timeout_s: float | None = None) -> Any:
            error = ray_exceptions.RayTaskError("load_video", "Traceback ...", InputError("not a video"))
            raise error.as_instanceof_cause()

    with pytest.raises(InputError, match=r"^not a video$"):
        _pipe()._call(_Call())


def test_a_video_over_the_limit_is_refused_before_it_travels(tmp_path: Path):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ApiError) as refused:
        _pipe(max_video_bytes=1024).load_video(big, 1.0, 16)
    assert refused.value.status == 413 and "--max-body-mb" in refused.value.message
