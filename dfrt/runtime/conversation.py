"""The earlier turns of a conversation, replayed as text before the current question.

OpenAI clients send the whole conversation with every request; the server keeps nothing between requests.
A :class:`Conversation` holds the exchanges before the current question (each user turn's text and the
assistant's answer to it) and which user turn the video was sent in, so the prompt shows the video where
the client put it. Every text is client text: it is tokenized without special tokens, like the question.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfrt.errors import ConfigError

MAX_EXCHANGES = 32  # earlier exchanges replayed (a server accepts at most 64 messages)
MAX_TURN_CHARS = 16_384  # one earlier question or answer


@dataclass(frozen=True)
class Exchange:
    """One earlier user turn's text and the assistant's answer to it."""

    question: str
    answer: str


@dataclass(frozen=True)
class Conversation:
    """The exchanges before the current question, oldest first; ``video_turn``: the user turn the video was
    sent in, from 0 (the first exchange's) to ``len(earlier)`` (the current question's; None says the same).
    Checked on construction (:class:`ConfigError` naming what is wrong)."""

    earlier: tuple[Exchange, ...] = ()
    video_turn: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.earlier, tuple) or not all(isinstance(e, Exchange) for e in self.earlier):
            raise ConfigError("conversation.earlier must be a tuple of Exchange")
        if len(self.earlier) > MAX_EXCHANGES:
            raise ConfigError(
                f"the conversation has {len(self.earlier)} earlier exchanges, at most {MAX_EXCHANGES}"
            )
        for i, exchange in enumerate(self.earlier):
            for what in ("question", "answer"):
                text = getattr(exchange, what)
                if not isinstance(text, str) or len(text) > MAX_TURN_CHARS:
                    raise ConfigError(
                        f"conversation turn {i}: its {what} must be text of at most {MAX_TURN_CHARS} "
                        "characters"
                    )
        turn = self.video_turn
        if turn is not None and (
            not isinstance(turn, int) or isinstance(turn, bool) or not 0 <= turn <= len(self.earlier)
        ):
            raise ConfigError(
                f"conversation.video_turn must be a user turn from 0 to {len(self.earlier)}, got {turn!r:.40}"
            )

    @property
    def video_at(self) -> int:
        """The user turn holding the video (``len(earlier)``: the current question's)."""
        return len(self.earlier) if self.video_turn is None else self.video_turn


def conversation(value: object) -> Conversation | None:
    """``value`` checked as an API argument: a :class:`Conversation` or None (an empty one is None)."""
    if value is None:
        return None
    if not isinstance(value, Conversation):
        raise ConfigError(f"conversation must be a Conversation or None, got {type(value).__name__}")
    return value if value.earlier else None


def image_with_question(format_: str, question: str, image: str = "<image>") -> str:
    """The part of a prompt format from ``<image>`` to ``{question}`` (whichever comes first), with
    ``question`` filled in: how the template shows a video beside a question, for a later turn that sends
    one (``<image>\\n`` before it when the format puts other text between them)."""
    at_image, at_question = format_.find(image), format_.find("{question}")
    if at_image < 0 or at_question < 0:
        return f"{image}\n{question}"
    start = min(at_image, at_question)
    end = max(at_image + len(image), at_question + len("{question}"))
    span = format_[start:end]
    if span.count("{") != 1 or span.count("}") != 1:  # another field or a literal brace in between
        return f"{image}\n{question}"
    return span.replace("{question}", question)
