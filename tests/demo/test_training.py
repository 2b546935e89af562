"""The training recipe's parts: dense frame labels, gradients through DPE's perturbed top-k into every trained
module and the demo LM, the runtime's prompt tokens, and one step of each stage end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfrt.config import demo  # noqa: E402
from dfrt.demo.evaluate import baseline_frame_count  # noqa: E402
from dfrt.demo.training.lm import new_demo_lm, train_tokenizer, write_demo_gguf  # noqa: E402
from dfrt.demo.training.prompt import DEMO_PROMPT  # noqa: E402
from dfrt.demo.training.train import (  # noqa: E402
    FrameHeads,
    LmTarget,
    SampleMaker,
    encode_batch,
    event_loss,
    frame_batch,
    parse_kind_weights,
)
from dfrt.demo.world import ANSWERS, KINDS  # noqa: E402
from dfrt.export.question_vocab import build_question_tokenizer  # noqa: E402
from dfrt.model.dynfocus import DynFocus  # noqa: E402
from dfrt.runtime.question_tokenizer import QuestionTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def maker(tmp_path_factory: pytest.TempPathFactory) -> SampleMaker:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    config = demo()
    path.write_text(build_question_tokenizer(config.qformer.max_question_tokens))
    return SampleMaker(config, QuestionTokenizer(path), baseline_share=0.0)


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lm")
    tokenizer = train_tokenizer(root / "tokenizer.model")
    torch.manual_seed(0)
    return tokenizer, write_demo_gguf(new_demo_lm(tokenizer), tokenizer, root / "lm.gguf")


def test_frame_stage_labels_every_patch_and_trains_the_vision_tower() -> None:
    config = demo()
    batch = frame_batch(config, range(40, 48), np.random.default_rng(0))
    patches = config.vision.grid**2
    assert batch.pixels.shape == (8, 3, 112, 112)
    assert batch.colours.shape == batch.shapes.shape == (8, patches)
    assert ((batch.colours > 0) == (batch.shapes > 0)).all()  # a shape's patch has both labels
    assert (batch.colours > 0).any(axis=1).sum() >= batch.counts.astype(bool).sum() - 1
    model = DynFocus(config).train()
    heads = FrameHeads(config.vision.width, config.vision.grid)
    loss, right = heads.loss(model.vision_tower(torch.from_numpy(batch.pixels)), batch)
    loss.backward()
    assert 0.0 <= right <= 1.0
    assert all(p.grad is not None for p in model.vision_tower.parameters())
    assert heads.position.weight.grad is None  # no position target unless asked for
    where = FrameHeads(config.vision.width, config.vision.grid, position_weight=1.0)
    where.load_state_dict(heads.state_dict())
    with_position, _ = where.loss(model.vision_tower(torch.from_numpy(batch.pixels)), batch)
    assert with_position > loss
    with_position.backward()
    assert where.position.weight.grad.abs().sum() > 0
    assert where.where[0].tolist() == [0.0, 0.0] and where.where[-1].tolist() == [1.0, 1.0]
    assert where.where[1].tolist() == pytest.approx([0.0, 1 / (config.vision.grid - 1)])  # row-major


def test_clip_stage_trains_scorer_qformer_projectors_and_lm(
    maker: SampleMaker, lm_files: tuple[Path, Path]
) -> None:
    from dfrt.demo.training.reference import demo_config_of

    torch.manual_seed(0)
    model = DynFocus(demo_config_of({}, output_positions=True)).train()
    model.vision_tower.requires_grad_(False)
    tokenizer, gguf = lm_files
    lm = new_demo_lm(tokenizer)
    target = LmTarget(lm, gguf, DEMO_PROMPT, ANSWERS)
    samples = [maker(s) for s in (0, 2, 3)]
    visual, scores, _ = encode_batch(
        model, samples, torch.Generator().manual_seed(0), np.random.default_rng(0)
    )
    assert [v.shape for v in visual] == [(demo().visual_token_count(16), demo().llm_width)] * 3
    loss, right = target.loss(visual, [s.clip.question for s in samples], [s.clip.answer for s in samples])
    assert right.shape == (3,)
    (loss + event_loss(scores, [s for s in samples])).backward()
    target.close()
    for name in ("scorer", "qformer", "projector", "rod_value_proj"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name
    assert float(lm.model.embed_tokens.weight.grad.abs().sum()) > 0
    # the frozen tower runs without gradients, the output position embedding on it still learns
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert float(model.output_positions.grad.abs().sum()) > 0


def test_weights_without_output_positions_load_with_them_at_zero() -> None:
    from dfrt.demo.training.reference import POSITIONS_KEY, demo_config_of, load_visual_state
    from dfrt.errors import ConfigError

    older = DynFocus(demo())
    state = older.state_dict()
    assert POSITIONS_KEY not in state and not demo_config_of(state).vision.output_positions
    config = demo_config_of(state, output_positions=True)  # a run that turns the map on
    assert config.vision.output_positions
    model = DynFocus(config)
    with torch.no_grad():
        model.output_positions.fill_(1.0)
    assert demo_config_of(model.state_dict()).vision.output_positions  # the weights say they have one
    load_visual_state(model, state)
    assert float(model.output_positions.detach().abs().sum()) == 0.0
    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for ours, theirs in zip(model.encode_frames(pixels), older.encode_frames(pixels), strict=True):
            assert torch.equal(ours, theirs)  # the function the older weights were trained as
    with pytest.raises(ConfigError, match=r"unexpected extra\.weight"):
        load_visual_state(model, state | {"extra.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="missing scorer"):
        load_visual_state(model, {k: v for k, v in state.items() if not k.startswith("scorer.")})


def test_event_targets_mark_the_brief_shape_frames(maker: SampleMaker) -> None:
    for seed in range(60):
        sample = maker(seed)
        if sample.clip.kind.startswith("brief"):
            assert set(np.flatnonzero(sample.events)) >= set(sample.clip.evidence)
            assert 1 <= sample.events.sum() <= 4  # one or two brief windows of one or two seconds
        elif sample.clip.kind in ("count", "moved", "changed"):
            assert not sample.events.any()


def test_kind_weights_decide_which_questions_training_draws(maker: SampleMaker) -> None:
    weights = parse_kind_weights("moved=3, count=1,brief_colour=0")
    assert weights == {"moved": 3.0, "count": 1.0, "brief_colour": 0.0}
    weighted = SampleMaker(maker.config, maker.tokenize, 0.0, {k: 0.0 for k in KINDS} | weights)
    kinds = [weighted(seed).clip.kind for seed in range(40)]
    assert set(kinds) == {"moved", "count"} and kinds.count("moved") > kinds.count("count")
    with pytest.raises(ValueError, match="unknown clip kind 'spin'"):
        parse_kind_weights("spin=2")
    with pytest.raises(ValueError, match=">= 0"):
        parse_kind_weights("moved=-1")
    with pytest.raises(ValueError, match="above 0"):
        SampleMaker(maker.config, maker.tokenize, 0.0, {k: 0.0 for k in KINDS})


def test_answers_are_distinct_token_sequences_ending_the_sequence(lm_files: tuple[Path, Path]) -> None:
    """Each answer word's tokens (as the runtime tokenizes them), then end of sequence; colours and shapes,
    frequent in the tokenizer's corpus, are single pieces."""
    tokenizer, gguf = lm_files
    target = LmTarget(new_demo_lm(tokenizer), gguf, DEMO_PROMPT, ANSWERS)
    before, after = target.prompt("What shape appeared briefly?")
    target.close()
    assert before[0] == 1 and len(before) > 5  # BOS, the question, then the visual embeddings
    assert all(ids[-1] == 2 and 2 not in ids[:-1] for ids in target.answer_ids.values())
    assert len({tuple(ids) for ids in target.answer_ids.values()}) == len(ANSWERS)
    assert all(len(target.answer_ids[a]) == 2 for a in ("red", "purple", "circle", "triangle"))
    assert 1 <= len(after) <= 4  # " Answer:"


