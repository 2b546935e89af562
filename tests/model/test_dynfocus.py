import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model and export need torch (dfrt[export])")
import torch

from dfrt.model.dynfocus import DynFocus
from tests.conftest import frames


def _run(model, num_frames, ids, seed=0):
    with torch.no_grad():
        return model(frames(num_frames, model.config.vision.image_size, seed), ids)


@pytest.mark.parametrize("num_frames", [1, 2, 8, 32, 80, 81, 200])
def test_token_count_is_38k_plus_2_rods(tiny_model, question_ids, num_frames):
    out = _run(tiny_model, num_frames, question_ids)
    k = out.selection.key_frames.size
    expected_k = int(np.ceil(0.45 * min(num_frames, 80)))
    assert k == expected_k
    rods = num_frames - k
    expected = 40 if num_frames == 1 else 38 * k + 2 * rods
    assert out.embeds.shape == (expected, tiny_model.config.llm_width)
    assert out.embeds.shape[0] == tiny_model.config.visual_token_count(num_frames)
    assert out.tokens_per_frame.sum() == expected


def _expected_frame_rows(model, pixels, ids, out):
    """Recompute each frame's tokens on its own (batch of one), independently of the interleave code."""
    tokens, pooled = model.encode_frames(pixels)
    structure = model.structure_tokens(tokens)
    key = set(out.selection.key_frames.tolist())
    rows = []
    for t in range(pixels.shape[0]):
        if t in key and out.prototypes.num_prototypes == pixels.shape[0]:
            cone = model.projector(torch.cat([pooled[t], structure[t]]))
        q_emb = model.question_queries(tokens[t : t + 1], ids, torch.ones_like(ids))
        keys = model.rod_attention.key_proj(structure[t])
        attention = (q_emb[0] @ keys.T / structure.shape[-1] ** 0.5).softmax(dim=-1)
        context = (attention @ structure[t]).mean(dim=0)
        rod = torch.stack([model.projector(structure[t].mean(dim=0)), model.rod_value_proj(context)])
        if t not in key:
            rows.append(rod)
        elif len(key) == pixels.shape[0]:  # single image: rod then cone
            rows.append(torch.cat([rod, cone]))
        else:
            rows.append(cone)
    return rows


@pytest.mark.parametrize("num_frames", [1, 5, 12])
def test_cones_and_rods_in_temporal_order(tiny_model, question_ids, num_frames):
    pixels = frames(num_frames, tiny_model.config.vision.image_size, seed=4)
    with torch.no_grad():
        out = tiny_model(pixels, question_ids)
        expected = _expected_frame_rows(tiny_model, pixels, question_ids, out)
    offsets = np.concatenate([[0], np.cumsum(out.tokens_per_frame)])
    for t, rows in enumerate(expected):
        assert out.tokens_per_frame[t] == rows.shape[0]
        torch.testing.assert_close(out.embeds[offsets[t] : offsets[t + 1]], rows, rtol=1e-4, atol=1e-5)


def test_outputs_are_deterministic(tiny_config, question_ids):
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DynFocus(tiny_config).eval()
        results.append(_run(model, 120, question_ids, seed=9))
    a, b = results
    assert torch.equal(a.embeds, b.embeds)
    assert np.array_equal(a.selection.key_frames, b.selection.key_frames)
    assert np.array_equal(a.prototypes.assignment, b.prototypes.assignment)


def test_long_video_uses_80_event_prototypes(tiny_model, question_ids):
    out = _run(tiny_model, 150, question_ids)
    assert out.prototypes.num_prototypes == 80
    assert out.scores.shape == (80,)
    assert set(out.selection.key_frames) <= set(out.prototypes.seeds)
    assert out.selection.rod_frames.size == 150 - 36


def test_question_changes_rods_not_selection(tiny_model):
    a = _run(tiny_model, 8, torch.tensor([[101, 2054, 2003, 102]]))
    b = _run(tiny_model, 8, torch.tensor([[101, 2129, 2116, 3899, 102]]))
    assert np.array_equal(a.selection.key_frames, b.selection.key_frames)  # the scorer is visual-only
    cone_rows = np.repeat(a.tokens_per_frame == 38, a.tokens_per_frame)
    torch.testing.assert_close(a.embeds[cone_rows], b.embeds[cone_rows])
    assert not torch.allclose(a.embeds[~cone_rows], b.embeds[~cone_rows])


def test_question_padding_is_masked(tiny_model):
    ids = torch.tensor([[101, 2054, 2003, 102]])
    pixels = frames(3, tiny_model.config.vision.image_size)
    tokens, _ = tiny_model.encode_frames(pixels)
    with torch.no_grad():
        plain = tiny_model.question_queries(tokens, ids, torch.ones_like(ids))
        padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=ids.dtype)], dim=1)
        mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 5, dtype=ids.dtype)], dim=1)
        padded = tiny_model.question_queries(tokens, padded_ids, mask)
    torch.testing.assert_close(plain, padded, rtol=1e-4, atol=1e-5)


def test_vision_tower_shapes_and_pooling(tiny_model):
    cfg = tiny_model.config
    tokens, pooled = tiny_model.encode_frames(frames(3, cfg.vision.image_size))
    assert tokens.shape == (3, 1 + cfg.vision.num_patches, cfg.vision.width)
    assert pooled.shape == (3, 16, cfg.vision.width)
    grid = tokens[:, 1:].reshape(3, 8, 8, -1)
    torch.testing.assert_close(pooled[:, 0], grid[:, :2, :2].mean(dim=(1, 2)))  # top-left 2x2 window


