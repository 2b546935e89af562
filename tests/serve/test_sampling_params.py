"""Every sampling parameter a llama-server or OpenAI client sends is honoured or refused with a 400 naming
it, through the real server and the openai client (the demo bundle)."""

from __future__ import annotations

import pytest

from tests.serve.conftest import API_KEY, SAMPLES, Server, data_url, sample_question, video_message

openai = pytest.importorskip("openai")

VIDEO = "04-moved.mp4"


def _client(server: Server):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def _ask(server: Server, **extra: object) -> str:
    messages = video_message(data_url(SAMPLES / VIDEO), sample_question(VIDEO))
    reply = _client(server).chat.completions.create(
        model="demo", messages=messages, max_tokens=4, temperature=0, extra_body=extra or None
    )
    return reply.choices[0].message.content or ""


def test_a_logit_bias_changes_the_answer(server: Server) -> None:
    plain = _ask(server)
    assert plain
    biased = _ask(server, logit_bias={"5": 100})  # one token of the demo LM's vocabulary, forced
    assert biased != plain


def test_penalties_and_llama_server_samplers_are_accepted(server: Server) -> None:
    for extra in ({"frequency_penalty": 1.0}, {"presence_penalty": 1.0}, {"top_k": 1}, {"min_p": 0.5},
                  {"repeat_penalty": 1.3, "repeat_last_n": 8}):  # fmt: skip
        assert _ask(server, **extra)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": "high"}, "presence_penalty"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repeat_penalty": 0}, "repeat_penalty"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"logit_bias": []}, "logit_bias"),
    ],
)
def test_a_bad_value_is_a_400_naming_the_parameter(server: Server, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(server, **extra)
    assert param in str(caught.value)


def test_a_system_message_reaches_the_model(server: Server, monkeypatch) -> None:
    """The system (and developer) messages' text reaches the pipeline's answer, not dropped."""
    seen: list[object] = []
    real = server.engine.pipe.ask  # type: ignore[attr-defined]

    def ask(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("system"))
        return real(*args, **kwargs)

    monkeypatch.setattr(server.engine.pipe, "ask", ask)  # type: ignore[attr-defined]
    messages = [
        {"role": "system", "content": "Answer with one word."},
        {"role": "developer", "content": "Be terse."},
        *video_message(data_url(SAMPLES / "07-count.mp4"), sample_question("07-count.mp4")),
    ]
    reply = _client(server).chat.completions.create(
        model="demo", messages=messages, max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content
    assert seen == ["Answer with one word.\n\nBe terse."]
