"""Stage 3 of the demo recipe: the LM and the cone slot embedding on cached visual embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfrt.demo.training.finetune import (  # noqa: E402
    CachedClip,
    FinetuneConfig,
    add_cone_positions,
    cone_slots,
    finetune,
    position_facts,
)
from dfrt.demo.world import Clip, Shape  # noqa: E402


def test_slots_number_each_cone_row_and_leave_rods_out() -> None:
    slots = cone_slots(np.array([2, 38, 2, 0, 38]), 38)
    assert slots.tolist() == [-1, -1, *range(38), -1, -1, *range(38)]


def test_add_cone_positions_adds_each_cone_slot_its_row_and_nothing_to_rods() -> None:
    positions = torch.arange(3 * 2, dtype=torch.float32).view(3, 2)
    clip = CachedClip(torch.zeros(5, 2), torch.tensor([-1, 0, 1, 2, -1]), "q", "a", "moved", "dynfocus")
    torch.testing.assert_close(
        add_cone_positions(clip, positions), torch.cat([torch.zeros(1, 2), positions, torch.zeros(1, 2)])
    )


def test_position_facts_say_where_each_named_shape_is_in_the_first_and_last_cone() -> None:
    mover = Shape("circle", "red", (0.8, 0.3), velocity=(-0.04, 0.0))  # at x 0.8 - 0.04 t, moving left
    twins = [
        Shape("square", "blue", (0.2, 0.8)),
        Shape("square", "blue", (0.8, 0.8)),
    ]  # named alike: no facts
    middle = Shape("triangle", "green", (0.5, 0.55))  # near the middle of both axes: no facts
    clip = Clip(
        1, "moved", "Which direction did the red circle move?", "left", [mover, *twins, middle], (40, 40, 40)
    )
    assert position_facts(clip, [1, 6, 14]) == [
        ("Where was the red circle first, left or right?", "right"),  # x 0.76
        ("Where was the red circle first, up or down?", "up"),  # y 0.3: image rows grow downwards
        ("Where was the red circle last, left or right?", "left"),  # x 0.24
        ("Where was the red circle last, up or down?", "up"),
    ]
    assert position_facts(clip, []) == []


def test_stage_three_trains_the_lm_and_cone_slots_only_and_reuses_its_cache(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from dfrt.demo.training.reference import CONE_POSITIONS_KEY, demo_model_of
    from dfrt.demo.training.train import TrainConfig, train

    tiny = {"frame_batch": 2, "clip_batch": 2, "log_every": 1, "save_every": 1}
    train(tmp_path / "a", TrainConfig(seed=1, frame_steps=1, clip_steps=1, **tiny), log=lambda _: None)
    cfg = FinetuneConfig(clips=10, steps=3, batch=2, log_every=1, lr=1e-3, position_lr=1e-2)
    lines: list[str] = []
    cache = tmp_path / "cache.pt"
    finetune(tmp_path / "a", tmp_path / "b", cfg, log=lines.append, cache=cache)
    assert cache.is_file() and any(line.startswith("  held out:") for line in lines)
    assert any(" facts " in line for line in lines if "train:" in line)
    a, b = (load_file(str(tmp_path / run / "weights.safetensors")) for run in "ab")
    assert CONE_POSITIONS_KEY not in a and float(b[CONE_POSITIONS_KEY].abs().sum()) > 0  # learned from zero
    assert set(b) == {*a, CONE_POSITIONS_KEY} and all(
        torch.equal(a[k], b[k]) for k in a
    )  # visual path frozen
    lm_a, lm_b = (load_file(str(tmp_path / run / "lm.safetensors")) for run in "ab")
    assert any(not torch.equal(lm_a[k], lm_b[k]) for k in lm_a)
    assert demo_model_of(b).config.cone_positions  # the weights say they have the embedding

    again: list[str] = []
    finetune(tmp_path / "a", tmp_path / "c", cfg, log=again.append, cache=cache)
    assert again[0] == f"10 encoded clips from {cache}"


def test_cached_rows_plus_the_embedding_are_what_the_model_computes(tmp_path: Path) -> None:
    """Caching leaves the model's own cone slot embedding out (it is trained afterwards, and added back)."""
    from dfrt.config import demo
    from dfrt.demo.training.finetune import cache_clips
    from dfrt.demo.training.reference import demo_config_of
    from dfrt.demo.training.train import SampleMaker, encode_batch
    from dfrt.export.question_vocab import build_question_tokenizer
    from dfrt.model.dynfocus import DynFocus
    from dfrt.runtime.question_tokenizer import QuestionTokenizer

    path = tmp_path / "tokenizer.json"
    path.write_text(build_question_tokenizer(demo().qformer.max_question_tokens))
    make = SampleMaker(demo(), QuestionTokenizer(path), baseline_share=0.0)
    torch.manual_seed(0)
    model = DynFocus(demo_config_of({}, cone_positions=True)).eval()
    with torch.no_grad():
        model.cone_positions.normal_(0.0, 1.0)
    positions = model.cone_positions.detach().clone()
    cached = cache_clips(model, make, range(5, 7), log=lambda _: None)
    assert torch.equal(model.cone_positions.detach(), positions)  # put back after caching
    with torch.no_grad():
        embeds, _, _ = encode_batch(model, [make(5), make(6)], None, np.random.default_rng(0), "hard")
    for clip, expected in zip(cached, embeds, strict=True):
        torch.testing.assert_close(add_cone_positions(clip, positions), expected)


