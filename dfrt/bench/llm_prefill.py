"""`dfrt bench --llm`: llama.cpp prefill time and peak memory for DynFocus vs the baselines' token counts.

For each video length, the visual-token counts of DynFocus, 8 frames x all patch tokens (uniform sampling) and
2 tokens per frame (LLaMA-VID) are fed to the GGUF as that many embedding rows, the way ``dfrt infer`` feeds
visual embeddings. Each count runs in a fresh process (its context sized to the count), so its peak resident
memory (model pages, KV cache, compute buffers) is its own. Counts beyond the model's trained context are
reported as not fitting and not run.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np

from dfrt.config import DynFocusConfig

METHODS = ("dynfocus", "uniform_8_frame", "llamavid")
UNIFORM_FRAMES = 8
CONTEXT_STEP = 256  # contexts are sized to the count, rounded up to this


@dataclass
class PrefillRow:
    video_seconds: int
    frames: int
    method: str  # one of METHODS
    tokens: int
    fits: bool  # within the model's trained context
    prefill_seconds: float | None  # None when it does not fit
    peak_mib: float | None  # peak RSS of the measuring process above its RSS before loading the GGUF


@dataclass
class LlmPrefill:
    model: str
    n_embd: int
    n_ctx_train: int
    threads: int
    rows: list[PrefillRow]


def token_counts(config: DynFocusConfig, frames: int) -> dict[str, int]:
    """Visual tokens each method feeds the LLM for ``frames`` sampled frames."""
    return {
        "dynfocus": config.visual_token_count(frames),
        "uniform_8_frame": UNIFORM_FRAMES * config.vision.num_patches,
        "llamavid": 2 * frames,
    }


def llm_prefill(
    llm: Path,
    config: DynFocusConfig,
    durations: tuple[int, ...],
    fps: float = 1.0,
    context_limit: int | None = None,
) -> LlmPrefill:
    """Time the prefill of every method's token count per video length (each distinct count once).

    Counts above the model's trained context (or ``context_limit``, if smaller) are not run.
    """
    with _pool() as pool:
        n_embd, n_ctx_train, threads = pool.apply(_model_facts, (str(llm),))
        limit = min(n_ctx_train, context_limit or n_ctx_train)
        measured: dict[int, tuple[float, float | None]] = {}
        rows = []
        for seconds in durations:
            frames = max(1, round(seconds * fps))
            for method, tokens in token_counts(config, frames).items():
                fits = tokens <= limit
                if fits and tokens not in measured:
                    measured[tokens] = pool.apply(_prefill_in_child, (str(llm), tokens))
                seconds_, peak = measured[tokens] if fits else (None, None)
                rows.append(PrefillRow(seconds, frames, method, tokens, fits, seconds_, peak))
    return LlmPrefill(Path(llm).name, n_embd, n_ctx_train, threads, rows)


def _pool() -> Pool:
    """One worker per task: every measurement starts in a fresh process."""
    return multiprocessing.get_context("spawn").Pool(processes=1, maxtasksperchild=1)


def _model_facts(llm: str) -> tuple[int, int, int]:
    from dfrt.runtime.llm import LlamaModel

    with LlamaModel(llm, n_ctx=CONTEXT_STEP) as model:
        meta = model.metadata
        arch = meta.get("general.architecture", "llama")
        n_ctx_train = int(meta.get(f"{arch}.context_length", model.n_ctx))
        return model.n_embd, n_ctx_train, os.cpu_count() or 1


def _prefill_in_child(llm: str, tokens: int) -> tuple[float, float | None]:
    """Load the GGUF with a context for ``tokens`` rows, warm up, then time one prefill of ``tokens`` rows."""
    from dfrt.runtime.llm import LlamaModel

    before = _status_kib("VmRSS")
    context = -(-(tokens + 8) // CONTEXT_STEP) * CONTEXT_STEP
    with LlamaModel(llm, n_ctx=context) as model:
        rows = np.random.default_rng(0).standard_normal((tokens, model.n_embd), dtype=np.float32) * 0.05
        model.decode_embeddings(rows[:8], 0)  # warm-up: threads, weight pages
        model.reset()
        start = time.perf_counter()
        model.decode_embeddings(rows, 0)
        seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return seconds, (peak - before) / 1024 if peak is not None and before is not None else None


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (VmRSS, VmHWM); None off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None
