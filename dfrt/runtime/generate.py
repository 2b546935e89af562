"""Answer generation: build the prompt, splice the visual embeddings in at ``<image>``, stream the answer.

Prefill decodes the text before ``<image>`` as tokens, then what stands at ``<image>``: one block of N
visual rows (DynFocus), or a :class:`VisualPrompt` whose template text and row blocks alternate (a frame's
timestamp and image markers, then its rows: SmolVLM), then the text after it. Then tokens are sampled one
by one and streamed through a callback (bytes are decoded incrementally, so multi-byte characters are never
split). Text is tokenized by llama.cpp, or by the model's own ``tokenizer.json`` when the bundle carries one
(:class:`~dfrt.runtime.text_tokenizer.PromptTokenizer`, the exact ids its processor gives).
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dfrt.errors import ConfigError, InputError
from dfrt.manifest import PromptTemplate
from dfrt.runtime import options
from dfrt.runtime.conversation import Conversation, image_with_question
from dfrt.runtime.conversation import conversation as checked_conversation
from dfrt.runtime.defaults import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from dfrt.runtime.llm import LlamaModel, render_chat_template
from dfrt.runtime.text import clean_question
from dfrt.runtime.text_tokenizer import PromptTokenizer

IMAGE_MARK = "<image>"


@dataclass(frozen=True)
class SamplingConfig:
    """How answers are sampled; every field is range-checked here (:mod:`dfrt.runtime.options`)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE  # the reference evaluates at 0.1-0.2; 0 = greedy
    top_p: float = DEFAULT_TOP_P
    seed: int = 0  # 0 .. 2**32 - 2: never "random", never wrapped
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repeat_penalty: float = 1.0  # llama.cpp's: 1 = off; over the last ``repeat_last_n`` generated tokens
    frequency_penalty: float = 0.0  # OpenAI's, -2 .. 2
    presence_penalty: float = 0.0  # OpenAI's, -2 .. 2
    repeat_last_n: int = 64
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias -100 .. 100)

    def __post_init__(self) -> None:
        checks = {
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "seed": options.seed,
            "top_k": options.top_k,
            "min_p": options.min_p,
            "repeat_penalty": options.repeat_penalty,
            "frequency_penalty": lambda v: options.openai_penalty("--frequency-penalty", v),
            "presence_penalty": lambda v: options.openai_penalty("--presence-penalty", v),
            "repeat_last_n": options.repeat_last_n,
            "logit_bias": options.logit_bias,
        }
        for name, check in checks.items():
            object.__setattr__(self, name, check(getattr(self, name)))

    @property
    def penalised(self) -> bool:
        return (self.repeat_penalty, self.frequency_penalty, self.presence_penalty) != (1.0, 0.0, 0.0)


def sampling_config(value: object) -> SamplingConfig:
    """``value`` if it is a :class:`SamplingConfig` (None: the defaults), else one :class:`ConfigError`."""
    if value is None:
        return SamplingConfig()
    if not isinstance(value, SamplingConfig):
        raise ConfigError(f"sampling must be a SamplingConfig or None, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class VisualPrompt:
    """What stands at ``<image>``: ``layout`` is ``(template text, rows)`` pairs in order, each text
    followed by that many rows of ``embeds`` (the rows add up to ``embeds.shape[0]``)."""

    embeds: np.ndarray  # (N, D) float32
    layout: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.embeds, np.ndarray) or self.embeds.ndim != 2:
            raise ConfigError("visual embeddings must be a 2-D numpy array (n, width)")
        if sum(rows for _, rows in self.layout) != self.embeds.shape[0] or any(
            rows < 0 for _, rows in self.layout
        ):
            raise ConfigError(
                f"the visual layout's rows do not add up to the {self.embeds.shape[0]} embedding rows"
            )

    @classmethod
    def block(cls, embeds: np.ndarray) -> VisualPrompt:
        """All rows in one block at ``<image>`` (DynFocus)."""
        return cls(embeds, (("", int(embeds.shape[0])),))

    @property
    def num_rows(self) -> int:
        return int(self.embeds.shape[0])


ANSWER_RESERVE = 64  # positions kept free for the answer when a long question has to be cut


@dataclass
class Answer:
    text: str
    prompt_tokens: int  # text tokens around the visual embeddings
    question_tokens_dropped: int  # from the start of a question too long for the context
    visual_tokens: int
    generated_tokens: int
    stop_reason: str  # "eos", "stop", "max_tokens" or "context"
    prefill_seconds: float
    first_token_seconds: float  # from the start of prefill
    decode_tokens_per_second: float


