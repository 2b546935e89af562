"""One module per ``dfrt`` verb: each has ``register(subparsers)``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def progress(message: str) -> None:
    """A progress or status line for the user: stderr, prefixed, flushed (stdout is for results)."""
    print(f"dfrt: {message}", file=sys.stderr, flush=True)


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
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        help="graph precision (default: fp16 on TensorRT, fp32 on onnxruntime; fp16/int8 after dfrt build)",
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
    p.add_argument("--top-p", type=float, default=defaults.DEFAULT_TOP_P)
    p.add_argument("--seed", type=int, default=0)
