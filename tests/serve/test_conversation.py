"""Whole conversations, as OpenAI clients send them: earlier turns replay as text, a text-only follow-up about
the video sent earlier is answered (the video from the cache, shown in the turn it was sent in), and what
cannot be replayed is a 400 naming why (through the real server and the openai client, the demo bundle)."""

from __future__ import annotations

import pytest

from dfrt.runtime.conversation import Conversation, Exchange
from tests.serve.conftest import API_KEY, SAMPLES, Server, data_url, sample_question, video_message

openai = pytest.importorskip("openai")

VIDEO = "07-count.mp4"
CLIP = "data:video/mp4;base64,AAAA"
VIDEO_PART = {"type": "video_url", "video_url": {"url": CLIP}}


def _client(server: Server):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def _chat(server: Server, messages: list[dict], **extra: object):  # type: ignore[no-untyped-def]
    return _client(server).chat.completions.create(
        model="demo", messages=messages, max_tokens=8, temperature=0, **extra
    )


def _spy(server: Server, monkeypatch) -> list[object]:  # type: ignore[no-untyped-def]
    seen: list[object] = []
    real = server.engine.pipe.ask  # type: ignore[attr-defined]

    def ask(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("conversation"))
        return real(*args, **kwargs)

    monkeypatch.setattr(server.engine.pipe, "ask", ask)  # type: ignore[attr-defined]
    return seen


def test_a_three_turn_conversation_replays_its_earlier_turns(server: Server, monkeypatch) -> None:
    seen = _spy(server, monkeypatch)
    question = sample_question(VIDEO)
    messages = video_message(data_url(SAMPLES / VIDEO), question)
    first = _chat(server, messages)
    answers = [first.choices[0].message.content or ""]
    usage = [first.usage.prompt_tokens]
    cached = [first.model_extra["dfrt"]["video"]["cached"]]
    for follow_up in ("And how many of them are there?", question):  # text only: the video was sent earlier
        messages += [{"role": "assistant", "content": answers[-1]}, {"role": "user", "content": follow_up}]
        reply = _chat(server, messages)
        answers.append(reply.choices[0].message.content or "")
        usage.append(reply.usage.prompt_tokens)
        cached.append(reply.model_extra["dfrt"]["video"]["cached"])
    assert all(answers), answers
    assert seen == [
        None,
        Conversation((Exchange(question, answers[0]),), 0),
        Conversation(
            (Exchange(question, answers[0]), Exchange("And how many of them are there?", answers[1])), 0
        ),
    ]
    assert usage[0] < usage[1] < usage[2]  # the earlier turns are in the prompt
    assert cached[1:] == [True, True]  # the video sent in the first turn comes from the cache


def test_a_video_in_a_later_turn_is_shown_there(server: Server, monkeypatch) -> None:
    seen = _spy(server, monkeypatch)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "I will show you a clip."},
        {"role": "assistant", "content": "Please do."},
        *video_message(data_url(SAMPLES / VIDEO), sample_question(VIDEO)),
    ]
    assert _chat(server, messages).choices[0].message.content
    assert seen == [Conversation((Exchange("I will show you a clip.", "Please do."),), 1)]


def test_consecutive_messages_of_one_role_are_one_turn(server: Server, monkeypatch) -> None:
    seen = _spy(server, monkeypatch)
    messages = [
        *video_message(data_url(SAMPLES / VIDEO), "First part."),
        {"role": "user", "content": "Second part."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": sample_question(VIDEO)},
    ]
    assert _chat(server, messages).choices[0].message.content
    assert seen == [Conversation((Exchange("First part.\nSecond part.", "Noted."),), 0)]


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        (
            [*video_message(CLIP, "q"), {"role": "assistant", "content": "a"},
             *video_message(CLIP, "q2")],
            "2 videos in the conversation",
        ),
        (
            [{"role": "user", "content": "q"},
             {"role": "assistant", "content": [VIDEO_PART]},
             {"role": "user", "content": "q2"}],
            "a video belongs in a user message",
        ),
        (
            [*video_message(CLIP, "q"), {"role": "assistant", "content": "Once upon"}],
            "the last message must be the user's question",
        ),
        (
            [*video_message(CLIP, "q"), {"role": "tool", "content": "42"}],
            "tool messages are not supported",
        ),
    ],
    ids=["two-videos", "video-from-assistant", "assistant-last", "tool"],
)  # fmt: skip
def test_what_cannot_be_replayed_is_a_400(server: Server, messages: list[dict], words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(server, messages)
    assert words in str(caught.value)
