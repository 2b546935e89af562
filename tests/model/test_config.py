import json

import pytest

from dfrt.config import DynFocusConfig, get_config, key_frame_count, paper, tiny
from dfrt.errors import ConfigError


@pytest.mark.parametrize(
    ("frames", "tokens"),
    [
        (1, 40),
        (2, 40),
        (8, 160),
        (16, 320),
        (32, 604),
        (60, 1092),
        (80, 1456),
        (81, 1458),
        (200, 1696),
        (1000, 3296),
    ],
)
def test_paper_token_budget_matches_method(frames, tokens):
    assert paper().visual_token_count(frames) == tokens


def test_token_budget_is_bounded_beyond_80_frames():
    cfg = paper()
    for t in (81, 500, 7200):
        assert cfg.visual_token_count(t) == 1296 + 2 * t


def test_key_frame_count_is_ceil_of_ratio():
    assert [key_frame_count(t, 0.45) for t in (1, 2, 3, 20, 80)] == [1, 1, 2, 9, 36]


@pytest.mark.parametrize("make", [paper, tiny])
def test_round_trip_through_json(make):
    cfg = make()
    assert DynFocusConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_output_positions_are_written_only_when_on():
    """Off, the key is left out, so runtimes from before the option still read the manifest."""
    import dataclasses

    assert "output_positions" not in tiny().to_dict()["vision"]
    on = dataclasses.replace(tiny(), vision=dataclasses.replace(tiny().vision, output_positions=True))
    assert on.to_dict()["vision"]["output_positions"] is True
    assert DynFocusConfig.from_dict(json.loads(json.dumps(on.to_dict()))) == on


def test_cone_positions_are_written_only_when_on():
    import dataclasses

    assert "cone_positions" not in tiny().to_dict()
    assert DynFocusConfig.from_dict(tiny().to_dict()).cone_positions is False  # manifests from before it
    on = dataclasses.replace(tiny(), cone_positions=True)
    assert on.to_dict()["cone_positions"] is True
    assert DynFocusConfig.from_dict(json.loads(json.dumps(on.to_dict()))) == on


def test_tiny_keeps_paper_token_structure():
    assert tiny().cone_tokens == paper().cone_tokens == 38
    assert tiny().structure_tokens == 22


def test_unknown_and_mistyped_keys_are_refused():
    data = tiny().to_dict()
    with pytest.raises(ConfigError, match="unknown key"):
        DynFocusConfig.from_dict({**data, "colour": 1})
    with pytest.raises(ConfigError, match=r"vision\.depth"):
        DynFocusConfig.from_dict({**data, "vision": {**data["vision"], "depth": "two"}})


def test_inconsistent_config_is_refused():
    data = tiny().to_dict()
    with pytest.raises(ConfigError, match="multiple of"):
        DynFocusConfig.from_dict({**data, "vision": {**data["vision"], "image_size": 100}})


def test_unknown_variant_lists_known_names():
    with pytest.raises(ConfigError, match="paper, tiny"):
        get_config("huge")
