"""Checkpoint loading from synthetic checkpoints written in the authors' exact key layouts (tiny dims)."""

import json
import os

import pytest

pytest.importorskip("torch", reason="the reference model needs torch (dfrt[export])")
import torch
from safetensors.torch import save_file

from dfrt.config import paper
from dfrt.errors import CheckpointError
from dfrt.model.dynfocus import DynFocus
from dfrt.model.weights import detect_layout, load_checkpoint
from tests.conftest import frames

# our prefix -> the authors' prefix, written out literally from method.md section 2.2
OFFICIAL = {
    "vision_tower.": "model.vision_tower.vision_tower.",
    "qformer.bert.": "model.vlm_att_encoder.bert.",
    "qformer.query_tokens": "model.vlm_att_query",
    "qformer.ln_vision.": "model.vlm_att_ln.",
    "qformer.proj.": "model.vlm_att_projector.",
    "rod_attention.key_proj.": "model.vlm_att_key_projector.",
    "rod_value_proj.": "model.vlm_att_val_projector.",
    "projector.": "model.mm_projector.",
    "scorer.": "selective_net.score_network.",
    "structure.score.": "merge.score.",
}
W, D = 1408, 4096
# (official key, shape) pairs from method.md for the paper dimensions
PAPER_KEYS = {
    "model.mm_projector.0.weight": (D, W),
    "model.mm_projector.2.weight": (D, D),
    "model.vlm_att_query": (1, 32, 768),
    "model.vlm_att_ln.weight": (W,),
    "model.vlm_att_projector.weight": (W, 768),
    "model.vlm_att_key_projector.weight": (W, W),
    "model.vlm_att_val_projector.weight": (D, W),
    "model.vlm_att_encoder.bert.embeddings.word_embeddings.weight": (30523, 768),
    "model.vlm_att_encoder.bert.encoder.layer.0.crossattention.self.key.weight": (768, W),
    "model.vlm_att_encoder.bert.encoder.layer.10.crossattention.self.value.weight": (768, W),
    "model.vlm_att_encoder.bert.encoder.layer.11.intermediate_query.dense.weight": (3072, 768),
    "model.vlm_att_encoder.bert.encoder.layer.11.output_query.LayerNorm.weight": (768,),
    "model.vision_tower.vision_tower.cls_token": (1, 1, W),
    "model.vision_tower.vision_tower.pos_embed": (1, 257, W),
    "model.vision_tower.vision_tower.patch_embed.proj.weight": (W, 3, 14, 14),
    "model.vision_tower.vision_tower.blocks.38.attn.q_bias": (W,),
    "model.vision_tower.vision_tower.blocks.38.attn.qkv.weight": (3 * W, W),
    "model.vision_tower.vision_tower.blocks.38.mlp.fc1.weight": (6144, W),
    "selective_net.score_network.in_conv.0.weight": (2 * W,),
    "selective_net.score_network.in_conv.1.weight": (2 * W, 2 * W),
    "selective_net.score_network.out_conv.0.weight": (W, 2 * W),
    "selective_net.score_network.out_conv.2.weight": (W // 2, W),
    "selective_net.score_network.out_conv.4.weight": (1, W // 2),
    "merge.score.weight": (6, 6),
}


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        prefix = next(p for p in OFFICIAL if key.startswith(p))
        out[OFFICIAL[prefix] + key[len(prefix) :]] = value.clone()
    return out


def test_paper_model_has_every_official_tensor_with_its_shape():
    with torch.device("meta"):
        model = DynFocus(paper())
    official = {k: tuple(v.shape) for k, v in to_official(model.state_dict()).items()}
    for key, shape in PAPER_KEYS.items():
        assert official.get(key) == shape, key
    assert not any(k.startswith("model.vision_tower.vision_tower.blocks.39.") for k in official)  # 39 blocks
    assert not any(k.startswith("model.vision_tower.vision_tower.norm") for k in official)  # no final norm
    crossed = {int(k.split(".")[5]) for k in official if ".crossattention." in k}
    assert crossed == {0, 2, 4, 6, 8, 10}


def _source_model(config):
    torch.manual_seed(123)
    model = DynFocus(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # make every tensor distinguishable from a fresh init
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _extras(config):
    """Tensors a real checkpoint carries that the visual path does not use."""
    w = config.vision.width
    return {
        "model.embed_tokens.weight": torch.randn(10, 8),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8),
        "model.norm.weight": torch.randn(8),
        "lm_head.weight": torch.randn(10, 8),
        "model.vlm_att_em_projector.weight": torch.randn(config.llm_width, w),
        "selective_net.merge.proj_k.weight": torch.randn(4, w),
        "merge.proj_q.weight": torch.randn(4, w),
        "merge.norm.weight": torch.randn(w),
        "sf_former.slow_proj.weight": torch.randn(w, w),
        "model.vlm_att_encoder.bert.embeddings.position_ids": torch.arange(512)[None],
    }


def _write_sharded(directory, tensors, fmt):
    directory.mkdir()
    keys = sorted(tensors)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, shard in enumerate(shards):
        part = {k: tensors[k].contiguous() for k in shard}
        if fmt == "safetensors":
            name = f"model-0000{i + 1}-of-00002.safetensors"
            save_file(part, directory / name)
        else:
            name = f"pytorch_model-0000{i + 1}-of-00002.bin"
            torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_official_dynfocus_layout_loads_exactly(tmp_path, tiny_config, question_ids, fmt):
    source = _source_model(tiny_config)
    checkpoint = _write_sharded(
        tmp_path / "ckpt", {**to_official(source.state_dict()), **_extras(tiny_config)}, fmt
    )

    torch.manual_seed(0)
    model = DynFocus(tiny_config).eval()
    pixels = frames(6, tiny_config.vision.image_size)
    with torch.no_grad():
        before = model(pixels, question_ids).embeds
    report = load_checkpoint(model, checkpoint)
    assert report.layouts == ["dynfocus"]
    assert report.missing == [] and report.unexpected == [] and report.initialised == []
    assert len(report.loaded) == len(model.state_dict())
    assert report.llm_keys == 4
    assert len(report.ignored) == 6
    with torch.no_grad():
        after = model(pixels, question_ids).embeds
        expected = source(pixels, question_ids).embeds
    assert not torch.allclose(before, after)  # loading changed the outputs ...
    torch.testing.assert_close(after, expected, rtol=0, atol=0)  # ... to exactly the source model's


def test_llamavid_layout_with_eva_vision_weights(tmp_path, tiny_config):
    source = _source_model(tiny_config)
    official = to_official(source.state_dict())
    tower = "model.vision_tower.vision_tower."
    llamavid = {k: v for k, v in official.items() if not k.startswith((tower, "selective_net.", "merge."))}
    save_file(llamavid, tmp_path / "model.safetensors")
    eva = {k[len(tower) :]: v for k, v in official.items() if k.startswith(tower)}
    extra_block = tiny_config.vision.depth  # LAVIS ships one block more than DynFocus uses
    eva.update(
        {f"blocks.{extra_block}.{k.split('.', 2)[2]}": v for k, v in eva.items() if k.startswith("blocks.0.")}
    )
    torch.save(eva, tmp_path / "eva_vit_g.pth")

    model = DynFocus(tiny_config)
    report = load_checkpoint(model, tmp_path / "model.safetensors", tmp_path / "eva_vit_g.pth")
    assert report.layouts == ["llamavid", "eva_vit"]
    assert report.missing == [] and report.unexpected == []
    assert sorted({k.split(".")[0] for k in report.initialised}) == ["scorer", "structure"]
    assert any(k.startswith(f"blocks.{extra_block}.") for k in report.ignored)
    for key, value in source.vision_tower.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[key], value)


def test_missing_and_unexpected_keys_are_reported(tmp_path, tiny_config):
    official = to_official(_source_model(tiny_config).state_dict())
    official.pop("model.mm_projector.2.bias")
    official["model.vlm_att_mystery.weight"] = torch.zeros(2)
    save_file(official, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing; 1 unexpected") as info:
        load_checkpoint(DynFocus(tiny_config), tmp_path / "model.safetensors")
    assert "projector.2.bias" in str(info.value) and "model.vlm_att_mystery.weight" in str(info.value)
    report = load_checkpoint(DynFocus(tiny_config), tmp_path / "model.safetensors", strict=False)
    assert report.missing == ["projector.2.bias"]


def test_shape_mismatch_names_the_tensor(tmp_path, tiny_config):
    official = to_official(_source_model(tiny_config).state_dict())
    official["merge.score.weight"] = torch.zeros(5, 5)
    save_file(official, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"merge\.score\.weight has shape \(5, 5\)"):
        load_checkpoint(DynFocus(tiny_config), tmp_path / "model.safetensors")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_code_is_never_executed(tmp_path, tiny_config):
    marker = str(tmp_path / "pwned")
    torch.save({"model.vlm_att_query": _Payload(marker)}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="tensor-only"):
        load_checkpoint(DynFocus(tiny_config), tmp_path / "evil.bin")
    assert not os.path.exists(marker)


def test_index_cannot_point_outside_the_directory(tmp_path, tiny_config):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    weight_map = {"merge.score.weight": "../elsewhere.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_checkpoint(DynFocus(tiny_config), directory)


def test_unreadable_inputs_give_checkpoint_errors(tmp_path, tiny_config):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    for path in (tmp_path / "nope", tmp_path / "junk.safetensors"):
        with pytest.raises(CheckpointError):
            load_checkpoint(DynFocus(tiny_config), path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        detect_layout({"foo.weight"})


def test_config_is_recognised_from_the_shapes(tmp_path, tiny_config):
    from dfrt.config import CONFIGS
    from dfrt.model.weights import infer_config

    candidates = {name: make() for name, make in CONFIGS.items()}
    official = to_official(_source_model(tiny_config).state_dict())
    checkpoint = _write_sharded(tmp_path / "ckpt", official, "bin")
    assert infer_config([checkpoint], candidates).name == "tiny"
    official["model.mm_projector.0.weight"] = torch.zeros(4096, tiny_config.vision.width)
    save_file(official, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match="match none of the configs"):
        infer_config([tmp_path / "odd.safetensors"], candidates)


def test_llamavid_gate_starts_uniform_and_the_report_says_how(tmp_path, tiny_config):
    official = to_official(_source_model(tiny_config).state_dict())
    llamavid = {k: v for k, v in official.items() if not k.startswith(("selective_net.", "merge."))}
    save_file(llamavid, tmp_path / "model.safetensors")
    model = DynFocus(tiny_config)
    report = load_checkpoint(model, tmp_path / "model.safetensors")
    assert torch.count_nonzero(model.structure.score.weight) == 0
    assert torch.count_nonzero(model.structure.score.bias) == 0
    summary = report.summary()
    assert "structure.score.* (2 tensors): zeros, a uniform clustering gate" in summary
    assert "scorer.* (10 tensors): seeded random" in summary


def test_safetensors_offsets_are_checked_before_reading(tmp_path):
    import struct

    from dfrt.model.weights import CheckpointReader, _read_safetensors

    save_file({"merge.score.weight": torch.ones(6, 6)}, tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header["merge.score.weight"]["data_offsets"] = [0, 10**9]
    text = json.dumps(header).encode().ljust(size)
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
    with pytest.raises(CheckpointError, match="unreadable safetensors file"):  # safetensors' own check
        CheckpointReader(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="inconsistent data offsets"):  # and ours, before reading
        list(_read_safetensors(tmp_path / "bad.safetensors", {"merge.score.weight"}))
    good = dict(CheckpointReader(tmp_path / "model.safetensors").tensors({"x": "merge.score.weight"}))
    assert torch.equal(good["x"], torch.ones(6, 6))


def _instructblip_qformer(source, extras):
    """An InstructBLIP Q-Former file (LAVIS): ``Qformer.*``, ``query_tokens``, ``ln_vision.*``, ``extras``."""
    renames = {"qformer.bert.": "Qformer.bert.", "qformer.query_tokens": "query_tokens"}
    renames["qformer.ln_vision."] = "ln_vision."
    out = {}
    for key, value in source.state_dict().items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix:
            out[renames[prefix] + key[len(prefix) :]] = value.clone()
    return {**out, **extras}


def test_instructblip_llm_proj_is_ignored_and_counted(tmp_path, tiny_config):
    source = _source_model(tiny_config)
    hidden = tiny_config.qformer.hidden
    extras = {"llm_proj.weight": torch.randn(32, hidden), "llm_proj.bias": torch.randn(32)}
    torch.save(_instructblip_qformer(source, extras), tmp_path / "instruct_blip_trimmed.pth")
    model = DynFocus(tiny_config)
    report = load_checkpoint(model, tmp_path / "instruct_blip_trimmed.pth")  # strict
    assert report.layouts == ["qformer"]
    assert sorted(report.ignored) == ["llm_proj.bias", "llm_proj.weight"]
    assert report.missing == [] and report.unexpected == [] and report.llm_keys == 0
    assert "2 ignored (unused by DynFocus)" in report.summary()
    for key, value in source.qformer.state_dict().items():
        if not key.startswith("proj."):  # InstructBLIP has no 768 -> W projection: DynFocus trains its own
            assert torch.equal(model.qformer.state_dict()[key], value), key
    assert "qformer.proj.weight" in report.initialised


def test_other_blip2_modules_are_ignored_and_its_eva_tower_is_loaded(tmp_path, tiny_config):
    source = _source_model(tiny_config)
    h = tiny_config.qformer.hidden
    extras = {
        "t5_proj.weight": torch.randn(16, h),
        "opt_proj.bias": torch.randn(16),
        "llm_model.model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8),
        "llm_model.lm_head.weight": torch.randn(10, 8),
        "t5_model.shared.weight": torch.randn(10, 8),
        "opt_model.model.decoder.embed_tokens.weight": torch.randn(10, 8),
        "vision_proj.weight": torch.randn(8, h),
        "text_proj.bias": torch.randn(8),
        "itm_head.weight": torch.randn(2, h),
        "temp": torch.tensor(0.07),
        "Qformer.cls.predictions.bias": torch.randn(30),
        "Qformer.bert.embeddings.position_ids": torch.arange(8)[None],
    }
    tower = {f"visual_encoder.{k}": v.clone() for k, v in source.vision_tower.state_dict().items()}
    save_file(_instructblip_qformer(source, {**extras, **tower}), tmp_path / "blip2.safetensors")
    model = DynFocus(tiny_config)
    report = load_checkpoint(model, tmp_path / "blip2.safetensors")  # strict
    assert sorted(report.ignored) == sorted(extras)
    assert report.missing == [] and report.unexpected == [] and report.llm_keys == 0
    assert not any(k.startswith("vision_tower.") for k in report.initialised)
    for key, value in source.vision_tower.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[key], value), key


def test_blip2_module_names_are_not_ignored_in_other_layouts():
    from dfrt.model.weights import map_keys

    keymap = map_keys(["llm_proj.weight", "temp"], "dynfocus", set(), 39)
    assert keymap.unexpected == ["llm_proj.weight", "temp"] and keymap.ignored == []