def test_seeds_outside_stage_three_range_and_writing_over_the_run_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed range"):
        finetune(
            tmp_path / "a", tmp_path / "b", FinetuneConfig(seed=300)
        )  # would reach the calibration clips
    with pytest.raises(ValueError, match="new run directory"):
        finetune(tmp_path / "a", tmp_path / "a", FinetuneConfig())


def test_budgets_parse_into_items_drawn_with_equal_odds() -> None:
    from dfrt.demo.training.finetune import parse_budgets

    assert parse_budgets("default") == (None,)
    assert parse_budgets("default, 140,40-103,default") == (None, (140, 140), (40, 103), None)
    for bad in ("", "many", "103-40", "0", "40-"):
        with pytest.raises(ValueError, match="budgets"):
            parse_budgets(bad)


def test_budget_draws_are_each_clips_own_reproducible_and_span_the_items() -> None:
    from dfrt.demo.training.finetune import draw_budgets, parse_budgets

    items = parse_budgets("default,140-175,104-139,40-103")
    assert draw_budgets(parse_budgets("default"), 7, 3) == [None, None, None]  # the old behaviour
    draws = {seed: draw_budgets(items, seed, 2) for seed in range(700_000_000, 700_000_400)}
    assert draws == {seed: draw_budgets(items, seed, 2) for seed in reversed(draws)}  # order-free, seeded
    for pair in draws.values():
        buckets = [
            None if b is None else next(i for i, (lo, hi) in enumerate(items[1:]) if lo <= b <= hi)
            for b in pair
        ]
        assert len(set(buckets)) == 2  # a clip's two plans come from different items
    flat = [b for pair in draws.values() for b in pair]
    assert 0.2 < flat.count(None) / len(flat) < 0.3  # each of 4 items a quarter of the plans
    drawn = {b for b in flat if b is not None}
    assert min(drawn) == 40 and max(drawn) == 175 and len(drawn) > 100  # every range, end to end
    assert len(draw_budgets(items, 1, 6)) == 6  # more plans than items: drawn with replacement


def test_a_budget_encodes_the_runtime_plan_and_keeps_one_layout_entry_per_frame(tmp_path: Path) -> None:
    from dfrt.config import demo
    from dfrt.demo.training.finetune import cache_clips
    from dfrt.demo.training.train import SampleMaker, encode_batch
    from dfrt.export.question_vocab import build_question_tokenizer
    from dfrt.model.dynfocus import DynFocus
    from dfrt.runtime.budget import kept_frames, plan_for_config
    from dfrt.runtime.question_tokenizer import QuestionTokenizer

    path = tmp_path / "tokenizer.json"
    path.write_text(build_question_tokenizer(demo().qformer.max_question_tokens))
    make = SampleMaker(demo(), QuestionTokenizer(path), baseline_share=0.0)
    torch.manual_seed(0)
    model = DynFocus(demo()).eval()
    sample = make(5)
    budgets = [None, 140, 68, 50]
    with torch.no_grad():
        embeds, _, layouts = encode_batch(
            model, [sample] * 4, None, np.random.default_rng(0), "hard", budgets
        )
        alone, _, _ = encode_batch(model, [sample], None, np.random.default_rng(0), "hard", [50])
    for budget, e, layout in zip(budgets, embeds, layouts, strict=True):
        plan = plan_for_config(model.config, 16, budget)
        assert layout.shape == (16,) and e.shape[0] == layout.sum() == plan.tokens  # 176, 140, 68, 50
        assert (layout == 38).sum() == plan.key_frames
        dropped = np.setdiff1d(np.arange(16), kept_frames(16, plan))
        assert (layout[dropped] == 0).all()  # 50 tokens: 7 frames kept, the 9 others dropped
    torch.testing.assert_close(embeds[3], alone[0])  # the shared tower changes nothing
    cached = cache_clips(
        model, make, range(5, 7), lambda _: None, budgets=((60, 60), (140, 140)), plans_per_clip=2
    )
    assert [c.budget for c in cached[:2]] in ([60, 140], [140, 60]) and len(cached) == 4
    assert sorted(int(c.embeds.shape[0]) for c in cached[:2]) == [60, 140]  # 60: 12 frames, one key frame
