"""The DynFocus visual path: frames + question -> visual embeddings in the LLM width, in temporal order.

Methods follow the deployment graphs (vision, question, scoring, encoding, fusion); ``forward`` composes
them with the host-side selection of :mod:`dfrt.runtime.selection`, exactly as the runtime does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfrt.config import DynFocusConfig
from dfrt.errors import ConfigError
from dfrt.model.cluster import StructureTokens
from dfrt.model.projector import RodAttention, mlp2x_gelu
from dfrt.model.qformer import QFormer
from dfrt.model.scorer import FrameScorer, question_scores
from dfrt.model.topk import perturbed_topk
from dfrt.model.vit import VisionTower
from dfrt.runtime.selection import (
    EventPrototypes,
    KeyFrameSelection,
    interleave_order,
    kmeans_prototypes,
    select_key_frames,
    tokens_per_frame,
)


@dataclass
class DynFocusOutput:
    """Visual embeddings and everything needed to explain them."""

    embeds: torch.Tensor  # (N_vis, D_llm), temporal order
    scores: torch.Tensor  # (T',) min-max normalised prototype scores
    prototypes: EventPrototypes
    selection: KeyFrameSelection
    tokens_per_frame: np.ndarray  # (T,) 38 (cone), 2 (rod) or 40 (single image)
    indicators: torch.Tensor | None = None  # (k, T') soft top-k, training mode only


SCORING_MODES = ("trained", "question")
POSITION_FREQUENCIES = 4


def grid_position_features(grid: int) -> torch.Tensor:
    """(1 + grid^2, 2 + 4 * POSITION_FREQUENCIES): a zero row for CLS, then each patch (raster order) as its
    row and column in [0, 1] and sin/cos of pi * k times each, k = 1..POSITION_FREQUENCIES."""
    steps = torch.arange(grid, dtype=torch.float32) / max(1, grid - 1)
    rows, cols = (c.flatten() for c in torch.meshgrid(steps, steps, indexing="ij"))
    k = torch.arange(1, POSITION_FREQUENCIES + 1, dtype=torch.float32) * torch.pi
    waves = [f(x[:, None] * k) for x in (rows, cols) for f in (torch.sin, torch.cos)]
    patches = torch.cat([rows[:, None], cols[:, None], *waves], dim=1)
    return torch.cat([torch.zeros(1, patches.shape[1]), patches])


Selection = Literal["hard", "perturbed", "straight-through"]


class DynFocus(nn.Module):
    """``scoring``: ``trained`` (the paper's DPE scorer) or ``question`` (question-aware scores from the
    Q-Former queries and neighbour redundancy, :func:`~dfrt.model.scorer.question_scores`; needs no trained
    scorer, for LLaMA-VID weights)."""

    def __init__(self, config: DynFocusConfig, scoring: str = "trained") -> None:
        super().__init__()
        if scoring not in SCORING_MODES:
            raise ConfigError(f"unknown scoring mode {scoring!r}: choose {', '.join(SCORING_MODES)}")
        self.config = config
        self.scoring = scoring
        width = config.vision.width
        self.vision_tower = VisionTower(config.vision)
        self.output_positions: nn.Parameter | None = None
        if config.vision.output_positions:  # zero: the tower's tokens unchanged until training moves it
            table = grid_position_features(config.vision.grid)
            self.register_buffer("position_table", table, persistent=False)
            self.output_positions = nn.Parameter(torch.zeros(table.shape[1], width))
        self.qformer = QFormer(config.qformer, width)
        self.scorer = FrameScorer(width)
        self.structure = StructureTokens(config.cce)
        self.rod_attention = RodAttention(width)
        self.projector = mlp2x_gelu(width, config.llm_width)
        self.rod_value_proj = nn.Linear(width, config.llm_width)
        self.cone_positions: nn.Parameter | None = None
        if config.cone_positions:  # zero: the cones unchanged until training moves it
            self.cone_positions = nn.Parameter(torch.zeros(config.cone_tokens, config.llm_width))

    # -- vision graph -------------------------------------------------------------------------------------
    def encode_frames(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (T, 3, S, S) -> tokens (T, 1+P*P, W), pooled grid (T, G*G, W)."""
        tokens = self.place(self.vision_tower(pixels))
        return tokens, self.pool(tokens)

    def place(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tower's tokens plus the output position embedding (``vision.output_positions``): fixed
        sine/cosine features of each patch's row and column, through a learned map that starts at zero."""
        if self.output_positions is None:
            return tokens
        return tokens + self.position_table @ self.output_positions

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Average-pool the P x P patch grid (CLS dropped) to G x G."""
        t, _, w = tokens.shape
        p, g = self.config.vision.grid, self.config.dpe.pooled_grid
        grid = tokens[:, 1:].transpose(1, 2).reshape(t, w, p, p)
        return F.avg_pool2d(grid, kernel_size=p // g).flatten(2).transpose(1, 2)

    # -- host: event prototypes ---------------------------------------------------------------------------
    def frame_prototypes(self, pooled: torch.Tensor) -> tuple[EventPrototypes, torch.Tensor]:
        """Deterministic k-means beyond ``max_prototypes`` frames; prototype features are centroids."""
        dpe = self.config.dpe
        prototypes = kmeans_prototypes(
            pooled.detach().float().cpu().numpy(), dpe.max_prototypes, dpe.kmeans_iters
        )
        if prototypes.num_prototypes == pooled.shape[0]:
            return prototypes, pooled
        members = F.one_hot(torch.as_tensor(prototypes.assignment), prototypes.num_prototypes).T.to(pooled)
        counts = members.sum(dim=1)
        means = (members @ pooled.flatten(1)) / counts.clamp_min(1)[:, None]
        seeds = pooled[torch.as_tensor(prototypes.seeds)].flatten(1)
        features = torch.where(counts[:, None] > 0, means, seeds).view(-1, *pooled.shape[1:])
        return prototypes, features

    # -- scoring graph ------------------------------------------------------------------------------------
    def score(self, prototype_features: torch.Tensor, q_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(T', G*G, W) [, q_emb (T', Nq, W) of the prototypes' seed frames] -> scores (T',)."""
        if self.scoring == "question":
            if q_emb is None:
                raise ConfigError("question-aware scoring needs the prototypes' q_emb")
            return question_scores(prototype_features, q_emb, self.rod_attention.key_proj)
        return self.scorer(prototype_features)

    # -- encoding graph -----------------------------------------------------------------------------------
    def structure_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (T, 1+P*P, W) -> 22 structure tokens per frame (T, 22, W)."""
        return self.structure(tokens[:, 1:])

    def question_queries(
        self, tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Q-Former per frame: (R, 1+P*P, W), (1, L), (1, L) -> q_emb (R, Nq, W)."""
        return self.qformer(tokens, input_ids, attention_mask)

    # -- fusion graph -------------------------------------------------------------------------------------
    def project_cones(self, cones: torch.Tensor) -> torch.Tensor:
        """Cone tokens (k, 38, W) -> (k, 38, D) through the ``mlp2x_gelu`` projector, plus each slot's
        position embedding (``cone_positions``)."""
        projected = self.projector(cones)
        if self.cone_positions is None:
            return projected
        return projected + self.cone_positions

    def project_rods(self, structure: torch.Tensor, q_emb: torch.Tensor) -> torch.Tensor:
        """Rod frames' structure tokens (R, 22, W) and q_emb (R, Nq, W) -> rods (R, 2, D):
        [projector(mean structure token), value projector(question-attended context)]."""
        mean_token = self.projector(structure.mean(dim=1))
        context = self.rod_value_proj(self.rod_attention(structure, q_emb))
        return torch.stack([mean_token, context], dim=1)

    # -- whole path ---------------------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, *args: Any, **kwargs: Any) -> DynFocusOutput:
        """pixels (T, 3, S, S) CLIP-normalised, then :meth:`forward_tokens`'s arguments -> its output.

        ``selection="perturbed"`` is the training mode: cone pooled tokens are the soft top-k mixture of the
        prototypes (structure tokens mixed with the detached indicators, as the reference does), while the
        hard top-k decides which frames are key (the reference's argmax over soft indicators can repeat).
        ``selection="straight-through"`` (dfrt's training mode for the demo) gives the cones the values of the
        hard key frames, as at run time, and the perturbed top-k's gradients to the scorer.
        ``frames`` replaces DPE's choice of key frames (the uniform and random baselines); ``rods=False``
        leaves the other frames out, so the video is the key frames' cones only.
        """
        tokens, pooled = self.encode_frames(pixels)
        return self.forward_tokens(tokens, pooled, *args, **kwargs)

    def forward_tokens(
        self,
        tokens: torch.Tensor,
        pooled: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        selection: Selection = "hard",
        generator: torch.Generator | None = None,
        frames: KeyFrameSelection | None = None,
        rods: bool = True,
        key_count: int | None = None,
    ) -> DynFocusOutput:
        """:meth:`forward` from the vision graph's outputs (training batches the vision tower over videos).
        ``key_count``: how many key frames DPE selects (a visual-token budget's, :mod:`dfrt.runtime.budget`;
        None: the config's key-frame ratio), as the runtime's ``encode_frames(frames, key_count)``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        num_frames = tokens.shape[0]
        prototypes, features = self.frame_prototypes(pooled)
        q_all = None
        if self.scoring == "question":  # the Q-Former on every frame: seeds for scores, rods below
            q_all = self.question_queries(tokens, input_ids, attention_mask)
            scores = self.score(features, q_all[torch.as_tensor(prototypes.seeds)])
        else:
            scores = self.score(features)
        chosen = frames or select_key_frames(
            scores.detach().cpu().numpy(), prototypes, num_frames, self.config.dpe.key_ratio, key_count
        )
        structure = self.structure_tokens(tokens)
        selected = torch.as_tensor(chosen.selected)  # in the time order of the key frames
        indicators = None
        if selection in ("perturbed", "straight-through") and frames is None:
            dpe = self.config.dpe
            indicators = perturbed_topk(
                scores[None],
                selected.numel(),
                dpe.topk_samples,
                dpe.topk_sigma,
                generator,
                gradient=dpe.topk_gradient,
            )[0]
            cone_pooled = torch.einsum("kt,tgw->kgw", indicators, features)
            if selection == "straight-through":  # forward: the hard cones; backward: the soft mixture's
                hard = features[selected]
                cone_pooled = hard + (cone_pooled - cone_pooled.detach())
                cone_structure = structure[torch.as_tensor(chosen.key_frames)]
            else:
                seed_structure = structure[torch.as_tensor(prototypes.seeds)]  # (T', 22, W)
                cone_structure = torch.einsum("kt,tsw->ksw", indicators.detach(), seed_structure)
        else:
            cone_pooled, cone_structure = features[selected], structure[torch.as_tensor(chosen.key_frames)]
        cones = torch.cat([cone_pooled, cone_structure], dim=1)  # (k, 38, W), key frames ascending
        per_frame = tokens_per_frame(chosen, self.config.cone_tokens)
        if not rods:
            per_frame = np.zeros_like(per_frame)
            per_frame[chosen.key_frames] = self.config.cone_tokens
            return DynFocusOutput(
                self.project_cones(cones).flatten(0, 1), scores, prototypes, chosen, per_frame, indicators
            )
        rod_frames = torch.as_tensor(chosen.rod_sources)
        if q_all is None:
            q_emb = self.question_queries(tokens[rod_frames], input_ids, attention_mask)
        else:
            q_emb = q_all[rod_frames]
        rods_out = self.project_rods(structure[rod_frames], q_emb)
        rows = torch.cat([self.project_cones(cones).flatten(0, 1), rods_out.flatten(0, 1)])
        order = torch.as_tensor(interleave_order(chosen, self.config.cone_tokens))
        return DynFocusOutput(
            embeds=rows.index_select(0, order),
            scores=scores,
            prototypes=prototypes,
            selection=chosen,
            tokens_per_frame=per_frame,
            indicators=indicators,
        )
