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
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dfrt._optional import require
from dfrt.errors import BackendError, ConfigError
from dfrt.fileio import atomic_path
from dfrt.runtime import options
from dfrt.runtime.defaults import DEFAULT_CTX
from dfrt.runtime.gguf_header import available_memory, checked_context, read_gguf_header
from dfrt.runtime.native_log import silenced_native_stderr, verbose

log = logging.getLogger(__name__)

LLAMA_CPP_PIP = "llama-cpp-python==0.3.36"
T = TypeVar("T")


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Run ``method`` under the model's lock, refusing once the model is closed (its handles are freed)."""

    @functools.wraps(method)
    def wrapper(self: LlamaModel, *args: Any, **kwargs: Any) -> T:
        with self.lock:
            if self._llm is None:
                raise BackendError(f"{self.path.name}: the LLM is closed")
            return method(self, *args, **kwargs)

    return wrapper


class LlamaModel:
    """A GGUF model and one context. Use as a context manager or call :meth:`close`.

    The GGUF header is checked in Python before llama.cpp sees the file (:func:`read_gguf_header`), and
    ``n_ctx`` against the model's trained context and the memory its KV cache needs. Every method holds
    :attr:`lock` (an ``RLock``: calls from several threads queue; :class:`~dfrt.runtime.generate.Generator`
    holds it for a whole answer) and raises :class:`BackendError` once the model is closed, so no freed
    native handle is ever used. :meth:`close` waits for the running call and is idempotent.

    :meth:`open_context` gives another context over the same weights (loaded once): a sibling with its own
    KV cache and its own lock, so answers in two contexts run at once (LLM slots, ``--parallel``).
    """

    _llm: Any = None
    _parent: LlamaModel | None = None  # set on a context opened by :meth:`open_context`

    def __init__(
        self, path: str | Path, n_ctx: int | None = None, n_batch: int = 512, threads: int | None = None
    ) -> None:
        self.lock = threading.RLock()
        self._contexts: list[LlamaModel] = []  # contexts opened over this model's weights
        path = options.path("--llm", path)
        self.path = path
        n_ctx = None if n_ctx is None else options.ctx(n_ctx)
        n_batch = options.integer("n_batch", n_batch, *options.BATCH_RANGE)
        threads = options.threads(threads)
        self._llama_cpp = require("llama_cpp", LLAMA_CPP_PIP)
        _close_devnull_at_exit()
        if not path.is_file():
            raise ConfigError(f"LLM not found: {path}")
        self.header = read_gguf_header(path)
        n_ctx = checked_context(n_ctx, self.header, path.name, DEFAULT_CTX)
        try:
            with silenced_native_stderr():
                llm = self._llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=min(n_batch, n_ctx),
                    n_ubatch=min(n_batch, n_ctx),
                    n_threads=threads or os.cpu_count(),
                    # prompt processing too: without it llama.cpp prefills on every core whatever
                    # ``threads`` says (a Ray replica reserving one CPU, a busy machine)
                    n_threads_batch=threads or os.cpu_count(),
                    verbose=verbose(),
                )
        except Exception as e:  # llama-cpp-python compiles the GGUF's chat templates while loading
            if _from_jinja(e):
                raise ConfigError(
                    f"{path.name}: its chat template cannot be compiled ({type(e).__name__}: {_one_line(e)})"
                ) from e
            if isinstance(e, (ValueError, RuntimeError, OSError)):
                raise BackendError(f"{path}: llama.cpp cannot load this GGUF ({_one_line(e)})") from e
            raise
        self._llm = llm
        lib = self._llama_cpp
        self._model, self._ctx = llm.model, llm.ctx
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_embd = int(lib.llama_model_n_embd_inp(self._model))
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.n_batch = int(lib.llama_n_batch(self._ctx))
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))

    # -- lifecycle ----------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._llm is None

    def open_context(self) -> LlamaModel:
        """Another llama.cpp context over this model's weights, with the same parameters (``n_ctx``,
        threads): its own KV cache and lock. The weights are not loaded again (RSS grows by the KV cache
        and compute buffers only); closing this model closes its contexts first."""
        with self.lock:
            if self._llm is None or self._parent is not None:
                raise BackendError(f"{self.path.name}: contexts are opened on an open model, not a context")
            lib = self._llama_cpp
            need, have = self.header.kv_cache_bytes(self.n_ctx), available_memory()
            if need is not None and have is not None and need > have:
                raise ConfigError(
                    f"--parallel: one more context of {self.n_ctx} positions needs {need / 2**30:.1f} GiB "
                    f"for {self.path.name}'s KV cache, {have / 2**30:.1f} GiB of memory is available: use "
                    "fewer slots or a smaller --ctx"
                )
            params = self._llm.context_params
            with silenced_native_stderr():
                ctx = lib.llama_init_from_model(self._model, type(params).from_buffer_copy(params))
            if not ctx:
                raise BackendError(f"{self.path.name}: llama.cpp could not create another context")
            sibling = LlamaModel.__new__(LlamaModel)
            sibling.lock, sibling._contexts, sibling._parent = threading.RLock(), [], self
            sibling.path, sibling.header, sibling._llama_cpp = self.path, self.header, lib
            sibling._llm, sibling._model, sibling._vocab = self._llm, self._model, self._vocab
            sibling._ctx = ctx
            sibling.n_embd, sibling.n_vocab = self.n_embd, self.n_vocab
            sibling.n_ctx, sibling.n_batch = int(lib.llama_n_ctx(ctx)), int(lib.llama_n_batch(ctx))
            self._contexts.append(sibling)
            return sibling

    def close(self) -> None:
        """Free the model and context (its other contexts first); waits for a call running in another
        thread, in each context; idempotent."""
        with self.lock:
            for context in self._contexts:
                context.close()  # each waits for the answer running in it
            self._contexts.clear()
            llm, self._llm = self._llm, None
            if llm is None:
                return
            with silenced_native_stderr():
                if self._parent is None:
                    llm.close()
                else:  # the weights stay with the parent: free this context alone
                    self._llama_cpp.llama_free(self._ctx)
                    self._ctx = None

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_guarded
    def reset(self) -> None:
        """Forget every position of the context (the KV cache)."""
        lib = self._llama_cpp
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)

    # -- text ---------------------------------------------------------------------------------------------
    @property
    @_guarded
    def metadata(self) -> dict[str, str]:
        return dict(self._llm.metadata)

    @_guarded
    def tokenize(self, text: str, add_bos: bool, special: bool = True) -> list[int]:
        """``special=False`` for user text: ``<|im_end|>`` or ``</s>`` typed in a question stay plain text."""
        data = text.encode("utf-8", "replace")  # a lone surrogate (from a non-UTF-8 argv) becomes "?"
        return list(self._llm.tokenize(data, add_bos=add_bos, special=special))

    @_guarded
    def token_bytes(self, token: int) -> bytes:
        """The token's text as bytes, however long (the high-level ``detokenize`` cuts at 32 bytes)."""
        lib = self._llama_cpp
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = int(lib.llama_token_to_piece(self._vocab, token, buffer, size, 0, False))
            if n >= 0:
                return buffer.raw[:n]
            if -n <= size or -n > 1 << 20:
                raise BackendError(f"{self.path.name}: token {token} has no usable text ({n})")
            size = -n  # too small: llama.cpp says how much it needs

    @_guarded
    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    @property
    @_guarded
    def adds_bos(self) -> bool:
        return bool(self._llama_cpp.llama_vocab_get_add_bos(self._vocab))

    # -- decoding -----------------------------------------------------------------------------------------
    @_guarded
    def decode_tokens(self, tokens: list[int], position: int) -> int:
        """Feed ``tokens`` at ``position`` onwards (logits kept for the last); return the next position."""
        if any(not 0 <= t < self.n_vocab for t in tokens):
            raise BackendError(f"{self.path.name}: token ids must be in [0, {self.n_vocab})")
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            position = self._decode(len(chunk), position, last, tokens=chunk)
        return position

    @_guarded
    def decode_embeddings(self, rows: np.ndarray, position: int) -> int:
        """Feed float rows (n, n_embd) as if they were token embeddings; return the next position."""
        if not isinstance(rows, np.ndarray) or rows.ndim != 2:
            shape = getattr(rows, "shape", type(rows).__name__)
            raise ConfigError(f"visual embeddings must be rows (n, {self.n_embd}), got {shape}")
        if rows.shape[1] != self.n_embd:
            raise ConfigError(
                f"visual embeddings are {rows.shape[1]} wide, {self.path.name} expects {self.n_embd}: "
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
        if position < 0 or position + n > self.n_ctx:
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

    @_guarded
    def last_logits(self) -> np.ndarray:
        pointer = self._llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    # -- sampling -----------------------------------------------------------------------------------------
    @_guarded
    def sampler(self, temperature: float, top_p: float, seed: int) -> Any:
        """A llama.cpp sampler chain: greedy when temperature is 0, else top-p, temperature, seeded draw."""
        temperature, top_p, seed = options.temperature(temperature), options.top_p(top_p), options.seed(seed)
        lib = self._llama_cpp
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    @_guarded
    def sampler_chain(self, sampling: Any) -> Any:
        """The chain for a :class:`~dfrt.runtime.generate.SamplingConfig`: logit biases, penalties, then
        greedy (temperature 0) or top-k, top-p, min-p, temperature and a seeded draw, as llama.cpp orders
        them. Token ids of ``logit_bias`` outside the vocabulary are one :class:`ConfigError`."""
        lib = self._llama_cpp
        bad = [t for t, _ in sampling.logit_bias if t >= self.n_vocab]
        if bad:
            raise ConfigError(f"logit_bias: token {bad[0]} is not in the vocabulary of {self.n_vocab}")
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        try:
            if sampling.logit_bias:
                biases = (lib.llama_logit_bias * len(sampling.logit_bias))(*sampling.logit_bias)
                lib.llama_sampler_chain_add(
                    chain, lib.llama_sampler_init_logit_bias(self.n_vocab, len(biases), biases)
                )
            if sampling.penalised:
                penalties = lib.llama_sampler_init_penalties(
                    self.n_vocab,
                    sampling.repeat_last_n,
                    sampling.repeat_penalty,
                    sampling.frequency_penalty,
                    sampling.presence_penalty,
                )
                lib.llama_sampler_chain_add(chain, penalties)
            if sampling.temperature == 0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
                return chain
            if sampling.top_k:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(sampling.top_k))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
            if sampling.min_p:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(sampling.min_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(sampling.seed))
            return chain
        except BaseException:
            lib.llama_sampler_free(chain)
            raise

    @_guarded
    def sample(self, chain: Any) -> int:
        """Sample from the last logits; ``llama_sampler_sample`` also accepts the token into the chain."""
        return int(self._llama_cpp.llama_sampler_sample(chain, self._ctx, -1))

    def free_sampler(self, chain: Any) -> None:
        """Free a chain from :meth:`sampler` (it holds no model handle: allowed after :meth:`close`)."""
        with self.lock:
            self._llama_cpp.llama_sampler_free(chain)


