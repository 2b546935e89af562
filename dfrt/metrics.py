"""Comparison metrics shared by export validation, the INT8 gate and the tests. numpy only."""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64 (1.0 for two all-zero arrays)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denominator = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    if denominator == 0.0:
        return 1.0 if not a64.any() and not b64.any() else 0.0
    return float(a64 @ b64 / denominator)