def test_baseline_plans_are_cones_only_within_the_same_budget(maker: SampleMaker) -> None:
    model = DynFocus(demo()).eval()
    config = demo()
    for plan in ("uniform", "random"):
        sample = maker(5, plan)
        with torch.no_grad():
            (visual,), (scores,), _ = encode_batch(model, [sample], None, np.random.default_rng(0))
        assert scores is None
        assert visual.shape[0] == baseline_frame_count(config, 16) * config.cone_tokens
        assert visual.shape[0] <= config.visual_token_count(16)


def test_recipe_trains_exports_and_the_bundle_answers(tmp_path: Path) -> None:
    """Two steps of each stage, then the export: the bundle opens (hashes verified) and its LM generates
    through llama.cpp (the shipped demo came from 1200 + 1200 steps: docs/demo.md)."""
    from dfrt.demo.training.export import export_demo
    from dfrt.demo.training.train import TrainConfig, train
    from dfrt.runtime.generate import Generator, SamplingConfig
    from dfrt.runtime.llm import LlamaModel
    from dfrt.runtime.visual import VisualPipeline

    cfg = TrainConfig(frame_steps=2, frame_batch=4, clip_steps=2, clip_batch=2, save_every=1, log_every=1)
    lines: list[str] = []
    train(tmp_path / "run", cfg, log=lines.append)
    assert any(line.startswith("saved weights (done)") for line in lines)
    data = export_demo(tmp_path / "run", tmp_path / "work", tmp_path / "data", tmp_path / "w.safetensors")
    visual = VisualPipeline.open(data)
    frames = np.zeros((4, 112, 112, 3), dtype=np.uint8)
    embeds = visual.embed(visual.encode_frames(frames), "How many shapes are there?").embeds
    with LlamaModel(data / visual.bundle.llm_file, n_ctx=512) as llm:  # type: ignore[operator]
        answer = Generator(llm, DEMO_PROMPT).answer(
            "How many shapes are there?", embeds, SamplingConfig(max_tokens=3, temperature=0.0)
        )
    assert answer.generated_tokens >= 1


