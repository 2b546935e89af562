"""ScorerSpec: round trip, graph contracts, and hostile manifests (one ConfigError line each)."""

from __future__ import annotations

import json

import pytest

from dfrt.contracts import CHUNK, GraphSpec
from dfrt.errors import ConfigError
from dfrt.scorers.spec import IMAGE_GRAPH, TEXT_GRAPH, ScorerSpec

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def siglip_spec(**changes: object) -> ScorerSpec:
    values = dict(
        kind="siglip",
        image_size=224,
        resize_size=224,
        resize="squash",
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        text_length=64,
        text_cleanup="siglip",
        pad_id=1,
        vocab_size=32000,
        embed_dim=768,
        logit_scale=117.3,
        logit_bias=-12.9,
    )
    values.update(changes)
    return ScorerSpec(**values)  # type: ignore[arg-type]


def clip_spec() -> ScorerSpec:
    return siglip_spec(
        kind="clip",
        resize="crop",
        resize_size=256,
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
        text_length=77,
        text_cleanup="none",
        pad_id=49407,
        vocab_size=49408,
        embed_dim=512,
        logit_scale=100.0,
        logit_bias=0.0,
    )


@pytest.mark.parametrize("spec", [siglip_spec(), clip_spec()], ids=["siglip", "clip"])
def test_round_trip_through_json(spec: ScorerSpec) -> None:
    data = json.loads(json.dumps(spec.to_dict()))
    assert ScorerSpec.from_dict(data) == spec


def test_graph_contracts() -> None:
    siglip = siglip_spec().graph_specs()
    image, text = siglip[IMAGE_GRAPH], siglip[TEXT_GRAPH]
    assert image.input_names == ["pixels"] and image.output_names == ["image_embeds"]
    assert image.inputs[0].shape == ("frames", 3, 224, 224) and image.outputs[0].shape == ("frames", 768)
    assert image.axis_ranges["frames"][2] == CHUNK
    assert text.inputs[0].shape == (1, 64) and text.inputs[0].upper == 32000 and not text.ranges
    clip_text = clip_spec().graph_specs()[TEXT_GRAPH]
    assert clip_text.inputs[0].shape == (1, "text") and clip_text.axis_ranges["text"] == (1, 16, 77)
    for spec in (*siglip.values(), clip_text):  # the contracts survive their own strict reader
        assert GraphSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


HOSTILE = {
    "unknown key": {"extra": 1},
    "kind": {"kind": "blip"},
    "kind type": {"kind": ["siglip"]},
    "image size zero": {"image_size": 0, "resize_size": 0},
    "image size huge": {"image_size": 1 << 20, "resize_size": 1 << 20},
    "image size bool": {"image_size": True},
    "image size float": {"image_size": 224.0},
    "squash resize differs": {"resize_size": 256},
    "crop smaller than image": {"resize": "crop", "resize_size": 100},
    "text length": {"text_length": 10**9},
    "vocabulary": {"vocab_size": -1},
    "pad id outside": {"pad_id": 32000},
    "pad id text": {"pad_id": "1"},
    "embed dim": {"embed_dim": 0},
    "mean length": {"mean": [0.5, 0.5]},
    "mean range": {"mean": [0.5, 0.5, 7.0]},
    "std zero": {"std": [0.5, 0.0, 0.5]},
    "std text": {"std": ["a", "b", "c"]},
    "mean not a list": {"mean": "0.5"},
    "scale infinite": {"logit_scale": float("inf")},
    "scale negative": {"logit_scale": -1.0},
    "bias nan": {"logit_bias": float("nan")},
    "bias huge": {"logit_bias": 1e300},
    "cleanup": {"text_cleanup": "upper"},
    "interpolation": {"interpolation": "lanczos"},
    "tokenizer path": {"tokenizer": "../../etc/passwd.json"},
    "graph absolute": {"image_graph": "/tmp/x.onnx"},
    "graph suffix": {"text_graph": "text.so"},
    "same files": {"text_graph": "scorer_image.onnx"},
}


@pytest.mark.parametrize("change", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_specs_are_one_config_error(change: dict[str, object]) -> None:
    data = siglip_spec().to_dict()
    data.update(change)
    with pytest.raises(ConfigError) as info:
        ScorerSpec.from_dict(data)
    message = str(info.value)
    assert message.startswith("scorer: ") and "\n" not in message and len(message) < 300


@pytest.mark.parametrize("data", [None, [], "siglip", 3])
def test_not_an_object(data: object) -> None:
    with pytest.raises(ConfigError, match="expected an object"):
        ScorerSpec.from_dict(data)


def test_missing_key() -> None:
    data = siglip_spec().to_dict()
    del data["pad_id"]
    with pytest.raises(ConfigError, match="missing key 'pad_id'"):
        ScorerSpec.from_dict(data)
