"""The structure-token clustering written the direct way, close to the authors' code: ``torch.cdist``,
``topk``/``argmin``, ``index_add_`` and Python loops over variable-length groups.

Not exportable; it exists to document the method plainly and to prove, in the tests, that the static
formulation in :mod:`dfrt.model.cluster` computes the same thing. Same deterministic tie-breaks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dfrt.model.cluster import MERGE_EPS


def dpc_knn_direct(x: torch.Tensor, num_clusters: int, k: int) -> torch.Tensor:
    """One frame (N, D) -> cluster index (N,) in [0, num_clusters)."""
    n, d = x.shape
    dist = torch.cdist(x[None], x[None], compute_mode="donot_use_mm_for_euclid_dist")[0] / d**0.5
    density = (-(dist.topk(k, dim=-1, largest=False).values ** 2).mean(dim=-1)).exp()
    far = dist.max()
    delta = torch.empty(n)
    for i in range(n):
        higher = [j for j in range(n) if density[j] > density[i] or (density[j] == density[i] and j < i)]
        delta[i] = dist[i, higher].min() if higher else far
    score = delta * density
    centres = torch.sort(score, descending=True, stable=True).indices[:num_clusters]
    cluster = dist[centres].argmin(dim=0)
    cluster[centres] = torch.arange(num_clusters)
    return cluster


def merge_direct(x: torch.Tensor, cluster: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Cluster means with ``index_add_``: (N, D), (N,) -> (num_clusters, D)."""
    sums = torch.zeros(num_clusters, x.shape[1]).index_add_(0, cluster, x)
    sizes = torch.zeros(num_clusters).index_add_(0, cluster, torch.ones(x.shape[0]))
    return sums / (sizes[:, None] + MERGE_EPS)


def structure_tokens_direct(
    patches: torch.Tensor, gate: torch.nn.Linear, clusters1: int, knn1: int, clusters2: int, knn2: int
) -> torch.Tensor:
    """(B, N, D) -> (B, clusters1 + clusters2, D), one frame at a time."""
    frames = []
    for x in patches.float():
        m1 = merge_direct(x, dpc_knn_direct(x, clusters1, knn1), clusters1)
        a2 = dpc_knn_direct(m1, clusters2, knn2)
        m2 = merge_direct(m1, a2, clusters2)
        weights = F.softmax(gate(m2.mean(dim=-1)), dim=-1)
        blocks = []
        for c in range(clusters2):
            members = torch.where(a2 == c)[0]
            blocks.append(torch.cat([m2[c : c + 1], m1[members]]) * weights[c])
        frames.append(torch.cat(blocks))
    return torch.stack(frames)
