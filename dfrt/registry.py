"""The registry of model families: each one a folder under ``dfrt/families/``, found here by the name a
bundle's manifest records. stdlib only: the manifest and the runtime import it; it imports a family's
modules lazily (by name), so no layer below depends on the families above it.

A family has three sides, imported lazily and only when needed, as vLLM's registry imports its models:

- ``spec`` (stdlib + numpy): its config dataclass, graph contracts and preprocessing, read when a manifest
  is checked (:mod:`dfrt.manifest`), so every runtime can validate any family's bundle cheaply;
- ``runtime`` (torch-free): ``open_visual(bundle, graphs, **options)``, the visual side the
  :class:`~dfrt.runtime.pipeline.Pipeline` drives (``load_video`` then ``embed`` per question);
- ``export`` (torch): ``export_checkpoint(...)``, what ``dfrt export --checkpoint`` calls for a checkpoint
  whose ``config.json`` names one of the family's ``ARCHITECTURES``.

Adding a family is one folder with those three modules plus one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from dfrt.errors import ConfigError

FAMILIES: dict[str, str] = {
    "dynfocus": "dfrt.families.dynfocus",
    "smolvlm": "dfrt.families.smolvlm",
    "internvl": "dfrt.families.internvl",
}
DEFAULT_FAMILY = "dynfocus"  # bundles written before families existed


def _side(family: str, side: str) -> ModuleType:
    if not isinstance(family, str) or family not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ConfigError(f"unknown model family {str(family)[:40]!r}: this dfrt knows {known}")
    return importlib.import_module(f"{FAMILIES[family]}.{side}")


def spec(family: str) -> ModuleType:
    """The family's manifest side: ``config_from_dict``, ``check_config``, ``graph_specs``,
    ``preprocess``, ``SCORING_MODES``."""
    return _side(family, "spec")


def runtime(family: str) -> ModuleType:
    """The family's torch-free run side: ``open_visual``."""
    return _side(family, "runtime")


def export(family: str) -> ModuleType:
    """The family's export side (needs torch): ``export_checkpoint``."""
    return _side(family, "export")


def open_visual(bundle: Any, graphs: Any, **options: Any) -> Any:
    """The visual side of ``bundle``'s family over its opened ``graphs`` (a ``GraphSet`` or a dict of
    runners): what :class:`~dfrt.runtime.pipeline.Pipeline`, ``dfrt build`` and its gate drive."""
    return runtime(bundle.manifest.family).open_visual(bundle, graphs, **options)


def family_of_checkpoint(config: Any) -> str | None:
    """The family whose ``ARCHITECTURES`` (or ``MODEL_TYPES``) a Hugging Face ``config.json`` names."""
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    for name in FAMILIES:
        side = spec(name)
        if any(a in getattr(side, "ARCHITECTURES", ()) for a in architectures if isinstance(a, str)):
            return name
        if isinstance(model_type, str) and model_type in getattr(side, "MODEL_TYPES", ()):
            return name
    return None
