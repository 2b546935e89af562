"""Parity of exported graphs: onnxruntime against PyTorch, per output, at several axis sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfrt.contracts import GraphSpec
from dfrt.errors import ParityError
from dfrt.export.graphs import GraphModule, example_feed, run_torch
from dfrt.metrics import cosine
from dfrt.model.dynfocus import DynFocus
from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph


@dataclass(frozen=True)
class OutputParity:
    graph: str
    output: str
    axes: dict[str, int]
    max_abs: float
    cosine: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance and self.cosine >= MIN_COSINE

    def line(self) -> str:
        axes = ", ".join(f"{k}={v}" for k, v in self.axes.items())
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"{self.graph}.{self.output} [{axes}]: max abs err {self.max_abs:.2e} "
            f"(tol {self.tolerance:.1e}), cosine {self.cosine:.7f} {verdict}"
        )


MIN_COSINE = 0.9999


def validation_axes(spec: GraphSpec) -> list[dict[str, int]]:
    """Two feeds per graph: every axis at its minimum, then at a small size above it (cheap at full size)."""
    low = {axis: r[0] for axis, r in spec.ranges}
    small = {axis: min(r[2], max(r[0] + 2, 3 if axis != "text" else r[1])) for axis, r in spec.ranges}
    return [low, small]


def validate_graph(model: DynFocus, spec: GraphSpec, onnx_path: Path) -> list[OutputParity]:
    module = GraphModule(model, spec.name).eval()
    return validate_module(module, spec, onnx_path, model.config.qformer.vocab_size)


def validate_module(
    module: Any,
    spec: GraphSpec,
    onnx_path: Path,
    vocab_size: int = 2,
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> list[OutputParity]:
    """onnxruntime against ``module`` on random feeds at :func:`validation_axes` (or the given ``feeds``)."""
    module = module.eval()
    runner = OnnxRuntimeGraph(onnx_path, spec)
    results = []
    if feeds is None:
        feeds = [
            example_feed(spec, axes, vocab_size, seed=100 + i) for i, axes in enumerate(validation_axes(spec))
        ]
    for feed in feeds:
        axes = {
            str(d): int(feed[t.name].shape[j])
            for t in spec.inputs
            for j, d in enumerate(t.shape)
            if isinstance(d, str)
        }
        expected = run_torch(module, spec, feed)
        got = runner.run(feed)
        for name in spec.output_names:
            ref = expected[name]
            results.append(
                OutputParity(
                    graph=spec.name,
                    output=name,
                    axes=axes,
                    max_abs=float(np.max(np.abs(ref - got[name]))),
                    cosine=cosine(ref, got[name]),
                    tolerance=spec.atol + spec.rtol * float(np.max(np.abs(ref))),
                )
            )
    return results


def require_parity(results: list[OutputParity]) -> None:
    failed = [r for r in results if not r.ok]
    if failed:
        raise ParityError("ONNX output differs from PyTorch: " + "; ".join(r.line() for r in failed))
