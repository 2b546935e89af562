"""Parsing and validating a chat-completions request into a :class:`ChatRequest` (no web framework here).

Accepted (OpenAI's names): ``model``, ``messages`` (the last message is the user's question; the user and
assistant messages before it are earlier turns, replayed as text; exactly one video in the conversation, in
a user message, shown in the turn it was sent in; system and developer messages are the system text, placed
where the model's prompt puts one), ``stream``, ``stream_options.include_usage``, ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p``, ``seed``, ``stop`` (a string or up to 4), ``n`` (1),
``frequency_penalty``, ``presence_penalty``, ``logit_bias``, and llama-server's ``top_k``, ``min_p``,
``repeat_penalty``, ``repeat_last_n``: every sampling parameter is honoured by llama.cpp's sampler chain or
refused (400 naming it), never silently ignored. dfrt's own knobs go under one ``dfrt`` key: ``fps``,
``max_frames``, ``visual_tokens``. ``user`` and ``metadata`` are accepted and ignored. Every violation is
one :class:`ApiError` naming the parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dfrt.errors import ConfigError
from dfrt.jsonio import parse_json
from dfrt.runtime import options
from dfrt.runtime.conversation import Conversation, Exchange
from dfrt.runtime.defaults import (
    DEFAULT_FPS,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)
from dfrt.runtime.generate import SamplingConfig
from dfrt.serve.errors import ApiError

MAX_MESSAGES = 64
MAX_PARTS = 32  # content parts in one message
MAX_QUESTION_CHARS = 16_384
MAX_STOPS = 4
MAX_STOP_CHARS = 64
MAX_JSON_DEPTH = 16
MAX_JSON_ELEMENTS = 20_000  # values in one body (64 messages of 32 parts are a few thousand)
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
VIDEO_PARTS = ("video_url", "input_video", "image_url", "video")
ROLES = ("system", "developer", "user", "assistant", "tool")
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logprobs", "audio")
# sampling parameters passed to SamplingConfig as they are named (OpenAI's and llama-server's)
SAMPLERS = ("top_k", "min_p", "repeat_penalty", "repeat_last_n", "frequency_penalty", "presence_penalty",
            "logit_bias")  # fmt: skip


@dataclass(frozen=True)
class MediaRef:
    """The one video of a request, as sent: ``kind`` "url" (data:, file:, http(s): or a media path) or
    "data" (base64 with a ``format``); ``image`` when it came as an ``image_url`` (a one-frame video)."""

    kind: str
    value: str
    format: str | None = None
    image: bool = False
    param: str = "messages"


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    question: str
    media: MediaRef
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    fps: float = DEFAULT_FPS
    max_frames: int = DEFAULT_MAX_FRAMES
    visual_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    system: str | None = None  # the system (and developer) messages' text, where the model's prompt puts it
    conversation: Conversation | None = None  # the earlier turns and the user turn the video was sent in


def parse_body(data: bytes) -> dict[str, Any]:
    """The request body as a JSON object: UTF-8, bounded depth and element count (counted before anything
    is parsed: a 60 MB array of numbers is refused in milliseconds, not built), finite numbers, no
    duplicate keys."""
    elements = _elements(data)
    if elements > MAX_JSON_ELEMENTS:
        raise ApiError(
            400, f"the request body holds over {MAX_JSON_ELEMENTS} JSON values ({elements})",
            code="invalid_json",
        )  # fmt: skip
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        value = parse_json(text, "request body", max_depth=MAX_JSON_DEPTH)
    except ConfigError as e:
        raise ApiError(400, str(e), code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_kind(value)}")
    return value


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """Validate a chat-completions body; raises :class:`ApiError` (400) naming the first bad parameter."""
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}):
            raise ApiError(400, f"{name} is not supported by this server", name, "unsupported_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {_kind(model)}", "model")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise ApiError(400, "n must be 1: one answer per request", "n")
    question, media, system, conversation = _messages(body.get("messages"))
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    include_usage = _bool(stream_options, "include_usage", "stream_options.include_usage")
    max_tokens = _default(body, "max_completion_tokens", body.get("max_tokens"))  # null: not given
    sampling = _sampling(
        DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        _default(body, "temperature", DEFAULT_TEMPERATURE),
        _default(body, "top_p", DEFAULT_TOP_P),
        _default(body, "seed", 0),
        {name: body[name] for name in SAMPLERS if body.get(name) is not None},
    )
    knobs = body.get("dfrt") or {}
    if not isinstance(knobs, dict):
        raise ApiError(400, "dfrt must be an object: {fps, max_frames, visual_tokens}", "dfrt")
    unknown = sorted(set(knobs) - {"fps", "max_frames", "visual_tokens"})
    if unknown:
        raise ApiError(400, f"unknown dfrt option {unknown[0]!r} (fps, max_frames, visual_tokens)", "dfrt")
    try:
        fps = options.real("dfrt.fps", _default(knobs, "fps", DEFAULT_FPS), *options.FPS_RANGE)
        max_frames = options.integer(
            "dfrt.max_frames", _default(knobs, "max_frames", DEFAULT_MAX_FRAMES), *options.MAX_FRAMES_RANGE
        )
        budget = knobs.get("visual_tokens")
        if budget is not None:
            budget = options.integer("dfrt.visual_tokens", budget, *options.VISUAL_TOKENS_RANGE)
    except ConfigError as e:
        raise ApiError(400, str(e), str(e).split(" ", 1)[0]) from None
    return ChatRequest(
        model=model,
        question=question,
        system=system,
        conversation=conversation,
        media=media,
        sampling=sampling,
        stop=_stops(body.get("stop")),
        stream=stream,
        include_usage=include_usage,
        fps=fps,
        max_frames=max_frames,
        visual_tokens=budget,
    )


def _messages(messages: object) -> tuple[str, MediaRef, str | None, Conversation | None]:
    """The question, the video, the system text and the earlier turns (consecutive messages of one role are
    one turn, their texts joined by newlines)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array", "messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"{len(messages)} messages: at most {MAX_MESSAGES} are accepted", "messages")
    turns: list[tuple[str, list[str]]] = []  # (role, texts): user and assistant turns, alternating
    media: list[MediaRef] = []
    video_turn = -1
    system: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}, got {role!r:.40}", where)
        if role == "tool":
            raise ApiError(
                400, f"{where}: tool messages are not supported (this server runs no tools)", where
            )
        text, found = _content(message.get("content"), f"{where}.content")
        _check_length(text, f"{where}.content")
        if role in ("system", "developer"):
            if found:
                raise ApiError(400, f"{where}: a video belongs in a user message", found[0].param)
            if text.strip():
                system.append(text)
            continue
        if not turns or turns[-1][0] != role:
            if not turns and role == "assistant":
                turns.append(("user", []))  # an assistant's opening line answers an empty user turn
            turns.append((role, []))
        turns[-1][1].append(text)
        if found:
            if role != "user":
                raise ApiError(400, f"{where}: a video belongs in a user message", found[0].param)
            media.extend(found)
            video_turn = (len(turns) - 1) // 2  # user turns stand at even places
    if not media:
        raise ApiError(
            400, "no video in the request: add a content part video_url, input_video or image_url", "messages"
        )
    if len(media) > 1:
        raise ApiError(
            400, f"{len(media)} videos in the conversation: send exactly one (earlier turns may refer to it)",
            media[1].param,
        )  # fmt: skip
    if not turns or turns[-1][0] != "user":
        raise ApiError(
            400, "the last message must be the user's question (an assistant message cannot be continued)",
            "messages",
        )  # fmt: skip
    texts = ["\n".join(t) for _, t in turns]
    question = texts[-1]
    earlier = tuple(Exchange(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2))
    instructions = "\n\n".join(system) or None
    _check_length(instructions or "", "the system messages")
    conversation = Conversation(earlier, video_turn) if earlier else None
    return question, media[0], instructions, conversation


