"""One module per ``dfrt`` verb: each has ``register(subparsers)``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def progress(message: str) -> None:
    """A progress or status line for the user: stderr, prefixed, flushed (stdout is for results). One write
    for the whole line: a thread that points fd 2 at /dev/null for FFmpeg meanwhile can swallow the line,
    never split it from its newline (print writes the text and the newline apart)."""
    sys.stderr.write(f"dfrt: {message}\n")
    sys.stderr.flush()


class RowProgress:
    """A tqdm bar on stderr over a job's rows (``dfrt batch``, ``dfrt eval --dataset``), or plain
    ``dfrt: VERB N/M (E errors)`` lines, every ``every`` rows, where tqdm is not installed."""

    def __init__(self, verb: str, unit: str, enabled: bool, every: int = 1) -> None:
        self.verb, self.unit, self.enabled, self.every = verb, unit, enabled, every
        self.bar: Any = None
        self.done = self.total = self.errors = 0

    def start(self, pending: int, skipped: int) -> None:
        self.total = pending
        if not self.enabled:
            return
        if skipped:
            progress(f"{skipped} {self.unit}s already in the output: skipped")
        if not pending:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            progress(f"{self.verb}: {pending} {self.unit}s to do")
            return
        desc = f"dfrt {self.verb}"
        self.bar = tqdm(total=pending, file=sys.stderr, unit=self.unit, desc=desc, dynamic_ncols=True)

    def row(self, row: dict[str, Any]) -> None:
        self.done += 1
        self.errors += "error" in row
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(errors=self.errors, refresh=False)
        elif self.done % self.every == 0 or self.done == self.total:
            progress(f"{self.verb} {self.done}/{self.total} ({self.errors} errors)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def options(cls: type[T], args: argparse.Namespace, **renamed: Any) -> T:
    """The library's options dataclass ``cls`` from parsed arguments: each field from the argument of the
    same name, or from ``renamed`` (fields whose flag is spelled differently or needs converting)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {name: getattr(args, name) for name in fields - renamed.keys() if hasattr(args, name)}
    return cls(**given, **renamed)


def add_model_options(p: argparse.ArgumentParser, ctx: bool = True) -> None:
    """The options that choose what answers: ``--bundle``, ``--llm``, ``--backend``, ``--precision``
    (and ``--ctx``), the same for every verb that runs the pipeline."""
    from dfrt.runtime.defaults import DEFAULT_CTX

    p.add_argument(
        "--bundle",
        type=Path,
        help="bundle directory (default: $DFRT_BUNDLE, then <cache>/bundle, then the trained demo)",
    )
    p.add_argument("--llm", type=Path, help="GGUF LLM to use instead of the bundle's")
    p.add_argument(
        "--backend",
        choices=("auto", "onnxruntime", "tensorrt"),
        default="auto",
        help="where the graphs run; auto: TensorRT when it and a CUDA GPU are usable, else onnxruntime",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        help="graph precision (default: fp16 on TensorRT, fp32 on onnxruntime; fp16/int8 after dfrt build)",
    )
    p.add_argument(
        "--selection",
        choices=("dpe", "bolt", "aks", "uniform"),
        help="how an open-VLM bundle (SmolVLM2) picks its key frames: its scorer's relevance to the question "
        "minus redundancy, with coverage (dpe), BOLT's inverse-transform sampling (bolt), AKS's adaptive "
        "binning (aks), or evenly spaced (uniform). Default: dpe with a scorer, else uniform; DynFocus "
        "bundles select with their own DPE",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads of the graphs (onnxruntime) and of the LLM, prompt processing included "
        "(default: one per core)",
    )
    if ctx:
        p.add_argument(
            "--ctx",
            type=int,
            help=f"LLM context (default: the model's trained context, at most {DEFAULT_CTX})",
        )


def add_sampling_options(p: argparse.ArgumentParser, temperature: float | None = None) -> None:
    """``--max-tokens``, ``--temperature`` (default ``temperature``, else the runtime's), ``--top-p``,
    ``--seed``."""
    from dfrt.runtime import defaults

    temperature = defaults.DEFAULT_TEMPERATURE if temperature is None else temperature
    p.add_argument("--max-tokens", type=int, default=defaults.DEFAULT_MAX_TOKENS, help="answer length limit")
    p.add_argument(
        "--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature:g})"
    )
    p.add_argument(
        "--top-p", type=float, default=defaults.DEFAULT_TOP_P, help="nucleus sampling (with temperature > 0)"
    )
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (with temperature > 0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0: off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below p x the likeliest (0: off)")
    p.add_argument(
        "--repeat-penalty", type=float, default=1.0, help="llama.cpp's repetition penalty (1: off)"
    )
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's, -2 to 2 (0: off)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's, -2 to 2 (0: off)")


SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "top_k", "min_p", "repeat_penalty",
                   "frequency_penalty", "presence_penalty")  # fmt: skip


