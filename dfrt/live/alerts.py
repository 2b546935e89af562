"""Alert rules: standing questions over a live window that raise an event when their answer becomes a
triggering one (and hold it), and clear the same way.

    rules = [AlertRule.parse("What color was the shape that appeared for a moment? => yellow")]
    alerts = Alerts(rules, every=5.0, confirm=2, cooldown=60.0)
    while watching:
        for event in alerts.run_due(watcher, sampling):   # asks each rule when it is due
            dispatcher.emit(event)                        # dfrt.live.events: stdout, log, hooks

A rule is a question and the answers that fire it (``"yes"`` unless named after ``=>``), compared after
:func:`normalise` (lower case, punctuation stripped, spaces collapsed). Debouncing, per rule: it fires
when ``confirm`` consecutive checks answer a triggering answer, never within ``cooldown`` seconds of its last
firing (a confirmed answer inside the cool-down fires when the cool-down ends, if it still holds), and
clears when ``confirm`` consecutive checks answer something else. A check needs a new window: the newest
frame must have changed since the last check (a stalled or finished stream is not re-counted), and, with
``full_window`` (the default), the window must span its full length (a model trained on full windows answers
a half-filled one at random). :class:`Alerts` is not tied to a process: ``dfrt watch`` runs one per
watcher; a server can run one per stream from its own thread (:meth:`Alerts.run_due` is serialised).
"""

from __future__ import annotations

import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dfrt.errors import ConfigError, DfrtError
from dfrt.runtime import options

if TYPE_CHECKING:
    from dfrt.live.watcher import LiveAnswer, Watcher
    from dfrt.runtime.generate import SamplingConfig

SEPARATOR = "=>"
MAX_RULE_CHARS = 2000
MAX_ANSWERS = 32  # answers one rule may name
MAX_RULES = 64
DEFAULT_EVERY = 5.0  # seconds between checks
DEFAULT_CONFIRM = 2  # consecutive checks that confirm a change
DEFAULT_COOLDOWN = 60.0  # seconds before a rule may fire again