def _check_length(text: str, what: str) -> None:
    if len(text) > MAX_QUESTION_CHARS:
        raise ApiError(400, f"{what} has {len(text)} characters, at most {MAX_QUESTION_CHARS}", "messages")


def _content(content: object, where: str) -> tuple[str, list[MediaRef]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or an array of content parts", where)
    if len(content) > MAX_PARTS:
        raise ApiError(400, f"{where} has {len(content)} parts, at most {MAX_PARTS}", where)
    texts: list[str] = []
    media: list[MediaRef] = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{here}.text must be a string", here)
            texts.append(text)
        elif kind in VIDEO_PARTS:
            media.append(_media(part, kind, here))
        else:
            shown = repr(kind)[:40] if isinstance(part, dict) else f"a {_kind(part)}"
            raise ApiError(
                400,
                f"{here}: unsupported content part {shown}; use text, video_url, input_video or image_url",
                here,
                "unsupported_content_type",
            )
    return "\n".join(texts), media


def _media(part: dict[str, Any], kind: str, where: str) -> MediaRef:
    inner = part.get(kind)
    if kind in ("video_url", "image_url", "video") and isinstance(inner, str):
        inner = {"url": inner}
    if not isinstance(inner, dict):
        raise ApiError(400, f"{where}.{kind} must be an object", where)
    url, data = inner.get("url"), inner.get("data")
    if (url is None) == (data is None) or (data is not None and kind != "input_video"):
        expected = "url or data" if kind == "input_video" else "url"
        raise ApiError(400, f"{where}.{kind} needs exactly one of: {expected}", where)
    value = url if url is not None else data
    if not isinstance(value, str) or not value:
        raise ApiError(
            400, f"{where}.{kind}: the {'url' if url is not None else 'data'} must be a string", where
        )
    fmt = inner.get("format")
    if fmt is not None and (not isinstance(fmt, str) or len(fmt) > 16):
        raise ApiError(400, f"{where}.{kind}.format must be a short string such as 'mp4'", where)
    return MediaRef("url" if url is not None else "data", value, fmt, kind == "image_url", where)


def _sampling(
    max_tokens: object, temperature: object, top_p: object, seed: object, samplers: dict[str, Any]
) -> SamplingConfig:
    names = {
        "--max-tokens": "max_tokens",
        "--temperature": "temperature",
        "--top-p": "top_p",
        "--seed": "seed",
        "--top-k": "top_k",
        "--min-p": "min_p",
        "--repeat-penalty": "repeat_penalty",
        "--repeat-last-n": "repeat_last_n",
        "--frequency-penalty": "frequency_penalty",
        "--presence-penalty": "presence_penalty",
    }
    if "logit_bias" in samplers and not isinstance(samplers["logit_bias"], dict):
        raise ApiError(400, "logit_bias must be an object mapping token ids to biases", "logit_bias")
    try:
        return SamplingConfig(max_tokens, temperature, top_p, seed, **samplers)  # type: ignore[arg-type]
    except ConfigError as e:
        flag = str(e).split(" ", 1)[0]
        param = names.get(flag, flag)
        raise ApiError(400, str(e).replace(flag, param, 1), param) from None


def _stops(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop must be a string or an array of at most {MAX_STOPS} strings", "stop")
    for s in stops:
        if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
            raise ApiError(400, f"each stop must be a string of 1 to {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


def _bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{param or name} must be true or false, got {_kind(value)}", param or name)
    return value


def _default(body: dict[str, Any], name: str, default: object) -> object:
    value = body.get(name)
    return default if value is None else value


def _elements(data: bytes) -> int:
    """An upper bound of the JSON values in ``data``: separators and openings (fast, in C); where that is
    just over the cap, the same outside strings (a question may hold commas)."""
    count = data.count(b",") + data.count(b"[") + data.count(b"{") + 1
    if count <= MAX_JSON_ELEMENTS or count > 10 * MAX_JSON_ELEMENTS:  # no text holds 200,000 commas
        return count
    bare = _STRINGS.sub(b'""', data)
    return bare.count(b",") + bare.count(b"[") + bare.count(b"{") + 1


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else "null"
    )
