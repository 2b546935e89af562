"""CCE structure tokens: two-level DPC-kNN token clustering, written with static shapes.

Per frame, the P*P patch tokens are clustered into ``clusters1`` groups (kNN ``knn1``), the group means are
clustered again into ``clusters2`` groups (kNN ``knn2``), and the 22 output rows are laid out as, for each
level-2 cluster c: [its centroid, then its level-1 members in ascending order], each block scaled by a
softmax gate. Everything is one-hot matrices and matmuls (no ``index_add_``, no loops over variable-length
groups, no random tie-break), so the module exports to ONNX and TensorRT with fixed output shapes.
``tests.model.cluster_direct`` is the loop-based formulation that mirrors the reference code; a test proves
the two agree.

Ties are broken by token index, never by noise: a token outranks an equal one with a higher index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfrt.config import CCEConfig

MERGE_EPS = 1e-6  # added to the cluster size, as the reference does


def _strictly_upper(n: int, like: torch.Tensor) -> torch.Tensor:
    """(n, n) with ones where row < column: ``v @ U`` is the exclusive cumulative sum of ``v``."""
    idx = torch.arange(n, device=like.device)
    return (idx[:, None] < idx[None, :]).to(like.dtype)


SMALL_SET = 32  # token sets up to this size get exact difference-based distances


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N, N) squared Euclidean distances.

    Small sets (the level-2 clustering of 16 cluster means, which are often near-duplicates) use exact
    differences. Large sets (the patch tokens) use the Gram matrix, which needs no (B, N, N, D) buffer: the
    tokens are centred first to limit cancellation, and the squared norms are read off the Gram diagonal so
    that identical tokens are exactly 0 apart.
    """
    if x.shape[1] <= SMALL_SET:
        return (x[:, :, None, :] - x[:, None, :, :]).pow(2).sum(dim=-1)
    x = x - x.mean(dim=1, keepdim=True)
    gram = x @ x.transpose(1, 2)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    sq = (gram * eye).sum(-1)
    return (sq[:, :, None] + sq[:, None, :] - 2.0 * gram).clamp_min(0.0)


def _outranks(values: torch.Tensor) -> torch.Tensor:
    """(B, N) -> bool (B, N, N): [i, j] says token j ranks above token i (larger, or equal and j < i)."""
    idx = torch.arange(values.shape[-1], device=values.device)
    vi, vj = values[:, :, None], values[:, None, :]
    return (vj > vi) | ((vj == vi) & (idx[None, None, :] < idx[None, :, None]))


def _first_min_onehot(values: torch.Tensor) -> torch.Tensor:
    """(B, C, N) -> one-hot over C of the minimum in each column; equal minima go to the lowest c."""
    is_min = (values == values.amin(dim=1, keepdim=True)).to(values.dtype)
    lower = _strictly_upper(values.shape[1], values).transpose(0, 1)  # [c, c'] = 1 where c' < c
    earlier = lower @ is_min
    return is_min * (earlier == 0).to(values.dtype)


def dpc_knn(x: torch.Tensor, num_clusters: int, k: int) -> torch.Tensor:
    """Density-peaks clustering with kNN density. (B, N, D) -> assignment one-hot (B, num_clusters, N).

    density = exp(-mean squared distance to the k nearest tokens, self included); delta = distance to the
    nearest higher-density token (the frame's largest distance if none); centres = the ``num_clusters``
    largest density * delta; every token joins its nearest centre; centres are their own cluster.
    Distances are scaled by 1/sqrt(D), as the reference scales them.
    """
    sq = pairwise_sq_distances(x) / x.shape[-1]
    dist = sq.sqrt()
    nearest_sq = (-sq).topk(k, dim=-1).values  # minus the k smallest squared distances
    density = nearest_sq.mean(dim=-1).exp()
    far = dist.amax(dim=(1, 2), keepdim=True)
    delta = torch.where(_outranks(density), dist, far).amin(dim=-1)
    rank = _outranks(delta * density).sum(dim=-1)  # 0 = best centre candidate
    slots = torch.arange(num_clusters, device=x.device)
    centres = (rank[:, None, :] == slots[None, :, None]).to(x.dtype)  # (B, C, N)
    nearest = _first_min_onehot(centres @ dist)
    is_centre = centres.sum(dim=1, keepdim=True)
    return centres + (1.0 - is_centre) * nearest


def merge(x: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Cluster means: (B, N, D), one-hot (B, C, N) -> (B, C, D)."""
    return (assignment @ x) / (assignment.sum(dim=-1, keepdim=True) + MERGE_EPS)


def block_layout(assignment2: torch.Tensor) -> torch.Tensor:
    """Permutation (B, C2 + C1, C2 + C1) taking rows [centroids2 | tokens1] to the block layout:
    for each level-2 cluster c, its centroid then its level-1 members in ascending order."""
    c2 = assignment2.shape[1]
    sizes = assignment2.sum(dim=-1)  # (B, C2) level-1 members per cluster
    before = sizes @ _strictly_upper(c2, sizes)  # rows taken by earlier blocks' members
    cluster_ids = torch.arange(c2, device=assignment2.device, dtype=assignment2.dtype)
    centroid_dest = cluster_ids + before
    members_before = assignment2 @ _strictly_upper(assignment2.shape[2], assignment2)  # (B, C2, C1)
    member_dest = (assignment2 * (centroid_dest[:, :, None] + 1.0 + members_before)).sum(dim=1)
    dest = torch.cat([centroid_dest, member_dest], dim=1)  # (B, S) destination row of each source row
    rows = torch.arange(dest.shape[1], device=dest.device, dtype=dest.dtype)
    return (dest[:, None, :] == rows[None, :, None]).to(assignment2.dtype)


class StructureTokens(nn.Module):
    """The reference's ``Merger``: patch tokens (B, P*P, W) -> structure tokens (B, C1 + C2, W), in fp32.

    ``score`` is the gate Linear(C2, C2) (checkpoint key ``merge.score``).
    """

    def __init__(self, cfg: CCEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.score = nn.Linear(cfg.clusters2, cfg.clusters2)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.float()
        with torch.no_grad():
            a1 = dpc_knn(x, self.cfg.clusters1, self.cfg.knn1)
        m1 = merge(x, a1)
        with torch.no_grad():
            a2 = dpc_knn(m1, self.cfg.clusters2, self.cfg.knn2)
        m2 = merge(m1, a2)
        gate = F.softmax(self.score(m2.mean(dim=-1)), dim=-1)  # (B, C2)
        member_gate = (a2 * gate[:, :, None]).sum(dim=1)  # (B, C1): each level-1 token's block gate
        rows = torch.cat([m2, m1], dim=1) * torch.cat([gate, member_gate], dim=1)[:, :, None]
        return block_layout(a2) @ rows
