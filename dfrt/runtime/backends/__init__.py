"""Graph backends. Each runs one graph: ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dfrt.contracts import GraphSpec


class GraphRunner(Protocol):
    spec: GraphSpec

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:
        """Free what the graph holds (device memory, streams); the runner is unusable afterwards."""
        ...