def sampling(args: argparse.Namespace) -> Any:
    """The :class:`~dfrt.runtime.generate.SamplingConfig` of :func:`add_sampling_options`' flags (checked)."""
    from dfrt.runtime.generate import SamplingConfig

    return SamplingConfig(**{name: getattr(args, name) for name in SAMPLING_FIELDS})


def add_alert_options(group: Any, per_stream: bool) -> None:
    """``--alert``, ``--alert-every``, ``--confirm``, ``--cooldown``, ``--events``, ``--events-size`` and
    ``--webhook`` of ``dfrt watch`` (``per_stream`` False: a rule is RULE) and ``dfrt serve`` (NAME=RULE)."""
    group.add_argument(
        "--alert",
        action="append",
        default=[],
        metavar="NAME=RULE" if per_stream else "RULE",
        help=("a rule on stream NAME: " if per_stream else "a rule: ")
        + '"QUESTION" fires on yes, "QUESTION => red|blue" on the answers named (repeatable; default: none)',
    )
    group.add_argument(
        "--alert-every",
        default="5s",
        help=("check each stream's rules" if per_stream else "check the rules") + " this often (default 5s)",
    )
    group.add_argument(
        "--confirm",
        type=int,
        default=2,
        metavar="N",
        help="consecutive checks that must agree before a rule fires or clears (default 2)",
    )
    group.add_argument(
        "--cooldown",
        default="60s",
        help="a rule never fires again within this long; 0: as soon as it has cleared (default 60s)",
    )
    group.add_argument(
        "--events",
        metavar="DIR",
        help="also append events and their key-frame thumbnails to a log here (default: "
        + ("memory only)" if per_stream else "stdout only)"),
    )
    group.add_argument(
        "--events-size",
        default="64MB",
        help="the event log's bound, thumbnails included; oldest files go first (default 64MB)",
    )
    group.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST each event here, in order, retried until acknowledged (repeatable; default: none)",
    )


def add_cluster_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--ray [ADDRESS]``, what each Ray worker (``what``: "replica", "actor") reserves, how many run."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run on a Ray cluster (HOST:PORT; no address: a local Ray); needs pip install 'dfrt[ray]'",
    )
    p.add_argument(
        "--replicas",
        default="1",
        metavar="N",
        help=f"with --ray: {what}s to start, N or encoder=N,llm=M (default 1)",
    )
    p.add_argument(
        "--max-replicas",
        metavar="N",
        help=f"with --ray: grow to at most N {what}s under load (N or encoder=N,llm=M; default: --replicas)",
    )
    p.add_argument(
        "--cpus",
        default="1",
        metavar="X",
        help=f"with --ray: CPUs each {what} reserves, X or encoder=X,llm=Y (default 1)",
    )
    p.add_argument(
        "--gpus",
        default="0",
        metavar="X",
        help=f"with --ray: GPUs each {what} reserves (0.5 shares one), X or encoder=X,llm=Y (default 0)",
    )
    p.add_argument(
        "--resources",
        metavar="JSON",
        help=f"with --ray: custom resources per {what}, e.g. '{{\"jetson\": 1}}' (pins it to such nodes), or "
        '\'{"encoder": {...}, "llm": {...}}\'',
    )


def cluster(args: argparse.Namespace) -> Any:
    """The :class:`dfrt.cluster.placement.Cluster` of ``--ray`` and its options; None without ``--ray``
    (then the Ray options must keep their defaults)."""
    from dfrt.cluster import placement as ray_options
    from dfrt.errors import ConfigError

    if args.ray is None:
        given = [
            flag
            for flag, value, default in (
                ("--replicas", args.replicas, "1"),
                ("--max-replicas", args.max_replicas, None),
                ("--cpus", args.cpus, "1"),
                ("--gpus", args.gpus, "0"),
                ("--resources", args.resources, None),
            )
            if value != default
        ]
        if given:
            raise ConfigError(f"{given[0]} needs --ray")
        return None
    from dfrt.cluster.connect import check_address

    return ray_options.Cluster(
        address=check_address(args.ray),
        placement=ray_options.placements(args.cpus, args.gpus, args.resources),
        scale=ray_options.scale(args.replicas, args.max_replicas),
        verbose=bool(getattr(args, "verbose", False)),
    )
