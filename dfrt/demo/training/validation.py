"""A training run's accuracy on the validation clips, in PyTorch, without exporting it.

    python -m dfrt.demo.training.validation runs/demo-next [--count 70] [--strategies dynfocus,uniform]
        [--visual-tokens default,140,68]

For choosing between runs and checkpoints during training. The validation clips are their own fixed seed range
(``world.VALIDATION_SEED_BASE``), apart from training's and from the held-out test set's, so choosing by them
leaves the test set untouched (the figures we report come from the test set, measured once at the end). The
run's LM is written to a temporary GGUF and answers through llama.cpp, as in ``dfrt eval``; the visual path is
the run's PyTorch model with the shipped demo bundle's preprocessing and question tokenizer.
``--visual-tokens`` measures at visual-token budgets (:mod:`dfrt.runtime.budget`, as ``dfrt eval
--visual-tokens``; ``default``: the config's key-frame ratio), each in turn on the same clips.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dfrt.demo.evaluate import STRATEGIES, ReferenceEmbedder, Scores, evaluate, validation_set
from dfrt.demo.world import BRIEF_KINDS, KINDS
from dfrt.runtime.default_bundle import demo_bundle
from dfrt.runtime.pipeline import Pipeline


def validate_run(
    run: Path, count: int, strategies: tuple[str, ...], visual_tokens: int | None = None
) -> dict[str, Scores]:
    """Accuracy per strategy of ``run`` (weights.safetensors, lm.safetensors, tokenizer.model), at a
    visual-token budget (None: the config's default)."""
    import torch
    from safetensors.torch import load_file

    from dfrt.demo.training.lm import demo_lm_config, write_demo_gguf
    from dfrt.demo.training.reference import demo_model_of
    from dfrt.export.gguf_llm import read_sentencepiece_vocab
    from dfrt.model.llama import Llama

    model = demo_model_of(load_file(str(run / "weights.safetensors")))
    tokenizer = run / "tokenizer.model"
    lm = Llama(demo_lm_config(len(read_sentencepiece_vocab(tokenizer).tokens)))
    lm.load_state_dict(load_file(str(run / "lm.safetensors")), strict=True)
    items = validation_set(count)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        gguf = write_demo_gguf(lm, tokenizer, Path(tmp) / "lm.gguf")
        with Pipeline(demo_bundle(), llm=gguf, backend="onnxruntime") as pipe:
            embedder = ReferenceEmbedder(model, pipe)
            return evaluate(items, pipe, embedder, strategies, visual_tokens=visual_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--count", type=int, default=70)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument(
        "--visual-tokens",
        default="default",
        help="comma-separated visual-token budgets, each measured in turn ('default': the config's own)",
    )
    args = parser.parse_args()
    strategies = tuple(args.strategies.split(","))
    for item in args.visual_tokens.split(","):
        budget = None if item.strip() == "default" else int(item)
        start = time.perf_counter()
        scores = validate_run(args.run, args.count, strategies, budget)
        at = "" if budget is None else f", budget {budget} visual tokens"
        print(f"{args.run}: {args.count} validation clips{at}, {time.perf_counter() - start:.0f} s")
        for name, s in scores.items():
            kinds = " ".join(f"{k} {s.accuracy([k]):.2f}" for k in KINDS if s.total[k])
            print(f"  {name:8s} overall {s.accuracy():.3f} brief {s.accuracy(BRIEF_KINDS):.3f} | {kinds}")


if __name__ == "__main__":
    main()
