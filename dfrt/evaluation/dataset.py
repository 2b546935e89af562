"""The labelled dataset of ``dfrt eval --dataset``: an untrusted JSON Lines file, one question a line.

Each line is an object with ``video`` (a path relative to the videos folder: the dataset's own folder, or
``--videos DIR``), ``question`` and ``answer``; with ``options`` (a list of 2 to 26 texts, plain or lettered
"A. ...") the answer is the right option's letter (or its exact text), without them a free answer (text, or a
list of acceptable texts). ``id`` (text or integer), ``type`` (or ``task``: the group the summary reports) are
optional; other keys are ignored.

The file and each line are read as ``dfrt batch`` reads its questions (:mod:`dfrt.batch.jobs`: at most 100,000
lines of 16 KiB, the bounded JSON reader, videos kept inside the folder: no absolute path, no ``..``, no
symbolic link out). A line that cannot be used is an error :class:`EvalItem`; a file of which no line is a
JSON object (a parquet, CSV or JSON array file) is refused whole, in one :class:`~dfrt.errors.InputError`.
stdlib only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# dfrt batch's reader of untrusted JSON Lines and its containment of video paths (shared, not copied)
from dfrt.batch.jobs import numbered_lines, parse_job
from dfrt.errors import InputError
from dfrt.evaluation.scoring import LETTERED, LETTERS, MAX_OPTIONS, normalise_answer, split_lettered
from dfrt.jsonio import parse_json
from dfrt.runtime import options as check

MAX_OPTION_CHARS = 2000
MAX_ANSWERS = 100  # acceptable free answers of one question
MAX_TYPE_CHARS = 200

Key = tuple[Any, ...]


@dataclass(frozen=True)
class EvalItem:
    """One line: the fields its rows repeat (``line``, and ``id``, ``video``, ``question``, ``options``,
    ``expected``, ``type`` when usable), the video it asks about, or why it cannot be evaluated."""

    fields: dict[str, Any]
    path: Path | None = None
    error: str | None = None
    options: tuple[str, ...] = ()  # empty: a free answer
    answers: tuple[str, ...] = ()  # multiple choice: the right letter; free: the acceptable answers

    @property
    def key(self) -> Key:
        return item_key(self.fields)

    @property
    def question(self) -> str:
        return str(self.fields["question"])

    @property
    def multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def group(self) -> str | None:
        return self.fields.get("type")


def item_key(row: Mapping[str, Any]) -> Key:
    """What makes a row belong to a dataset line: its ``id``, else (video, question, options), else its line
    number (a line that could not be read, or a duplicate)."""
    if "duplicate_of" in row:
        return ("line", row.get("line"))
    if "id" in row and isinstance(row["id"], (str, int)):
        return ("id", row["id"])
    video, question, options = row.get("video"), row.get("question"), row.get("options", [])
    if (
        isinstance(video, str)
        and isinstance(question, str)
        and isinstance(options, list)
        and all(isinstance(o, str) for o in options)
    ):
        return ("row", video, question, tuple(options))
    return ("line", row.get("line"))


def dataset_root(dataset: Path, videos: Path | None) -> Path:
    """The folder video paths are relative to (``videos``, else the dataset's folder), resolved."""
    root = check.path("--videos", videos) if videos is not None else Path(os.path.abspath(dataset)).parent
    if not root.is_dir():
        raise InputError(f"--videos {check.display(root)}: not a directory")
    return root.resolve(strict=True)


def read_items(dataset: Path, root: Path) -> list[EvalItem]:
    """Every non-blank line of ``dataset`` as an :class:`EvalItem` (videos resolved inside ``root``)."""
    dataset = check.path("--dataset", dataset)
    _refuse_binary(dataset)
    items: list[EvalItem] = []
    seen: dict[Key, int] = {}
    try:
        for number, raw in numbered_lines(dataset):
            if raw is not None and not raw.strip():
                continue
            item = _item(number, raw, root)
            if item.error is None and item.key in seen:
                fields = {**item.fields, "duplicate_of": seen[item.key]}
                item = EvalItem(fields, error=f"line {number}: duplicate of line {seen[item.key]}")
            seen.setdefault(item.key, number)
            items.append(item)
    except InputError as e:  # dfrt batch's reader names its file QUESTIONS
        raise InputError(str(e).replace("QUESTIONS", "--dataset", 1)) from None
    _refuse_not_jsonl(dataset, items)
    return items


def _refuse_binary(dataset: Path) -> None:
    try:
        fd = os.open(dataset, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(f"--dataset {check.display(dataset)}: unreadable ({e.strerror or e})") from e
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"--dataset {check.display(dataset)}: not a regular file")
        head = handle.read(4096)
    if head.startswith(b"PAR1") or b"\0" in head:
        kind = "a parquet file" if head.startswith(b"PAR1") else "binary"
        raise InputError(
            f"--dataset {check.display(dataset)}: {kind}, not JSON Lines (one JSON object a line); "
            "convert it first (docs/eval.md shows how for Video-MME)"
        )


NOT_AN_OBJECT = ("not valid JSON", "not a JSON object", "not UTF-8", "longer than")


def _refuse_not_jsonl(dataset: Path, items: list[EvalItem]) -> None:
    """No line is a JSON object: the file is something else (a JSON array, CSV, ...), one error for all."""
    if items and all(i.error and any(w in i.error for w in NOT_AN_OBJECT) for i in items):
        raise InputError(
            f"--dataset {check.display(dataset)}: no line is a JSON object: not JSON Lines (one object a "
            'line, e.g. {"video": ..., "question": ..., "answer": ...}); see docs/eval.md'
        )


def _item(number: int, raw: bytes | None, root: Path) -> EvalItem:
    job = parse_job(number, raw, root)  # line, id, video, question, and the video inside root
    if job.error is not None:
        return EvalItem(job.fields, error=job.error)
    assert raw is not None  # a usable job came from a whole line
    row: dict[str, Any] = parse_json(raw.decode("utf-8"), f"line {number}")
    fields = dict(job.fields)
    errors: list[str] = []
    options: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    fields["format"] = "multiple_choice" if "options" in row else "free"
    if "options" in row:
        options = _options(row["options"], errors)
        if options:
            fields["options"] = list(options)
            letter = _letter(row.get("answer"), options, errors)
            if letter is not None:
                answers = (letter,)
                fields["expected"] = letter
    else:
        answers = _free_answers(row.get("answer"), errors)
        if answers:
            fields["expected"] = answers[0] if len(answers) == 1 else list(answers)
    group = row.get("type", row.get("task"))
    if group is not None:
        if isinstance(group, str) and 0 < len(group) <= MAX_TYPE_CHARS:
            fields["type"] = group
        else:
            errors.append(f'"type" (or "task") must be text of 1 to {MAX_TYPE_CHARS} characters')
    if errors:
        return EvalItem(fields, error=f"line {number}: " + "; ".join(errors))
    return EvalItem(fields, job.path, options=options, answers=answers)


def _options(value: object, errors: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_OPTIONS:
        errors.append(f'"options" must be a list of 2 to {MAX_OPTIONS} texts')
        return ()
    if not all(isinstance(o, str) and o.strip() and len(o) <= MAX_OPTION_CHARS for o in value):
        errors.append(f"every option must be non-empty text of at most {MAX_OPTION_CHARS} characters")
        return ()
    return tuple(text.strip() for text in split_lettered(value))


def _letter(value: object, options: tuple[str, ...], errors: list[str]) -> str | None:
    """The right option's letter: "C", "c", "(C)", "C." or "C)"; "C. text" when the text is option C's; or
    an option's exact text."""
    count = len(options)
    if not isinstance(value, str) or not value.strip():
        errors.append(f'"answer" must be the right option\'s letter ({LETTERS[0]}-{LETTERS[count - 1]})')
        return None
    lettered = LETTERED.match(value)
    if lettered is not None and lettered.group(1) in LETTERS[:count]:
        letter = lettered.group(1)
        if normalise_answer(lettered.group(2)) == normalise_answer(options[LETTERS.index(letter)]):
            return letter
        errors.append(f'"answer" {check.display(value[:40])} is not the text of option {letter}')
        return None
    bare = value.strip().strip("()").rstrip(".):").strip()
    if len(bare) == 1 and bare.isascii() and bare.isalpha():
        letter = bare.upper()
        if letter not in LETTERS[:count]:
            span = f"{LETTERS[0]}-{LETTERS[count - 1]}"
            errors.append(f'"answer" {letter} is not one of the {count} options ({span})')
            return None
        return letter
    said = normalise_answer(value)
    matches = [i for i, o in enumerate(options) if normalise_answer(o) == said]
    if len(matches) == 1:
        return LETTERS[matches[0]]
    errors.append(
        f'"answer" {check.display(value[:40])} is neither an option letter '
        f"({LETTERS[0]}-{LETTERS[count - 1]}) nor the text of exactly one option"
    )
    return None


def _free_answers(value: object, errors: list[str]) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not 1 <= len(values) <= MAX_ANSWERS or not all(isinstance(v, str) for v in values):
        errors.append(f'"answer" must be text (or a list of 1 to {MAX_ANSWERS} texts), or give "options"')
        return ()
    if not all(normalise_answer(v) for v in values):
        errors.append('"answer" is empty once normalised (punctuation and articles removed)')
        return ()
    return tuple(values)
