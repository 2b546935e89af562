"""Thin calls into llama.cpp (llama-cpp-python, pinned): the only module that imports ``llama_cpp``.

No generation logic here (that is :mod:`dfrt.runtime.generate`): load a GGUF, tokenize, decode token or
embedding batches at explicit positions, read logits, sample, turn tokens into bytes. Every native call's
status is checked, batches never exceed ``n_batch`` (llama.cpp aborts the process on that), and native logs
stay off stderr unless ``dfrt -v``.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from dfrt._optional import require
from dfrt.errors import BackendError, ConfigError
from dfrt.fileio import atomic_path
from dfrt.runtime.native_log import silenced_native_stderr, verbose

log = logging.getLogger(__name__)

LLAMA_CPP_PIP = "llama-cpp-python==0.3.36"


class LlamaModel:
    """A GGUF model and one context. Use as a context manager or call :meth:`close`."""

    def __init__(
        self, path: str | Path, n_ctx: int = 4096, n_batch: int = 512, threads: int | None = None
    ) -> None:
        self._llama_cpp = require("llama_cpp", LLAMA_CPP_PIP)
        _close_devnull_at_exit()
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"LLM not found: {path}")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ConfigError(f"{path}: not a GGUF file")
        try:
            with silenced_native_stderr():
                self._llm = self._llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=n_batch,
                    n_ubatch=n_batch,
                    n_threads=threads or os.cpu_count(),
                    verbose=verbose(),
                )
        except (ValueError, RuntimeError, OSError) as e:
            raise BackendError(f"{path}: llama.cpp cannot load this GGUF ({e})") from e
        self.path = path
        lib = self._llama_cpp
        self._model, self._ctx = self._llm.model, self._llm.ctx
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_embd = int(lib.llama_model_n_embd_inp(self._model))
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.n_batch = int(lib.llama_n_batch(self._ctx))
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget every position of the context (the KV cache)."""
        lib = self._llama_cpp
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)

    # -- text ---------------------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._llm.metadata)

    def tokenize(self, text: str, add_bos: bool, special: bool = True) -> list[int]:
        """``special=False`` for user text: ``<|im_end|>`` or ``</s>`` typed in a question stay plain text."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def token_bytes(self, token: int) -> bytes:
        """The token's text as bytes, however long (the high-level ``detokenize`` cuts at 32 bytes)."""
        lib = self._llama_cpp
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = int(lib.llama_token_to_piece(self._vocab, token, buffer, size, 0, False))
            if n >= 0:
                return buffer.raw[:n]
            size = -n  # too small: llama.cpp says how much it needs

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    @property
    def adds_bos(self) -> bool:
        return bool(self._llama_cpp.llama_vocab_get_add_bos(self._vocab))

    # -- decoding -----------------------------------------------------------------------------------------
    def decode_tokens(self, tokens: list[int], position: int) -> int:
        """Feed ``tokens`` at ``position`` onwards (logits kept for the last); return the next position."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            position = self._decode(len(chunk), position, last, tokens=chunk)
        return position

    def decode_embeddings(self, rows: np.ndarray, position: int) -> int:
        """Feed float rows (n, n_embd) as if they were token embeddings; return the next position."""
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise ConfigError(
                f"visual embeddings are {rows.shape[-1]} wide, {self.path.name} expects {self.n_embd}: "
                "the bundle and the GGUF do not belong together"
            )
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        for start in range(0, rows.shape[0], self.n_batch):
            chunk = rows[start : start + self.n_batch]
            last = start + len(chunk) == rows.shape[0]
            position = self._decode(len(chunk), position, last, embeddings=chunk)
        return position

    def _decode(
        self,
        n: int,
        position: int,
        want_logits: bool,
        tokens: list[int] | None = None,
        embeddings: np.ndarray | None = None,
    ) -> int:
        lib = self._llama_cpp
        if position + n > self.n_ctx:
            raise BackendError(f"context full: {position + n} positions needed, {self.n_ctx} available")
        batch = lib.llama_batch_init(n, self.n_embd if embeddings is not None else 0, 1)
        try:
            if embeddings is not None:
                ctypes.memmove(batch.embd, embeddings.ctypes.data, embeddings.nbytes)
            for i in range(n):
                if tokens is not None:
                    batch.token[i] = tokens[i]
                batch.pos[i] = position + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = want_logits and i == n - 1
            batch.n_tokens = n
            with silenced_native_stderr():
                status = lib.llama_decode(self._ctx, batch)
        finally:
            lib.llama_batch_free(batch)
        if status != 0:
            raise BackendError(f"llama_decode failed with status {status} at position {position}")
        return position + n

    def last_logits(self) -> np.ndarray:
        pointer = self._llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    # -- sampling -----------------------------------------------------------------------------------------
    def sampler(self, temperature: float, top_p: float, seed: int) -> Any:
        """A llama.cpp sampler chain: greedy when temperature <= 0, else top-p, temperature, seeded draw."""
        lib = self._llama_cpp
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def sample(self, chain: Any) -> int:
        """Sample from the last logits; ``llama_sampler_sample`` also accepts the token into the chain."""
        return int(self._llama_cpp.llama_sampler_sample(chain, self._ctx, -1))

    def free_sampler(self, chain: Any) -> None:
        self._llama_cpp.llama_sampler_free(chain)


@functools.cache
def _close_devnull_at_exit() -> None:
    """llama-cpp-python opens two /dev/null handles at import and never closes them; close them at exit so
    Python does not report them as leaked."""
    utils = require("llama_cpp._utils", LLAMA_CPP_PIP)
    handles = [getattr(utils, name, None) for name in ("outnull_file", "errnull_file")]
    atexit.register(lambda: [h.close() for h in handles if h is not None])


def render_chat_template(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    """Render a GGUF's own Jinja chat template (llama-cpp-python's formatter) with a generation prompt."""
    formatter = require("llama_cpp.llama_chat_format", LLAMA_CPP_PIP).Jinja2ChatFormatter(
        template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True
    )
    return str(formatter(messages=messages).prompt)


QUANTIZATIONS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def quantize_gguf(source: Path, target: Path, kind: str) -> Path:
    """llama.cpp's own quantiser: ``source`` (F16 GGUF) -> ``target`` as ``q8_0`` or ``q4_k_m``."""
    lib = require("llama_cpp", LLAMA_CPP_PIP)
    _close_devnull_at_exit()
    if kind not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantisation {kind!r}: choose {', '.join(QUANTIZATIONS)}")
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, QUANTIZATIONS[kind])
    with atomic_path(target) as tmp:
        with silenced_native_stderr():
            status = lib.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            raise BackendError(f"llama.cpp could not quantise {source.name} to {kind} (status {status})")
    return target
