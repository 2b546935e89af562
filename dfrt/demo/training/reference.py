"""The demo's PyTorch model with its weights (``dfrt/demo/training/demo_weights.safetensors``: in a source
checkout, not in the wheel, which carries only what the torch-free runtime needs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dfrt._optional import require
from dfrt.config import DynFocusConfig, demo
from dfrt.errors import ConfigError
from dfrt.fileio import sha256_file
from dfrt.runtime.bundle import Bundle

WEIGHTS_NAME = "demo_weights.safetensors"
POSITIONS_KEY = "output_positions"  # DynFocus's output position map, in weights that have one
CONE_POSITIONS_KEY = "cone_positions"  # DynFocus's cone slot embedding, in weights that have one
OPTIONAL_KEYS = (POSITIONS_KEY, CONE_POSITIONS_KEY)  # zero when weights from before them are loaded


def shipped_weights(must_exist: bool = True) -> Path:
    """The demo's fp16 PyTorch weights, beside this module in a source checkout."""
    path = Path(__file__).with_name(WEIGHTS_NAME)
    if must_exist and not path.is_file():
        raise ConfigError(
            f"{path} is missing: the demo's PyTorch weights come with a source checkout of dfrt"
        )
    return path


def load_reference(bundle: Bundle, weights: Path | None = None):  # type: ignore[no-untyped-def]
    """``DynFocus`` in eval mode with the weights the bundle was exported from (checked by sha256)."""
    require("torch", "dfrt[export]")
    safetensors = require("safetensors.torch", "dfrt[export]")
    from dfrt.model.dynfocus import DynFocus

    weights = weights or shipped_weights()
    expected = bundle.manifest.weights.get("weights_sha256")
    if not weights.is_file():
        raise ConfigError(f"PyTorch weights not found: {weights}")
    if expected and sha256_file(weights) != expected:
        raise ConfigError(f"{weights} is not the checkpoint {bundle.root} was exported from")
    model = DynFocus(bundle.manifest.config, bundle.manifest.scoring).eval()
    load_visual_state(model, safetensors.load_file(str(weights)))
    return model


def demo_config_of(
    state: dict, output_positions: bool = False, cone_positions: bool = False
) -> DynFocusConfig:
    """The demo config that ``state`` (a run's weights) was trained with: with the output position map
    (``vision.output_positions``) and the cone slot embedding (``cone_positions``) when the weights have
    them, or when asked for (they then start at zero)."""
    config = demo()
    if output_positions or POSITIONS_KEY in state:
        config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, output_positions=True))
    if cone_positions or CONE_POSITIONS_KEY in state:
        config = dataclasses.replace(config, cone_positions=True)
    return config


def demo_model_of(state: dict):  # type: ignore[no-untyped-def]
    """A demo ``DynFocus`` in eval mode with ``state`` (a run's weights) loaded, its config read off them."""
    require("torch", "dfrt[export]")
    from dfrt.model.dynfocus import DynFocus

    model = DynFocus(demo_config_of(state)).eval()
    load_visual_state(model, state)
    return model


def load_visual_state(model, state: dict) -> None:  # type: ignore[no-untyped-def]
    """``state`` into a demo ``DynFocus``, strictly, except that weights saved without the output position
    map or the cone slot embedding load with them at zero: exactly the function they were trained as."""
    result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if k not in OPTIONAL_KEYS]
    if missing or result.unexpected_keys:
        missing_text, unexpected = ", ".join(missing) or "none", ", ".join(result.unexpected_keys) or "none"
        raise ConfigError(f"not demo weights (missing {missing_text}; unexpected {unexpected})")
    for key in OPTIONAL_KEYS:
        if key in result.missing_keys:
            getattr(model, key).data.zero_()