def test_perturbed_selection_trains_the_scorer(tiny_model, question_ids):
    model = DynFocus(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    pixels = frames(10, model.config.vision.image_size)
    out = model(pixels, question_ids, selection="perturbed", generator=torch.Generator().manual_seed(0))
    assert out.indicators.shape == (5, 10)
    torch.testing.assert_close(out.indicators.sum(dim=-1), torch.ones(5))
    out.embeds.square().mean().backward()
    assert model.scorer.out_conv[4].weight.grad.abs().sum() > 0
    assert model.structure.score.weight.grad.abs().sum() > 0


def test_straight_through_selection_is_hard_forward_with_scorer_gradients(tiny_model, question_ids):
    model = DynFocus(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    pixels = frames(10, model.config.vision.image_size)
    hard = model(pixels, question_ids, selection="hard")
    generator = torch.Generator().manual_seed(0)
    out = model(pixels, question_ids, selection="straight-through", generator=generator)
    np.testing.assert_array_equal(out.selection.key_frames, hard.selection.key_frames)
    torch.testing.assert_close(out.embeds, hard.embeds)  # the run-time cones, not the soft mixture
    soft = model(pixels, question_ids, selection="perturbed", generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(soft.embeds, hard.embeds)
    out.embeds.square().mean().backward()
    assert model.scorer.out_conv[4].weight.grad.abs().sum() > 0  # through the perturbed top-k


def test_output_positions_start_as_the_bare_tower_and_export_with_parity(tiny_config, tmp_path):
    import dataclasses

    from dfrt.config import DynFocusConfig
    from dfrt.export.bundle_writer import export_bundle
    from dfrt.runtime.bundle import Bundle

    config = dataclasses.replace(
        tiny_config, vision=dataclasses.replace(tiny_config.vision, output_positions=True)
    )
    torch.manual_seed(0)
    model = DynFocus(config).eval()
    pixels = frames(3, config.vision.image_size)
    with torch.no_grad():
        bare = model.vision_tower(pixels)
        tokens, pooled = model.encode_frames(pixels)
        assert torch.equal(tokens, bare)  # zero at first: the tower's function unchanged
        model.output_positions.normal_(0.0, 1.0)
        tokens, pooled = model.encode_frames(pixels)
    added = tokens - bare
    torch.testing.assert_close(added, (model.position_table @ model.output_positions).expand_as(tokens))
    assert float(added[:, 0].abs().max()) == 0.0  # CLS has no position
    patches = added[0, 1:]
    assert len({tuple(row.round(decimals=4).tolist()) for row in patches}) == config.vision.num_patches
    torch.testing.assert_close(pooled, model.pool(tokens))
    assert "position_table" not in model.state_dict()  # fixed features: rebuilt, never stored
    # ONNX Runtime answers as PyTorch with the embedding in the vision graph (export validates parity)
    export_bundle(model, tmp_path / "bundle", {"source": "random"}, validate=True, progress=False)
    assert Bundle.open(tmp_path / "bundle").manifest.config.vision.output_positions
    legacy = config.to_dict()
    del legacy["vision"]["output_positions"]  # a manifest written before the option existed
    assert DynFocusConfig.from_dict(legacy).vision.output_positions is False


def test_cone_positions_start_at_zero_add_one_row_per_slot_and_export_with_parity(tiny_config, tmp_path):
    import dataclasses

    from dfrt.export.bundle_writer import export_bundle
    from dfrt.runtime.bundle import Bundle

    config = dataclasses.replace(tiny_config, cone_positions=True)
    torch.manual_seed(0)
    plain = DynFocus(tiny_config).eval()
    torch.manual_seed(0)
    model = DynFocus(config).eval()
    pixels = frames(6, config.vision.image_size)
    question = torch.tensor([[101, 2054, 2003, 102]])
    with torch.no_grad():
        before = model(pixels, question)
        torch.testing.assert_close(before.embeds, plain(pixels, question).embeds, rtol=0, atol=0)
        model.cone_positions.normal_(0.0, 1.0)
        after = model(pixels, question)
    added = (after.embeds - before.embeds).view(-1, config.llm_width)
    rows = np.repeat(after.tokens_per_frame, after.tokens_per_frame)  # each row's frame token count
    cone_rows = added[torch.as_tensor(rows == config.cone_tokens)].view(
        -1, config.cone_tokens, config.llm_width
    )
    for cone in cone_rows:  # every key frame's cone gets the same slot embeddings, in slot order
        torch.testing.assert_close(cone, model.cone_positions.detach())
    assert float(added[torch.as_tensor(rows != config.cone_tokens)].abs().max()) == 0.0  # rods untouched
    export_bundle(model, tmp_path / "bundle", {"source": "random"}, validate=True, progress=False)
    assert Bundle.open(tmp_path / "bundle").manifest.config.cone_positions


def test_config_chooses_the_top_k_backward(tiny_model, question_ids):
    """`dpe.topk_gradient` reaches the perturbed top-k: the authors' diagonal form trains the scorer with a
    different gradient than the full estimate, from the same noise and the same forward pass."""
    import dataclasses

    pixels = frames(10, tiny_model.config.vision.image_size)
    grads = {}
    for form in ("full", "diagonal"):
        config = dataclasses.replace(
            tiny_model.config, dpe=dataclasses.replace(tiny_model.config.dpe, topk_gradient=form)
        )
        model = DynFocus(config)
        model.load_state_dict(tiny_model.state_dict())
        out = model(pixels, question_ids, selection="perturbed", generator=torch.Generator().manual_seed(0))
        out.embeds.square().mean().backward()
        grads[form] = model.scorer.out_conv[4].weight.grad.clone()
    assert grads["full"].abs().sum() > 0 and grads["diagonal"].abs().sum() > 0
    assert not torch.allclose(grads["full"], grads["diagonal"])