QUESTION_MARK = "\ue000"  # a private-use character standing in for the question while the template renders
SYSTEM_MARK = "\ue001"  # the same for a client's system message
TURN_MARKS = 0xE100  # the same for earlier turns: question i at +2i, its answer at +2i+1
_RESERVED = re.compile("[\ue000-\ue1ff]")  # no client text holds a mark


@dataclass(frozen=True)
class Prompt:
    """The prompt as pieces: template text (may hold special tokens) and the user's question (may not)."""

    before_image: list[tuple[str, bool]]  # (text, is_template)
    after_image: list[tuple[str, bool]]


def _user_text(text: str) -> str:
    """A client's text, cleaned, with nothing that could stand for a placeholder."""
    return clean_question(_RESERVED.sub(" ", text.replace(IMAGE_MARK, " "))).strip()


def build_prompt(
    template: PromptTemplate,
    question: str,
    llm: LlamaModel,
    with_image: bool = True,
    system: str | None = None,
    conversation: Conversation | None = None,
) -> Prompt:
    """Render the template around ``<image>`` and the question. ``template.name == "gguf"``: the GGUF's own
    chat template. Without an image the placeholder line is left out and everything is ``before_image``.

    ``system``: a client's system message, where the template puts one (the chat template's system turn;
    a format's ``{system}``, replacing its own system text); a format without ``{system}`` (SmolVLM,
    InternVL) gets it at the start of the first user turn, before the question, as chat templates without a
    system role do. ``conversation``: earlier exchanges, replayed before the question (the chat template's
    user and assistant turns; a format's ``turn``), the video in the user turn it was sent in."""
    earlier = conversation.earlier if conversation is not None else ()
    video_at = conversation.video_at if conversation is not None else 0
    texts = {QUESTION_MARK: _user_text(question), SYSTEM_MARK: _user_text(system) if system else ""}
    asks, answers = [], []
    for i, exchange in enumerate(earlier):
        asks.append(chr(TURN_MARKS + 2 * i))
        answers.append(chr(TURN_MARKS + 2 * i + 1))
        texts[asks[-1]], texts[answers[-1]] = _user_text(exchange.question), _user_text(exchange.answer)
    asks.append(QUESTION_MARK)
    if template.name == "gguf":
        text = _render_chat(llm, asks, answers, video_at if with_image else -1, bool(system))
    else:
        text = _render_format(template, asks, answers, video_at, bool(system))
        if not with_image:
            text = text.replace(f"{IMAGE_MARK}\n", "").replace(IMAGE_MARK, "")
    before, mark, after = text.partition(IMAGE_MARK)
    if with_image and not mark:
        raise ConfigError(f"prompt template {template.name!r} has no {IMAGE_MARK} placeholder")
    return Prompt(_pieces(before, texts), _pieces(after, texts))


def _render_chat(llm: LlamaModel, asks: list[str], answers: list[str], video_at: int, system: bool) -> str:
    """The GGUF's chat template over marks: system, then user and assistant turns, the video's user turn
    opening with ``<image>``."""
    chat_template = llm.metadata.get("tokenizer.chat_template")
    if not chat_template:
        raise ConfigError(f"{llm.path.name} has no chat template; export the bundle with a prompt template")
    messages = [{"role": "system", "content": SYSTEM_MARK}] if system else []
    for i, ask in enumerate(asks):
        messages.append({"role": "user", "content": f"{IMAGE_MARK}\n{ask}" if i == video_at else ask})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return render_chat_template(chat_template, messages, bos="", eos="", source=llm.path.name)


def _render_format(
    template: PromptTemplate, asks: list[str], answers: list[str], video_at: int, system: bool
) -> str:
    """A format template over marks: its first user turn, then ``turn`` per earlier answer and later
    question, ``<image>`` in the user turn the video was sent in."""
    turn = template.turn_format
    if answers and turn is None:
        raise ConfigError(
            f"prompt template {template.name!r} cannot replay earlier turns (it names no turn format): "
            "send the question alone, or re-export the bundle with a newer dfrt"
        )
    first = f"{SYSTEM_MARK}\n\n{asks[0]}" if system and "{system}" not in template.format else asks[0]
    if "{system}" in template.format:
        text = template.format.format(system=SYSTEM_MARK if system else template.system, question=first)
    else:
        text = template.format.format(question=first)
    if video_at != 0:
        text = text.replace(f"{IMAGE_MARK}\n", "").replace(IMAGE_MARK, "")
    for i, answer in enumerate(answers):
        ask = asks[i + 1]
        if i + 1 == video_at:
            ask = image_with_question(template.format, ask, IMAGE_MARK)
        text += turn.format(answer=answer, question=ask)  # type: ignore[union-attr]
    return text