def normalise(text: str) -> str:
    """``text`` compared as an answer: NFKC, lower case, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if c.isspace() else c for c in text if not unicodedata.category(c).startswith("P"))
    return " ".join(kept.split())


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class AlertRule:
    """A standing question and the (normalised) answers that fire it."""

    question: str
    fires_on: tuple[str, ...] = ("yes",)
    name: str = ""  # shown in events; Alerts names an unnamed rule "rule1", "rule2", ...

    def __post_init__(self) -> None:
        what = f"--alert {_show(self.question)}"
        if not isinstance(self.question, str) or not self.question.strip():
            raise ConfigError("--alert needs a question before '=>'")
        if len(self.question) > MAX_RULE_CHARS:
            raise ConfigError(f"--alert: the question is over {MAX_RULE_CHARS} characters")
        if any(unicodedata.category(c) == "Cc" for c in self.question):
            raise ConfigError(f"{what}: control characters (a newline, say) in the question")
        if not isinstance(self.fires_on, tuple) or not self.fires_on:
            raise ConfigError(f"{what}: no answer to fire on")
        if len(self.fires_on) > MAX_ANSWERS:
            raise ConfigError(f"{what}: more than {MAX_ANSWERS} answers after '=>'")
        for answer in self.fires_on:
            if not isinstance(answer, str) or not answer or normalise(answer) != answer:
                raise ConfigError(f"{what}: answers must be normalised words, got {answer!r}")
        if not isinstance(self.name, str) or len(self.name) > 100:
            raise ConfigError(f"{what}: a rule name is text of at most 100 characters")

    @classmethod
    def parse(cls, text: object, name: str = "") -> AlertRule:
        """``"QUESTION"`` (fires on yes) or ``"QUESTION => a|b"``; one-line :class:`ConfigError` if bad."""
        if not isinstance(text, str):
            raise ConfigError(f"--alert must be text, got {type(text).__name__}")
        if len(text) > MAX_RULE_CHARS:
            raise ConfigError(f"--alert is over {MAX_RULE_CHARS} characters")
        if any(unicodedata.category(c) == "Cc" for c in text):
            raise ConfigError(f"--alert {_show(text)}: control characters (a newline, say) in the rule")
        parts = text.split(SEPARATOR)
        if len(parts) > 2:
            raise ConfigError(f"--alert {_show(text)}: more than one '=>'")
        question = parts[0].strip()
        if not question:
            raise ConfigError(f"--alert {_show(text)}: no question before '=>'")
        if len(parts) == 1:
            return cls(question, ("yes",), name)
        answers: list[str] = []
        for raw in parts[1].split("|"):
            answer = normalise(raw)
            if not answer:
                raise ConfigError(
                    f"--alert {_show(text)}: an empty answer after '=>' (write QUESTION => a|b)"
                )
            if answer not in answers:
                answers.append(answer)
        return cls(question, tuple(answers), name)

    def fires(self, answer: str) -> bool:
        return normalise(answer) in self.fires_on

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "question": self.question, "fires_on": list(self.fires_on)}


@dataclass
class KeyFrame:
    """A key frame of the answer that raised an event: its time, score and thumbnail (JPEG bytes)."""

    time: float  # seconds on the watcher's clock
    wall_time: float
    score: float | None
    jpeg: bytes = field(repr=False, default=b"")


@dataclass
class AlertEvent:
    """A rule fired (``kind`` "alert") or cleared ("clear"); :meth:`to_dict` is its JSON form."""

    kind: str
    rule: AlertRule
    answer: str
    stream_time: float  # the newest frame of the window asked, on the watcher's clock
    asked_at: float  # watcher's clock
    wall_time: float  # time.time() of the check
    window: dict[str, Any]  # start, end, frames
    key_frames: list[KeyFrame]
    checks: int  # the consecutive checks that confirmed it
    source: str = ""
    id: int | None = None  # given by the dispatcher (the event log's sequence when there is one)
    stream: str = ""  # the stream's name where a process watches several (dfrt.live.multi)

    def to_dict(self) -> dict[str, Any]:
        """Stable snake_case keys; thumbnails are added by the event log (file names) or hooks (base64)."""
        return {
            "kind": self.kind,
            "id": self.id,
            "rule": self.rule.to_dict(),
            "answer": self.answer,
            "source": self.source,
            "stream": self.stream,
            "stream_time": round(self.stream_time, 3),
            "asked_at": round(self.asked_at, 3),
            "wall_time": round(self.wall_time, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall_time)),
            "window": self.window,
            "checks": self.checks,
            "key_frames": [
                {
                    "time": round(k.time, 3),
                    "wall_time": round(k.wall_time, 3),
                    "score": None if k.score is None else round(k.score, 4),
                }
                for k in self.key_frames
            ],
        }

    @property
    def thumbnails(self) -> list[bytes]:
        return [k.jpeg for k in self.key_frames]


@dataclass
class _State:
    firing: bool = False
    streak: int = 0  # consecutive checks disagreeing with the state
    last_fired: float | None = None  # monotonic
    last_answer: str | None = None
    checks: int = 0
    alerts: int = 0
    clears: int = 0
    suppressed: int = 0  # confirmed firings held back by the cool-down


class Alerts:
    """A set of rules checked every ``every`` seconds over one watcher's window (see the module doc)."""

    def __init__(
        self,
        rules: Iterable[AlertRule | str],
        every: float = DEFAULT_EVERY,
        confirm: int = DEFAULT_CONFIRM,
        cooldown: float = DEFAULT_COOLDOWN,
        full_window: bool = True,
    ) -> None:
        parsed = [r if isinstance(r, AlertRule) else AlertRule.parse(r) for r in rules]
        if not parsed:
            raise ConfigError("no alert rule given")
        if len(parsed) > MAX_RULES:
            raise ConfigError(f"more than {MAX_RULES} alert rules")
        self.rules = [
            r if r.name else AlertRule(r.question, r.fires_on, f"rule{i}") for i, r in enumerate(parsed, 1)
        ]
        if len({r.name for r in self.rules}) != len(self.rules):
            raise ConfigError("two alert rules have the same name")
        self.every = options.real("--alert-every", every, 0.0, 86400.0, low_open=True)
        self.confirm = options.integer("--confirm", confirm, 1, 1000)
        self.cooldown = options.real("--cooldown", cooldown, 0.0, 1e7)
        self.full_window = options.flag("full_window", full_window)
        self._states = [_State() for _ in self.rules]
        self._next: float | None = None  # monotonic time of the next check
        self._last_end: float | None = None  # newest frame time of the last window checked
        self._lock = threading.Lock()

    # -- the debounce, free of any watcher (unit-testable) ------------------------------------------------
    def observe(self, index: int, answer: str, now: float | None = None) -> str | None:
        """Count one check of rule ``index`` answering ``answer`` at monotonic ``now``: "alert", "clear"
        or None (no change)."""
        now = time.monotonic() if now is None else now
        rule, state = self.rules[index], self._states[index]
        state.checks += 1
        state.last_answer = answer
        disagrees = rule.fires(answer) != state.firing
        state.streak = state.streak + 1 if disagrees else 0
        if state.streak < self.confirm:
            return None
        if not state.firing:
            if state.last_fired is not None and now - state.last_fired < self.cooldown:
                state.suppressed += 1
                return None
            state.firing, state.streak, state.last_fired = True, 0, now
            state.alerts += 1
            return "alert"
        state.firing, state.streak = False, 0
        state.clears += 1
        return "clear"

    # -- checking a watcher -----------------------------------------------------------------------------
    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self._next is None or now >= self._next

    @property
    def next_check(self) -> float | None:
        """The monotonic time the next check is due (None: at once, none has run)."""
        return self._next

    def ready(self, watcher: Watcher) -> bool:
        """The window is worth a check: a frame newer than the last check's and (``full_window``) the
        window's full span."""
        snapshot = watcher.window.snapshot()
        if not snapshot.num_frames:
            return False
        if self._last_end is not None and snapshot.end is not None and snapshot.end <= self._last_end:
            return False
        if self.full_window:
            span = (snapshot.end or 0.0) - (snapshot.start or 0.0)
            return span >= watcher.span - 1.5 / watcher.fps
        return True

    def run_due(
        self, watcher: Watcher, sampling: SamplingConfig | None = None, now: float | None = None
    ) -> list[AlertEvent]:
        """If a check is due and the window is ready, ask every rule over it; the events it raised."""
        with self._lock:
            now = time.monotonic() if now is None else now
            if not self.due(now):
                return []
            self._next = max((self._next or now) + self.every, now)  # a late check never piles up
            if not self.ready(watcher):
                return []
            events = []
            for index, rule in enumerate(self.rules):
                try:
                    answer = watcher.ask(rule.question, sampling)
                except DfrtError:
                    continue  # no frames yet: not a check
                self._last_end = answer.window.end
                kind = self.observe(index, answer.answer, now)
                if kind is not None:
                    events.append(self._event(kind, index, answer, watcher.source.display))
            return events

    def _event(self, kind: str, index: int, answer: LiveAnswer, source: str) -> AlertEvent:
        entries = answer.window.entries
        scores = answer.result.frame_scores()
        key = sorted(int(i) for i in answer.result.selection.key_frames)
        frames = [
            KeyFrame(
                entries[i].time,
                entries[i].wall_time,
                float(scores[i]) if scores is not None and i < len(scores) else None,
                entries[i].thumbnail,
            )
            for i in key
            if 0 <= i < len(entries)
        ]
        return AlertEvent(
            kind=kind,
            rule=self.rules[index],
            answer=answer.answer,
            stream_time=answer.window.end if answer.window.end is not None else answer.asked_at,
            asked_at=answer.asked_at,
            wall_time=time.time(),
            window={
                "start": None if answer.window.start is None else round(answer.window.start, 3),
                "end": None if answer.window.end is None else round(answer.window.end, 3),
                "frames": answer.window.num_frames,
            },
            key_frames=frames,
            checks=self.confirm,
            source=source,
        )

    def status(self) -> list[dict[str, Any]]:
        """Per rule: its name, whether it is firing, checks, alerts, clears, suppressed, last answer."""
        with self._lock:
            return [
                {
                    "rule": rule.name,
                    "firing": state.firing,
                    "checks": state.checks,
                    "alerts": state.alerts,
                    "clears": state.clears,
                    "suppressed": state.suppressed,
                    "last_answer": state.last_answer,
                }
                for rule, state in zip(self.rules, self._states, strict=True)
            ]


def parse_rules(texts: Sequence[object]) -> list[AlertRule]:
    """``--alert`` values as rules (one-line :class:`ConfigError` for the first malformed one)."""
    return [AlertRule.parse(text) for text in texts]
