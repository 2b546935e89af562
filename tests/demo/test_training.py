"""The training recipe's parts: the frozen LLM is the runtime's LLM, and gradients reach every stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfrt.config import demo  # noqa: E402
from dfrt.demo.bundle import DEMO_PROMPT  # noqa: E402
from dfrt.demo.evaluate import baseline_frame_count  # noqa: E402
from dfrt.demo.gguf_torch import read_llama_gguf  # noqa: E402
from dfrt.demo.train import AnswerHead, LlmTarget, SampleMaker, encode_batch  # noqa: E402
from dfrt.export.tokenizer import build_question_tokenizer  # noqa: E402
from dfrt.metrics import cosine  # noqa: E402
from dfrt.model.dynfocus import DynFocus  # noqa: E402
from dfrt.runtime.llm import LlamaModel  # noqa: E402
from dfrt.runtime.question import QuestionTokenizer  # noqa: E402
from tests.media import smollm2_gguf  # noqa: E402


def test_gguf_in_pytorch_gives_llama_cpp_logits() -> None:
    path = smollm2_gguf()
    model = read_llama_gguf(path)
    with LlamaModel(path, n_ctx=256) as llm:
        prompt = "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n"
        ids = llm.tokenize(prompt, False)
        llm.decode_tokens(ids, 0)
        expected = llm.last_logits()
    with torch.no_grad():
        got = model(torch.tensor([ids]))[0, -1].numpy()
    assert cosine(got, expected) > 0.999
    assert int(got.argmax()) == int(expected.argmax())


@pytest.fixture(scope="module")
def maker(tmp_path_factory: pytest.TempPathFactory) -> SampleMaker:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    config = demo()
    path.write_text(build_question_tokenizer(config.qformer.max_question_tokens))
    return SampleMaker(config, QuestionTokenizer(path), baseline_share=0.0)


def test_stage1_step_trains_the_scorer_through_perturbed_top_k(maker: SampleMaker) -> None:
    torch.manual_seed(0)
    model = DynFocus(demo()).train()
    head = AnswerHead(576, demo().qformer.vocab_size)
    samples = [maker(s) for s in range(3)]
    visual, _ = encode_batch(model, samples, torch.Generator().manual_seed(0), np.random.default_rng(0))
    assert [v.shape[0] for v in visual] == [demo().visual_token_count(16)] * 3
    logits = head(visual, [torch.from_numpy(s.question_ids) for s in samples])
    torch.nn.functional.cross_entropy(logits, torch.tensor([s.answer for s in samples])).backward()
    for name in ("vision_tower", "scorer", "qformer", "projector", "rod_value_proj"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name


def test_baseline_plans_are_cones_only_within_the_same_budget(maker: SampleMaker) -> None:
    model = DynFocus(demo()).eval()
    config = demo()
    for plan in ("uniform", "random"):
        sample = maker(5, plan)
        with torch.no_grad():
            (visual,), _ = encode_batch(model, [sample], None, np.random.default_rng(0))  # type: ignore[arg-type]
        assert visual.shape[0] == baseline_frame_count(config, 16) * config.cone_tokens
        assert visual.shape[0] <= config.visual_token_count(16)


def test_llm_loss_is_the_answer_tokens_of_the_runtime_prompt(maker: SampleMaker) -> None:
    target = LlmTarget(smollm2_gguf(), DEMO_PROMPT)
    before, after = target.prompt("What shape appeared briefly?")
    text = DEMO_PROMPT.format.format(system=DEMO_PROMPT.system, question="What shape appeared briefly?")
    head = text.partition("<image>")[0]
    assert before == target._tokenizer.tokenize(head, add_bos=False)
    assert after[-4:] == target._tokenizer.tokenize("<|im_start|>assistant\n", add_bos=False)
    visual = torch.zeros(4, 576, requires_grad=True)
    loss, _ = target.loss([visual], ["What shape appeared briefly?"], ["circle"])
    loss.backward()
    assert torch.isfinite(loss) and float(visual.grad.abs().sum()) > 0


def test_recipe_runs_both_stages_and_writes_loadable_weights(tmp_path: Path) -> None:
    """One step of each stage: the recipe end to end (the shipped weights came from 500 + 300 steps)."""
    from safetensors.torch import load_file

    from dfrt.demo.train import TrainConfig, train

    cfg = TrainConfig(stage1_steps=1, stage1_batch=2, stage2_steps=1, stage2_batch=1, save_every=1)
    lines: list[str] = []
    weights = train(tmp_path, smollm2_gguf(), cfg, log=lines.append)
    model = DynFocus(demo())
    model.load_state_dict(load_file(str(weights)), strict=True)
    assert any(line.startswith("saved weights (done)") for line in lines)
    assert (tmp_path / "train_config.json").is_file() and (tmp_path / "train_report.json").is_file()