def _pieces(text: str, texts: dict[str, str]) -> list[tuple[str, bool]]:
    """Template text cut at the marks: ``(text, True)`` template pieces, ``(client text, False)``."""
    pieces: list[tuple[str, bool]] = []
    for part in re.split(f"([{''.join(texts)}])", text):
        if part in texts:
            pieces.append((texts[part], False))
        elif part:
            pieces.append((part, True))
    return pieces


def _row_blocks(visual: VisualPrompt) -> list[np.ndarray]:
    """The non-empty row blocks of ``visual``, in order."""
    blocks, at = [], 0
    for _, rows in visual.layout:
        if rows:
            blocks.append(visual.embeds[at : at + rows])
            at += rows
    return blocks


def _truncate_question_left(
    before: list[tuple[list[int], bool]], after: list[tuple[list[int], bool]], room: int
) -> int:
    """Drop tokens from the start of the question until the prompt fits ``room`` positions, as the reference
    truncates questions on the left; returns how many were dropped. Template tokens are never cut."""
    pieces = before + after
    excess = sum(len(ids) for ids, _ in pieces) - room
    dropped = 0
    for ids, is_question in pieces:
        if excess <= 0 or not is_question:
            continue
        cut = min(excess, len(ids))
        del ids[:cut]
        excess -= cut
        dropped += cut
    return dropped