def test_descriptions_name_what_each_question_asks_about() -> None:
    """The dense caption targets state every answer the world's questions can ask for."""
    import re

    from dfrt.demo.training.train import describe
    from dfrt.demo.world import COUNTS, make_clip

    for seed in range(70):
        clip = make_clip(seed)
        text = describe(clip)
        parts = text.rstrip(".").split(", ")
        assert len(parts) == len(clip.shapes), text
        if clip.kind in ("brief_colour", "brief_shape"):
            assert any(clip.answer in p and " brief " in p for p in parts), text
        elif clip.kind == "moved":
            assert f"moving {clip.answer}" in text
        elif clip.kind == "changed":
            assert f"turning {clip.answer}" in text
        elif clip.kind == "left":
            assert re.search(rf"\b{clip.answer} \w+ leaving", text), text
        elif clip.kind == "count":
            assert len(parts) == COUNTS.index(clip.answer) + 1


def test_resume_with_a_new_vision_tower_keeps_everything_downstream(tmp_path: Path) -> None:
    """``resume_from`` + ``vision_from``: the named run's tower under the resumed run's other weights and LM
    (how a position-aware tower was put under the trained demo: docs/demo.md)."""
    from safetensors.torch import load_file

    from dfrt.demo.training.train import TrainConfig, train

    tiny = {"frame_batch": 2, "clip_batch": 1, "log_every": 1, "save_every": 1}
    train(tmp_path / "a", TrainConfig(seed=1, frame_steps=1, clip_steps=1, **tiny), log=lambda _: None)
    train(tmp_path / "b", TrainConfig(seed=2, frame_steps=1, clip_steps=0, **tiny), log=lambda _: None)
    resumed = TrainConfig(
        seed=3,
        frame_steps=0,
        clip_steps=0,
        resume_from=str(tmp_path / "a"),
        vision_from=str(tmp_path / "b"),
        **tiny,
    )
    train(tmp_path / "c", resumed, log=lambda _: None)
    a, b, c = (load_file(str(tmp_path / run / "weights.safetensors")) for run in "abc")
    tower = [k for k in c if k.startswith("vision_tower.")]
    assert tower and all(torch.equal(c[k], b[k]) for k in tower)
    assert not all(torch.equal(a[k], b[k]) for k in tower)  # the two towers differ: the test can fail
    assert all(torch.equal(c[k], a[k]) for k in c if not k.startswith("vision_tower."))
    lm_a, lm_c = (load_file(str(tmp_path / run / "lm.safetensors")) for run in "ac")
    assert all(torch.equal(lm_c[k], lm_a[k]) for k in lm_a)


