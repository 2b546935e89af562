"""Answers in parallel over one loaded LLM: slots (one llama.cpp context each) and the gate a parallel
:class:`~dfrt.runtime.pipeline.Pipeline` counts its calls through.

A :class:`SlotPool` holds N generators, each over its own context (KV cache, lock) of one
:class:`~dfrt.runtime.llm.LlamaModel`, the weights loaded once (:meth:`LlamaModel.open_context`). A thread
takes a free slot for one answer and gives it back after; a thread that already holds one (a callback's own
call) gets the same one again. :class:`CallGate` lets calls run at once, refuses new ones once closing has
begun and lets the closer wait until the calls of other threads have ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dfrt.errors import BackendError
from dfrt.runtime import options
from dfrt.runtime.generate import Generator
from dfrt.runtime.llm import LlamaModel

__all__ = ["PARALLEL_RANGE", "CallGate", "SlotPool", "check_parallel"]

PARALLEL_RANGE = (1, 64)
CLOSED = "pipeline is closed"


def check_parallel(value: object) -> int:
    """``--parallel``: answers generated at once (LLM slots), 1 to 64."""
    return options.integer("--parallel", value, *PARALLEL_RANGE)


class SlotPool:
    """``size`` generators over ``llm`` and ``size - 1`` more contexts of it; :meth:`slot` lends one."""

    def __init__(self, llm: LlamaModel, size: int, generator: Callable[[LlamaModel], Generator]) -> None:
        size = check_parallel(size)
        models = [llm]
        try:
            models += [llm.open_context() for _ in range(size - 1)]
        except BaseException:
            for model in models[1:]:
                model.close()
            raise
        self.size = size
        self.models = models
        self.generators = [generator(model) for model in models]
        self._free = list(reversed(self.generators))  # popped from the end: slot 0 first
        self._held: dict[int, list[Generator | int]] = {}  # thread -> [its slot, depth]
        self._changed = threading.Condition()
        self._closed = False
        self.busy = 0  # slots lent now (read by gauges)

    @contextmanager
    def slot(self) -> Iterator[Generator]:
        """A free slot's generator for the block (waits for one); the thread's own slot if it holds one.
        Raises :class:`BackendError` once the pool is closed."""
        me = threading.get_ident()
        with self._changed:
            held = self._held.get(me)
            if held is None:
                self._changed.wait_for(lambda: bool(self._free) or self._closed)
                if self._closed:
                    raise BackendError(CLOSED)
                held = self._held[me] = [self._free.pop(), 0]
                self.busy += 1
            held[1] += 1  # type: ignore[operator]
        try:
            yield held[0]  # type: ignore[misc]
        finally:
            with self._changed:
                held[1] -= 1  # type: ignore[operator]
                if held[1] == 0:
                    del self._held[me]
                    self._free.append(held[0])  # type: ignore[arg-type]
                    self.busy -= 1
                    self._changed.notify()

    def close(self) -> None:
        """Wake threads waiting for a slot (they raise), then free every context; each waits for the answer
        running in it (one running in this very thread ends at its next step); idempotent."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self.models[0].close()  # its other contexts first


class CallGate:
    """Counts the calls running in each thread; :meth:`close` refuses new ones and waits for the others."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._calls: dict[int, int] = {}  # thread -> calls it is inside (nested calls count)
        self._closed = False
        self._freed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def call(self) -> Iterator[None]:
        """One call; :class:`BackendError` once closing has begun."""
        me = threading.get_ident()
        with self._changed:
            if self._closed:
                raise BackendError(CLOSED)
            self._calls[me] = self._calls.get(me, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._calls[me] -= 1
                if not self._calls[me]:
                    del self._calls[me]
                self._changed.notify_all()

    def close(self, stop: Callable[[], None], free: Callable[[], None]) -> None:
        """Refuse new calls, run ``stop`` (end what the calls wait for), then ``free`` once the calls of other
        threads have ended (those of this thread, a callback closing, end at their next step). A later
        close waits until ``free`` has run, unless its own thread is inside a call (the first may wait for
        it)."""
        me = threading.get_ident()
        with self._changed:
            first, self._closed = not self._closed, True
            inside = me in self._calls
        if not first:
            if not inside:
                self._freed.wait()
            return
        try:
            try:
                stop()
            finally:
                with self._changed:
                    self._changed.wait_for(lambda: not any(thread != me for thread in self._calls))
                free()
        finally:
            self._freed.set()
