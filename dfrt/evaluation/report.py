"""The summary of ``dfrt eval --dataset``: accuracy per strategy, per question type and answer format.

Built from the output's rows (this run's and earlier runs'), only those that belong to the dataset's current
lines and the strategies asked for. Accuracy is right answers over answered rows; rows whose strategy failed
(a video that does not decode, a context too small) are counted apart as errors, not as wrong answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dfrt.evaluation.dataset import EvalItem, Key

FORMATS = ("multiple_choice", "free")


@dataclass(frozen=True)
class Outcome:
    """What the summary needs of one output row."""

    error: bool
    correct: bool = False
    visual_tokens: int = 0
    matched_by: str | None = None


@dataclass
class Scores:
    """One strategy's counts over the dataset's lines."""

    answered: int = 0
    correct: int = 0
    errors: int = 0
    missing: int = 0  # not in the output (a run stopped before them)
    visual_tokens: int = 0
    matched_by_text: int = 0  # multiple choice answered with an option's text, not its letter
    no_option: int = 0  # multiple choice with neither a letter nor an option's text in the response
    per_type: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    per_format: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    @staticmethod
    def record(row: Mapping[str, Any]) -> Outcome:
        if "error" in row:
            return Outcome(True)
        tokens = row.get("visual_tokens")
        matched = row.get("matched_by")
        return Outcome(
            False,
            row.get("correct") is True,
            tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0,
            matched if isinstance(matched, str) else None,
        )

    def add(self, item: EvalItem, outcome: Outcome | None) -> None:
        if outcome is None:
            self.missing += 1
            return
        if outcome.error:
            self.errors += 1
            return
        self.answered += 1
        self.correct += outcome.correct
        self.visual_tokens += outcome.visual_tokens
        if item.multiple_choice:
            self.matched_by_text += outcome.matched_by == "text"
            self.no_option += outcome.matched_by is None
        for counts in (self.per_format[item.fields["format"]], *self._group(item)):
            counts[0] += 1
            counts[1] += outcome.correct

    def _group(self, item: EvalItem) -> list[list[int]]:
        return [] if item.group is None else [self.per_type[item.group]]

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "answered": self.answered,
            "errors": self.errors,
            "missing": self.missing,
            "mean_visual_tokens": self.visual_tokens / self.answered if self.answered else None,
            "per_format": {k: _share(*v) for k, v in self.per_format.items()},
            "per_type": {k: _share(*v) for k, v in sorted(self.per_type.items())},
            "multiple_choice_matched_by_text": self.matched_by_text,
            "multiple_choice_no_option": self.no_option,
        }


def _share(answered: int, correct: int) -> dict[str, Any]:
    return {"accuracy": correct / answered if answered else None, "correct": correct, "answered": answered}


@dataclass
class EvalSummary:
    """The dataset's scores per strategy and what this run did."""

    dataset: Path
    out: Path
    lines: int  # usable dataset lines
    unusable: int  # error rows of their own (bad JSON, missing fields, a path out of the folder, ...)
    formats: dict[str, int]
    scores: dict[str, Scores]
    written: int
    skipped: int
    videos: int
    seconds: float
    torn_line_dropped: bool

    @classmethod
    def of(
        cls,
        items: Iterable[EvalItem],
        strategies: Iterable[str],
        rows: Mapping[tuple[Key, str | None], Outcome],
        **run: Any,
    ) -> EvalSummary:
        items = list(items)
        usable = [i for i in items if i.error is None]
        scores = {s: Scores() for s in strategies}
        for item in usable:
            for strategy, score in scores.items():
                score.add(item, rows.get((item.key, strategy)))
        formats = {f: sum(i.fields["format"] == f for i in usable) for f in FORMATS}
        unusable = len(items) - len(usable)
        return cls(lines=len(usable), unusable=unusable, formats=formats, scores=scores, **run)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": str(self.dataset),
            "out": str(self.out),
            "lines": self.lines,
            "unusable_lines": self.unusable,
            "formats": self.formats,
            "strategies": {name: s.to_dict() for name, s in self.scores.items()},
            "written": self.written,
            "skipped": self.skipped,
            "videos": self.videos,
            "seconds": round(self.seconds, 3),
            "torn_line_dropped": self.torn_line_dropped,
        }

    def text(self) -> str:
        """Accuracy per strategy (and per answer format), then per question type when lines carry one."""
        mc, free = self.formats["multiple_choice"], self.formats["free"]
        lines = [
            f"{self.lines} questions ({mc} multiple choice, {free} free answer), {self.unusable} unusable "
            f"lines: {self.dataset}"
        ]
        header = f"{'strategy':<13} {'accuracy':>8} {'right':>13} {'errors':>6} {'tokens':>7}"
        header += f" {'choice':>7} {'free':>7}"
        lines.append(header)
        for name, s in self.scores.items():
            right = f"{s.correct}/{s.answered}"
            tokens = s.visual_tokens / s.answered if s.answered else float("nan")
            row = f"{name:<13} {_pct(s.accuracy):>8} {right:>13} {s.errors:>6} {tokens:>7.1f}"
            for fmt in FORMATS:
                answered, correct = s.per_format.get(fmt, (0, 0))
                row += f" {_pct(correct / answered if answered else None):>7}"
            lines.append(row)
        types = sorted({t for s in self.scores.values() for t in s.per_type})
        if types:
            width = max(13, *(len(t) for t in types))
            lines.append("")
            lines.append(f"{'type':<{width}} " + " ".join(f"{n:>13}" for n in self.scores))
            for group in types:
                cells = []
                for s in self.scores.values():
                    answered, correct = s.per_type.get(group, (0, 0))
                    cells.append(f"{_pct(correct / answered if answered else None)} ({answered})".rjust(13))
                lines.append(f"{group:<{width}} " + " ".join(cells))
        by_text = [f"{n} {s.matched_by_text}" for n, s in self.scores.items() if s.matched_by_text]
        if by_text:
            lines.append("multiple choice read from an option's text, not a letter: " + ", ".join(by_text))
        no_option = [f"{n} {s.no_option}" for n, s in self.scores.items() if s.no_option]
        if no_option:
            lines.append("multiple choice with no option in the response (wrong): " + ", ".join(no_option))
        missing = [f"{n} {s.missing}" for n, s in self.scores.items() if s.missing]
        if missing:
            lines.append("not evaluated yet (run again to resume): " + ", ".join(missing))
        torn = ", a torn last line dropped" if self.torn_line_dropped else ""
        lines.append(
            f"accuracy: right answers over answered rows; tokens: mean visual tokens. {self.written} rows "
            f"written, {self.skipped} already in {self.out}; {self.videos} videos decoded, "
            f"{self.seconds:.1f} s{torn}"
        )
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
