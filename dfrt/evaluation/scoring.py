"""Prompts and answer matching for ``dfrt eval --dataset``: as the video benchmarks' own evaluation does it.

Multiple choice (Video-MME's prompt for frames without subtitles, from its paper and repository, as lmms-eval
writes it)::

    Select the best answer to the following multiple-choice question based on the video. Respond with only
    the letter (A, B, C, or D) of the correct option.
    <question>
    A. <option>
    B. <option>
    ...
    The best answer is:

(one line break between the parts; "(A, B, or C)" for three options, "(A or B)" for two, and so on).

The letter is read from the model's response as lmms-eval's ``extract_characters_regex`` (Video-MME) does,
with two differences that only matter for responses other than a bare letter (:func:`extract_letter`):
the letter must stand alone (lmms-eval takes the first capital A-D anywhere, so "Down" reads as D) and
must be one of the options' letters (so "I think B" reads as B, not I). When no letter is found the
response may name an option by its text, as VLMEvalKit's ``can_infer_text`` does
(:func:`match_option_text`; ``letters_only`` turns this off).

Free answers: exact match after SQuAD's normalisation (:func:`normalise_answer`: lower case, punctuation,
the articles a/an/the and extra whitespace removed), against the expected answer or any of a list of them.
stdlib only.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

LETTERS = string.ascii_uppercase  # at most 26 options
MAX_OPTIONS = len(LETTERS)

MC_PROMPT = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter ({letters}) of the correct option.\n{question}\n{options}\n"
    "The best answer is:"
)
FREE_PROMPT = "{question}"
PLACEHOLDERS = ("question", "options", "letters")
_PLACEHOLDER = re.compile(r"\{(question|options|letters)\}")

# lmms-eval's (Video-MME) prefixes, each removed wherever it occurs before the letter is looked for (its two
# concatenated entries, "The best option isThe correct option is" and "Best answer:Best option:", are a
# missing comma there: both halves are meant), and VideoLLaMA2's "Answer:"; longest first, any case.
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The best option is",
    "The correct option is",
    "The answer is",
    "Best answer:",
    "Best option:",
    "The answer",
    "Answer:",
)
_PREFIXES = re.compile("|".join(re.escape(p) for p in ANSWER_PREFIXES), re.IGNORECASE)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
LETTERED = re.compile(r"^\s*\(?([A-Z])[.):]\s+(.*\S)\s*$", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def letter_list(count: int) -> str:
    """The letters of ``count`` options as the prompt names them: "A, B, C, or D", "A or B", "A"."""
    letters = list(LETTERS[:count])
    if len(letters) <= 2:
        return " or ".join(letters)
    return ", ".join(letters[:-1]) + ", or " + letters[-1]


def fill(template: str, question: str, options: tuple[str, ...] = ()) -> str:
    """``template`` with ``{question}``, ``{options}`` (one "A. text" line each) and ``{letters}`` filled in
    one pass (text in the question or options is never expanded again; other braces are kept)."""
    values = {
        "question": question,
        "options": "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options)),
        "letters": letter_list(len(options)),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def split_lettered(options: list[str]) -> tuple[str, ...]:
    """The options' texts: options lettered in order ("A. x", "B) y", "(C) z", "D: w"; every one of them)
    lose their letters, any other list is kept as it is."""
    texts = []
    for i, option in enumerate(options):
        match = LETTERED.match(option)
        if match is None or match.group(1) != LETTERS[i]:
            return tuple(options)
        texts.append(match.group(2))
    return tuple(texts)


def normalise_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def extract_letter(response: str, count: int) -> str | None:
    """The option letter a response gives, or None: the prefixes removed, the first capital letter that stands
    alone (no letter or digit beside it: "B", "(B)", "B.", "B)" but not the D of "Down") and is one of the
    ``count`` options' letters. (lmms-eval also gives up on a response of more than ten words with no
    letter in it: no letter is found there either.)"""
    text = _PREFIXES.sub(" ", response.strip())
    for match in _STANDALONE.finditer(text):
        if match.group(1) in LETTERS[:count]:
            return match.group(1)
    return None


def match_option_text(response: str, options: tuple[str, ...]) -> str | None:
    """The letter of the one option the response names by its text (normalised): the option equal to the
    whole response, else the only option whose text appears in it as whole words; None when none or
    several."""
    said = normalise_answer(response)
    if not said:
        return None
    texts = [normalise_answer(o) for o in options]
    equal = [i for i, t in enumerate(texts) if t and t == said]
    if len(equal) == 1:
        return LETTERS[equal[0]]
    inside = [i for i, t in enumerate(texts) if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", said)]
    return LETTERS[inside[0]] if len(inside) == 1 else None


@dataclass(frozen=True)
class Judgement:
    """What a response was read as (``prediction``: a letter, or the normalised free answer), whether that is
    right, and for multiple choice how the letter was found ("letter", "text" or None: not found)."""

    prediction: str | None
    correct: bool
    matched_by: str | None = None


def judge_choice(
    response: str, options: tuple[str, ...], answer: str, letters_only: bool = False
) -> Judgement:
    """A multiple-choice response against the right letter ``answer``."""
    letter, how = extract_letter(response, len(options)), "letter"
    if letter is None and not letters_only:
        letter, how = match_option_text(response, options), "text"
    if letter is None:
        return Judgement(None, False, None)
    return Judgement(letter, letter == answer, how)


def judge_free(response: str, answers: tuple[str, ...]) -> Judgement:
    """A free response against the expected answer(s): exact match after :func:`normalise_answer`."""
    said = normalise_answer(response)
    return Judgement(said, any(said == normalise_answer(a) for a in answers))
