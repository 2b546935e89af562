"""The deployment graphs as small torch modules over :class:`DynFocus`, one per contract; example feeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dfrt.contracts import GraphSpec
from dfrt.model.dynfocus import DynFocus

# graph name -> what it computes, in terms of the reference model's methods
GRAPH_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "vision": lambda m, pixels: m.encode_frames(pixels),
    "scoring": lambda m, *inputs: m.score(*inputs),  # (prototypes) or (prototypes, q_emb) by scoring mode
    "encoding": lambda m, tokens: m.structure_tokens(tokens),
    "question": lambda m, tokens, input_ids, attention_mask: m.question_queries(
        tokens, input_ids, attention_mask
    ),
    "fusion": lambda m, cones, rod_structure, q_emb: (
        m.project_cones(cones),
        m.project_rods(rod_structure, q_emb),
    ),
}


class GraphModule(nn.Module):
    """One deployment graph as a module: its inputs in contract order, the model's method inside."""

    def __init__(self, model: DynFocus, graph: str) -> None:
        super().__init__()
        self.model = model
        self.compute = GRAPH_FUNCTIONS[graph]

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.compute(self.model, *inputs)


def example_feed(
    spec: GraphSpec, axes: dict[str, int], vocab_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for ``spec`` at the given axis sizes (ids inside the vocabulary, masks all ones)."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        shape = tuple(d if isinstance(d, int) else axes[d] for d in tensor.shape)
        if tensor.name == "attention_mask":
            feed[tensor.name] = np.ones(shape, dtype=np.int64)
        elif tensor.dtype == "int64":
            feed[tensor.name] = rng.integers(1000, vocab_size, size=shape, dtype=np.int64)
        else:
            feed[tensor.name] = rng.standard_normal(shape, dtype=np.float32)
    return feed


def run_torch(module: nn.Module, spec: GraphSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(feed[name]) for name in spec.input_names))
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return {name: out.numpy() for name, out in zip(spec.output_names, outputs, strict=True)}