class Generator:
    """Generates answers with one loaded :class:`LlamaModel`; reusable across questions."""

    def __init__(
        self, llm: LlamaModel, template: PromptTemplate, tokenizer: PromptTokenizer | None = None
    ) -> None:
        """``tokenizer``: the model's own (its ids are fed to llama.cpp); None: llama.cpp's."""
        self.llm = llm
        self.template = template
        self.tokenizer = tokenizer

    def answer(
        self,
        question: str,
        visual: np.ndarray | VisualPrompt | None,
        sampling: SamplingConfig | None = None,
        on_text: Callable[[str], None] | None = None,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> Answer:
        """Answer ``question`` with ``visual`` rows spliced in at ``<image>``; holds the model's lock
        throughout, so answers from several threads queue instead of interleaving in one context.
        ``system``: a client's system message; ``conversation``: earlier exchanges replayed before the
        question (:func:`build_prompt` says where each goes).

        Cancelling: ``on_text`` may raise any exception to stop the answer at that token; it propagates to
        the caller after the sampler is freed, and the next answer starts from a reset context."""
        question = options.question(question)
        if system is not None and system != "":
            system = options.question(system)
        sampling = sampling_config(sampling)
        options.callback("on_text", on_text)
        conversation = checked_conversation(conversation)
        if isinstance(visual, np.ndarray):
            if visual.ndim != 2:
                raise ConfigError(
                    f"visual embeddings must be a 2-D numpy array (n, width), got {visual.shape}"
                )
            visual = VisualPrompt.block(visual)
        elif visual is not None and not isinstance(visual, VisualPrompt):
            raise ConfigError(
                f"visual embeddings must be a numpy array or a VisualPrompt, got {type(visual).__name__}"
            )
        with self.llm.lock:
            return self._answer(question, visual, sampling, on_text, system or None, conversation)

    def _stretches(
        self,
        question: str,
        visual: VisualPrompt | None,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> list[list[tuple[list[int], bool]]]:
        """The prompt's token chunks ``(ids, is_client_text)`` between the visual blocks, in order: one
        stretch more than there are non-empty blocks."""
        prompt = build_prompt(self.template, question, self.llm, visual is not None, system, conversation)
        layout = visual.layout if visual is not None else ()
        stretches: list[list[tuple[str, bool]]] = [list(prompt.before_image)]
        for text, rows in layout:
            if text:
                stretches[-1].append((text, True))
            if rows:
                stretches.append([])
        stretches[-1] += prompt.after_image
        return [
            self._tokenize(pieces, add_bos=self.llm.adds_bos and i == 0) for i, pieces in enumerate(stretches)
        ]

    def _answer(
        self,
        question: str,
        visual: VisualPrompt | None,
        sampling: SamplingConfig,
        on_text: Callable[[str], None] | None,
        system: str | None = None,
        conversation: Conversation | None = None,
    ) -> Answer:
        llm = self.llm
        stretches = self._stretches(question, visual, system, conversation)
        n_visual = 0 if visual is None else visual.num_rows
        room = llm.n_ctx - n_visual - 1 - min(sampling.max_tokens, ANSWER_RESERVE)
        dropped = _truncate_question_left([chunk for s in stretches for chunk in s], [], room)
        stretch_ids = [[t for ids, _ in s for t in ids] for s in stretches]
        text_tokens = sum(len(ids) for ids in stretch_ids)
        needed = text_tokens + n_visual + 1
        if needed > llm.n_ctx:
            raise InputError(
                f"the prompt needs {needed} positions ({n_visual} visual tokens) but the LLM context holds "
                f"{llm.n_ctx}: use fewer frames (--max-frames, --visual-tokens) or a larger context (--ctx)"
            )
        blocks = [] if visual is None else _row_blocks(visual)
        start = time.perf_counter()
        llm.reset()
        position = 0
        for i, ids in enumerate(stretch_ids):
            if ids:
                position = llm.decode_tokens(ids, position)
            if i < len(blocks):
                position = llm.decode_embeddings(blocks[i], position)
        prefill = time.perf_counter() - start
        text, reason, generated, first_token = self._sample(position, sampling, on_text, start)
        decode_time = time.perf_counter() - start - first_token
        return Answer(
            text=text,
            prompt_tokens=text_tokens,
            question_tokens_dropped=dropped,
            visual_tokens=n_visual,
            generated_tokens=generated,
            stop_reason=reason,
            prefill_seconds=prefill,
            first_token_seconds=first_token,
            decode_tokens_per_second=(generated - 1) / decode_time
            if generated > 1 and decode_time > 0
            else 0.0,
        )

    def prompt_ids(self, question: str) -> tuple[list[int], list[int]]:
        """The prompt's token ids before and after ``<image>``, exactly as :meth:`answer` feeds them (without
        cutting long questions): what training through the LLM must reproduce."""
        prompt = build_prompt(self.template, question, self.llm)
        before = self._tokenize(prompt.before_image, add_bos=self.llm.adds_bos)
        after = self._tokenize(prompt.after_image, add_bos=False)
        return [t for ids, _ in before for t in ids], [t for ids, _ in after for t in ids]

    def visual_prompt_ids(self, question: str, visual: VisualPrompt) -> list[list[int]]:
        """The token ids of each stretch of text between ``visual``'s row blocks, as :meth:`answer` feeds
        them: what a parity test against the model's own processor compares."""
        return [[t for ids, _ in s for t in ids] for s in self._stretches(question, visual)]

    def _tokenize(self, pieces: list[tuple[str, bool]], add_bos: bool) -> list[tuple[list[int], bool]]:
        """Token ids per piece (the model's tokenizer: per stretch of text), with whether they are the
        user's question."""
        if self.tokenizer is not None:
            chunks = self.tokenizer.encode(pieces)
            if add_bos:
                chunks.insert(0, (self.llm.tokenize("", add_bos=True), False))
            return chunks
        if add_bos and not pieces:
            return [(self.llm.tokenize("", add_bos=True), False)]
        return [
            (self.llm.tokenize(text, add_bos=add_bos and i == 0, special=is_template), not is_template)
            for i, (text, is_template) in enumerate(pieces)
        ]

    def _sample(
        self, position: int, sampling: SamplingConfig, on_text: Callable[[str], None] | None, start: float
    ) -> tuple[str, str, int, float]:
        llm = self.llm
        stops = tuple(s for s in self.template.stop if s)
        hold = (
            max((len(s) for s in stops), default=1) - 1
        )  # characters held back in case a stop string starts
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted, generated, first_token, reason = "", 0, 0, 0.0, "max_tokens"
        chain = llm.sampler_chain(sampling)
        try:
            while generated < sampling.max_tokens:
                token = llm.sample(chain)
                generated += 1
                if generated == 1:
                    first_token = time.perf_counter() - start
                if llm.is_end_of_generation(token):
                    reason = "eos"
                    break
                text += decoder.decode(llm.token_bytes(token))
                if not emitted:  # an answer never starts with the space its first token carries
                    text = text.lstrip()
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
                    break
                if on_text and len(text) - hold > emitted:
                    on_text(text[emitted : len(text) - hold])
                    emitted = len(text) - hold
                if generated == sampling.max_tokens:
                    break  # no forward pass for a token that will not be sampled from
                if position >= llm.n_ctx:
                    reason = "context"
                    break
                position = llm.decode_tokens([token], position)
        finally:
            llm.free_sampler(chain)
        if reason != "stop":
            text += decoder.decode(b"", final=True)
        if on_text and len(text) > emitted:
            on_text(text[emitted:])
        return text, reason, generated, first_token
