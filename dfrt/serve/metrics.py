"""Counters, gauges and latency histograms, rendered as Prometheus text (exposition format 0.0.4).

No client library: a handful of labelled series under one lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, str, Labels, float]  # name, help, labels, value: one series read at render time


class Metrics:
    """The server's metrics; ``gauges`` are read at render time (queue depth, cache bytes; a name ending in
    ``_total`` is a counter kept elsewhere, such as the cache's hits), and so are ``collectors``' labelled
    series (one per live stream)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)  # buckets..., sum, count
        self._help: dict[str, str] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.collectors: list[Callable[[], list[Sample]]] = []

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._help.setdefault(name, help_text)
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, help_text: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._help.setdefault(name, help_text)
            row = self._histograms[name].setdefault(key, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if value <= bound:
                    row[i] += 1
            row[-2] += value
            row[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (0 when never incremented): for tests and the load benchmark."""
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._counters):
                lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} counter"]
                lines += [f"{name}{_labels(k)} {_num(v)}" for k, v in sorted(self._counters[name].items())]
            for name in sorted(self._histograms):
                lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} histogram"]
                for key, row in sorted(self._histograms[name].items()):
                    for bound, count in zip(BUCKETS, row, strict=False):
                        lines.append(f"{name}_bucket{_labels((*key, ('le', f'{bound:g}')))} {_num(count)}")
                    lines.append(f"{name}_bucket{_labels((*key, ('le', '+Inf')))} {_num(row[-1])}")
                    lines.append(f"{name}_sum{_labels(key)} {row[-2]:.6f}")
                    lines.append(f"{name}_count{_labels(key)} {_num(row[-1])}")
        series: dict[str, tuple[str, list[tuple[Labels, float]]]] = {}
        for name, (help_text, read) in self.gauges.items():
            series[name] = (help_text, [((), read())])
        for collect in self.collectors:
            for name, help_text, key, value in collect():
                series.setdefault(name, (help_text, []))[1].append((key, value))
        for name, (help_text, rows) in sorted(series.items()):
            kind = "counter" if name.endswith("_total") else "gauge"  # counters kept elsewhere, read here
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{_labels(key)} {_num(value)}" for key, value in rows]
        return "\n".join(lines) + "\n"


def _labels(key: Labels) -> str:
    if not key:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in key)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(key, escaped, strict=True)) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"
