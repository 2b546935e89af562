"""The deployment graphs as small torch modules over :class:`DynFocus`, one per contract; example feeds."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dfrt.contracts import GraphSpec
from dfrt.model.dynfocus import DynFocus


class VisionGraph(nn.Module):
    def __init__(self, model: DynFocus) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_frames(pixels)


class ScoringGraph(nn.Module):
    def __init__(self, model: DynFocus) -> None:
        super().__init__()
        self.model = model

    def forward(self, prototypes: torch.Tensor) -> torch.Tensor:
        return self.model.score(prototypes)


class EncodingGraph(nn.Module):
    def __init__(self, model: DynFocus) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.structure_tokens(tokens)


class QuestionGraph(nn.Module):
    def __init__(self, model: DynFocus) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.model.question_queries(tokens, input_ids, attention_mask)


class FusionGraph(nn.Module):
    def __init__(self, model: DynFocus) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, cones: torch.Tensor, rod_structure: torch.Tensor, q_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.project_cones(cones), self.model.project_rods(rod_structure, q_emb)


GRAPH_MODULES: dict[str, type[nn.Module]] = {
    "vision": VisionGraph,
    "scoring": ScoringGraph,
    "encoding": EncodingGraph,
    "question": QuestionGraph,
    "fusion": FusionGraph,
}


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


def axes_at(spec: GraphSpec, which: int) -> dict[str, int]:
    """Every dynamic axis at its min (0), opt (1) or max (2)."""
    return {axis: r[which] for axis, r in spec.ranges}


def run_torch(module: nn.Module, spec: GraphSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(feed[name]) for name in spec.input_names))
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return {name: out.numpy() for name, out in zip(spec.output_names, outputs, strict=True)}