def test_output_positions_are_turned_on_by_a_run_and_kept_by_its_continuations(tmp_path: Path) -> None:
    """``output_positions``: the run's weights gain the map (zero at first, moved by stage 2); a run resumed
    from them keeps it without asking; the frozen tower does not move."""
    from safetensors.torch import load_file

    from dfrt.demo.training.reference import POSITIONS_KEY
    from dfrt.demo.training.train import TrainConfig, train

    tiny = {"frame_batch": 2, "clip_batch": 2, "log_every": 1, "save_every": 1}
    train(tmp_path / "a", TrainConfig(seed=1, frame_steps=1, clip_steps=0, **tiny), log=lambda _: None)
    on = TrainConfig(
        seed=2, frame_steps=0, clip_steps=2, output_positions=True, resume_from=str(tmp_path / "a"), **tiny
    )
    train(tmp_path / "b", on, log=lambda _: None)
    again = TrainConfig(seed=3, frame_steps=0, clip_steps=1, resume_from=str(tmp_path / "b"), **tiny)
    train(tmp_path / "c", again, log=lambda _: None)
    a, b, c = (load_file(str(tmp_path / run / "weights.safetensors")) for run in "abc")
    assert POSITIONS_KEY not in a and POSITIONS_KEY in b and POSITIONS_KEY in c
    assert float(b[POSITIONS_KEY].abs().sum()) > 0  # learned from zero
    assert not torch.equal(b[POSITIONS_KEY], c[POSITIONS_KEY])  # and still learning when continued
    assert all(torch.equal(a[k], c[k]) for k in a if k.startswith("vision_tower."))
    import json

    assert json.loads((tmp_path / "c" / "train_config.json").read_text())["output_positions"] is True


def test_distillation_anchors_the_tower_to_where_it_started(tmp_path: Path) -> None:
    """``distill_weight``: the drift term is 0 for the anchor's own tokens and 1 for zeros; a stage-1 run from
    a trained tower with it stays nearer that tower than the same run without it."""
    from safetensors.torch import load_file

    from dfrt.demo.training.train import TrainConfig, distill_loss, train

    anchor = torch.randn(3, 65, 8)
    assert float(distill_loss(anchor, anchor)) == 0.0
    assert float(distill_loss(torch.zeros_like(anchor), anchor)) == pytest.approx(1.0)
    tiny = {"frame_batch": 4, "clip_batch": 1, "clip_steps": 0, "log_every": 1, "save_every": 1}
    train(tmp_path / "start", TrainConfig(seed=1, frame_steps=1, **tiny), log=lambda _: None)
    lines: list[str] = []
    for name, weight in (("free", 0.0), ("anchored", 50.0)):
        cfg = TrainConfig(
            seed=2,
            frame_steps=4,
            frame_lr=0.01,
            distill_weight=weight,
            resume_from=str(tmp_path / "start"),
            **tiny,
        )
        train(tmp_path / name, cfg, log=lines.append)
    assert any("drift" in line for line in lines)
    start, free, anchored = (
        load_file(str(tmp_path / r / "weights.safetensors")) for r in ("start", "free", "anchored")
    )
    tower = [k for k in start if k.startswith("vision_tower.")]

    def moved(run: dict[str, torch.Tensor]) -> float:
        return sum(float((run[k] - start[k]).pow(2).sum()) for k in tower)

    assert 0 < moved(anchored) < moved(free)


