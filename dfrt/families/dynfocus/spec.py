"""DynFocus's manifest side: config, the five graph contracts, CLIP preprocessing. stdlib + numpy."""

from __future__ import annotations

from typing import Any

from dfrt.config import DynFocusConfig
from dfrt.contracts import SCORING_MODES, GraphSpec
from dfrt.contracts import graph_specs as dynfocus_graph_specs

# DynFocus and LLaMA-VID checkpoints are recognised by their tensors' shapes (dfrt.model.weights), not by
# config.json: the export falls back to them when no other family claims a checkpoint
ARCHITECTURES: tuple[str, ...] = ()
MODEL_TYPES: tuple[str, ...] = ()
# the graphs `dfrt build` converts to FP16 / INT8 (scoring and clustering stay FP32: discrete decisions)
PRECISION_GRAPHS = {"int8": ("vision", "question", "fusion"), "fp16": ("vision", "question", "fusion")}
__all__ = ["ARCHITECTURES", "MODEL_TYPES", "PRECISION_GRAPHS", "SCORING_MODES"]


def config_from_dict(data: Any) -> DynFocusConfig:
    return DynFocusConfig.from_dict(data)


def check_config(config: DynFocusConfig) -> None:
    from dfrt.manifest import check_config_limits

    check_config_limits(config)


def graph_specs(config: DynFocusConfig, scoring: str) -> dict[str, GraphSpec]:
    return dynfocus_graph_specs(config, scoring)


def preprocess(config: DynFocusConfig) -> Any:
    from dfrt.manifest import Preprocess

    return Preprocess(config.vision.image_size, config.image_mean, config.image_std)
