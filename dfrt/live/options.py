"""What ``dfrt watch`` was asked to do (:class:`WatchOptions`) and the duration syntax its options share
with ``dfrt serve`` (:func:`parse_duration`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from dfrt.errors import ConfigError
from dfrt.runtime import options
from dfrt.runtime.generate import SamplingConfig

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_UNIT = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: object, name: str) -> float:
    """``"120s"``, ``"2m"``, ``"1.5h"``, ``"500ms"`` or a plain number of seconds -> seconds (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return options.real(name, text, 0.0, 1e7, low_open=True)
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{name} must be a duration like 10s, 2m or 1.5h, got {text!r}")
    return options.real(name, float(match.group(1)) * _UNIT[match.group(2)], 0.0, 1e7, low_open=True)


def parse_cooldown(text: object) -> float:
    """``--cooldown``: a duration, or 0 (a rule may fire again as soon as it has cleared)."""
    if isinstance(text, str) and text.strip() in ("0", "0s"):
        return 0.0
    return parse_duration(text, "--cooldown")


@dataclass(frozen=True)
class WatchOptions:
    """Everything ``dfrt watch`` was asked to do (checked before anything is opened)."""

    source: str  # the first source (SRC or NAME=SRC)
    bundle: Path | None = None
    llm: Path | None = None
    backend: str = "auto"
    precision: str | None = None
    window: float = 120.0
    fps: float = 1.0
    realtime: bool = False
    loop: bool = False
    every: tuple[tuple[float, str], ...] = ()
    duration: float | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_reconnects: int | None = None
    visual_tokens: int | None = None
    selection: str | None = None  # key frames of open-VLM bundles (dfrt.scorers.selection.METHODS)
    threads: int | None = None  # CPU threads of the graphs and the LLM (None: one per core)
    status_every: float | None = None  # seconds between status lines on stderr; None: only on SIGUSR1
    read_stdin: bool = True
    alerts: tuple[str, ...] = ()  # --alert rules (dfrt.live.alerts.AlertRule.parse)
    alert_every: float = 5.0
    confirm: int = 2
    cooldown: float = 60.0
    events_dir: Path | None = None  # --events: the event log (dfrt.live.events)
    events_size: int = 64 << 20
    on_event: tuple[str, ...] = ()  # commands run per event (dfrt.live.hooks.CommandHook)
    hook_timeout: float = 10.0
    webhooks: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # every source, SRC or NAME=SRC (dfrt.live.multi); empty: ``source`` alone