def test_track_targets_follow_the_named_mover_and_train_the_rods(maker: SampleMaker) -> None:
    """``track_weight``: on `moved` clips each rod's question-attended embedding learns where the mover is
    (the gradient reaches the Q-Former and the rod value projection); other kinds add nothing."""
    from torch import nn

    from dfrt.demo.training.train import track_loss

    moved = SampleMaker(maker.config, maker.tokenize, 0.0, {k: float(k == "moved") for k in KINDS})
    samples = [moved(seed) for seed in range(2)]
    for s in samples:
        mover = next(shape for shape in s.clip.shapes if shape.velocity != (0.0, 0.0))
        assert s.track is not None and s.track.shape == (16, 2)
        assert s.track[15].tolist() == pytest.approx(mover.centre(15.0))
        step = np.diff(s.track, axis=0)
        assert (np.sign(step) == np.sign(mover.velocity)).all()  # one direction throughout
    drawn = [maker(seed) for seed in range(30)]
    assert all(s.track is None for s in drawn if s.clip.kind != "moved")
    torch.manual_seed(0)
    model = DynFocus(demo()).train()
    model.vision_tower.requires_grad_(False)
    visual, _, layouts = encode_batch(
        model, samples, torch.Generator().manual_seed(0), np.random.default_rng(0)
    )
    assert all(sorted(set(layout.tolist())) == [2, 38] for layout in layouts)
    probe = nn.Linear(demo().llm_width, 2)
    loss = track_loss(probe, visual, layouts, samples)
    loss.backward()
    assert float(loss.detach()) > 0
    for name in ("qformer", "rod_value_proj", "rod_attention"):
        assert any(
            p.grad is not None and float(p.grad.abs().sum()) > 0 for p in getattr(model, name).parameters()
        )
    assert float(model.projector[0].weight.grad.abs().sum()) == 0  # cones and mean tokens are not asked
    others = [s for s in drawn[:3] if s.clip.kind != "moved"]
    v, _, lay = encode_batch(model, others, None, np.random.default_rng(0))
    assert float(track_loss(probe, v, lay, others)) == 0.0


def test_cone_positions_are_trained_by_stage_two_and_kept_by_its_continuations(tmp_path: Path) -> None:
    import json

    from safetensors.torch import load_file

    from dfrt.demo.training.reference import CONE_POSITIONS_KEY
    from dfrt.demo.training.train import TrainConfig, train

    tiny = {"frame_batch": 2, "clip_batch": 2, "log_every": 1, "save_every": 1}
    train(tmp_path / "a", TrainConfig(seed=1, frame_steps=1, clip_steps=0, **tiny), log=lambda _: None)
    on = TrainConfig(
        seed=2, frame_steps=0, clip_steps=2, cone_positions=True, resume_from=str(tmp_path / "a"), **tiny
    )
    train(tmp_path / "b", on, log=lambda _: None)
    lines: list[str] = []
    again = TrainConfig(seed=3, frame_steps=0, clip_steps=1, resume_from=str(tmp_path / "b"), **tiny)
    train(tmp_path / "c", again, log=lines.append)
    b, c = (load_file(str(tmp_path / run / "weights.safetensors")) for run in "bc")
    assert float(b[CONE_POSITIONS_KEY].abs().sum()) > 0  # learned from zero
    assert not torch.equal(b[CONE_POSITIONS_KEY], c[CONE_POSITIONS_KEY])  # and still learning when continued
    assert any("cone slot embedding: it stays on" in line for line in lines)
    assert json.loads((tmp_path / "c" / "train_config.json").read_text())["cone_positions"] is True