def _from_jinja(error: BaseException) -> bool:
    """Whether ``error`` came from compiling a chat template (jinja2's own error, or one raised inside it)."""
    if type(error).__module__.split(".")[0] == "jinja2":
        return True
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "jinja2":
            return True
        tb = tb.tb_next
    return False


def _one_line(error: object, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _close_devnull_at_exit() -> None:
    """llama-cpp-python opens two /dev/null handles at import and never closes them; close them at exit so
    Python does not report them as leaked."""
    utils = require("llama_cpp._utils", LLAMA_CPP_PIP)
    handles = [getattr(utils, name, None) for name in ("outnull_file", "errnull_file")]
    atexit.register(lambda: [h.close() for h in handles if h is not None])


MAX_TEMPLATE_CHARS = 1 << 16  # real chat templates are a few KB; the largest known about 20 KB
MAX_RENDERED_CHARS = 1 << 20
TEMPLATE_SECONDS = 10.0  # wall clock for the renderer process (CPU: half of it)
TEMPLATE_MEMORY = 1 << 30  # address space of the renderer process

# Runs in a child process: a chat template is untrusted code (endless loops, "x" * 10**12), so it renders in
# jinja2's ImmutableSandboxedEnvironment with CPU time and memory limits, and the parent kills it on time.
_RENDERER = """
import json, sys
request = json.loads(sys.stdin.read())
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (request["memory"], request["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (request["cpu"], request["cpu"] + 1))
except (ImportError, ValueError, OSError):
    pass
def main():
    from datetime import datetime
    import jinja2, jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    class Generation(jinja2.ext.Extension):
        tags = {"generation"}
        def parse(self, parser):
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)
    def raise_exception(message):
        raise ValueError(message)
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)
    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    text = env.from_string(request["template"]).render(
        messages=request["messages"], bos_token=request["bos"], eos_token=request["eos"],
        add_generation_prompt=True, raise_exception=raise_exception, functions=None, function_call=None,
        tools=None, tool_choice=None,
        strftime_now=lambda f: datetime.now().strftime(f))
    if len(text) > request["max_out"]:
        raise ValueError("it renders to more than %d characters" % request["max_out"])
    return {"text": text}
try:
    out = main()
except MemoryError:
    out = {"error": "it needs more than the memory allowed"}
except BaseException as e:
    out = {"error": "%s: %s" % (type(e).__name__, e)}
sys.stdout.write(json.dumps(out))
"""


def render_chat_template(
    template: str, messages: list[dict[str, str]], bos: str, eos: str, source: str = "the GGUF"
) -> str:
    """Render a GGUF's own Jinja chat template with a generation prompt, as untrusted code: sandboxed, in a
    child process with time and memory limits (results are cached per process). Any failure (syntax
    error, undefined name, ``raise_exception``, too long, too slow, too big) is one :class:`ConfigError`
    naming ``source``."""
    if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
        size = len(template) if isinstance(template, str) else type(template).__name__
        raise ConfigError(
            f"{source}: its chat template is refused ({size} characters, at most {MAX_TEMPLATE_CHARS})"
        )
    require("jinja2", "jinja2")
    request = json.dumps({"template": template, "messages": messages, "bos": bos, "eos": eos})
    result = _render(request)
    if "error" in result:
        raise ConfigError(f"{source}: its chat template cannot be rendered ({_one_line(result['error'])})")
    return str(result["text"])


@functools.lru_cache(maxsize=32)
def _render(request: str) -> dict[str, str]:
    limits = {
        "memory": TEMPLATE_MEMORY,
        "cpu": max(1, int(TEMPLATE_SECONDS / 2)),
        "max_out": MAX_RENDERED_CHARS,
    }
    payload = json.dumps({**json.loads(request), **limits})
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RENDERER],
            input=payload,
            capture_output=True,
            text=True,
            timeout=TEMPLATE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"it did not finish within {TEMPLATE_SECONDS:g} s"}
    except OSError as e:
        return {"error": f"the renderer could not start: {e}"}
    try:
        result = json.loads(done.stdout)
    except ValueError:
        return {"error": f"it ran past the limits of the renderer (exit status {done.returncode})"}
    return result if isinstance(result, dict) else {"error": "the renderer returned nothing usable"}


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
