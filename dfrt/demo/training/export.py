"""A training run -> the shipped demo: the whole bundle (graphs, tokenizer, demo LM) and fp16 weights as
package data.

    python -m dfrt.demo.training.export --run runs/demo

Weights are rounded to fp16 once (half the size in the repository); the graphs are exported from the rounded
weights, so the ONNX bundle and the PyTorch reference compute the same model. The demo LM is written to GGUF
by dfrt's converter. The bundle is built in ``--work``, validated against PyTorch, then copied whole into
``dfrt/data/demo`` (staged, then renamed into place).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dfrt.demo.training.lm import demo_lm_config, write_demo_gguf
from dfrt.demo.training.prompt import DEMO_LM_FILE, DEMO_PROMPT
from dfrt.demo.training.reference import demo_model_of, shipped_weights
from dfrt.export.bundle_writer import export_bundle
from dfrt.export.gguf_llm import read_sentencepiece_vocab
from dfrt.fileio import atomic_path, sha256_file
from dfrt.manifest import MANIFEST_NAME
from dfrt.model.llama import Llama
from dfrt.runtime.default_bundle import shipped_demo


def export_demo(run: Path, work: Path, data: Path, weights_out: Path) -> Path:
    """``run``'s weights.safetensors, lm.safetensors and tokenizer.model -> ``data`` and ``weights_out``."""
    state = {
        k: v.to(torch.float16).contiguous() for k, v in load_file(str(run / "weights.safetensors")).items()
    }
    with atomic_path(weights_out) as tmp:
        save_file(state, str(tmp))
    model = demo_model_of(state)
    tokenizer = run / "tokenizer.model"
    lm = Llama(demo_lm_config(len(read_sentencepiece_vocab(tokenizer).tokens)))
    lm.load_state_dict(load_file(str(run / "lm.safetensors")), strict=True)
    work.mkdir(parents=True, exist_ok=True)
    gguf = write_demo_gguf(lm, tokenizer, work.parent / DEMO_LM_FILE)
    provenance = {
        "source": "dfrt demo: trained by dfrt.demo.training.train on the synthetic shape world "
        "(not DynFocus weights)",
        "weights_sha256": sha256_file(weights_out),
        "llm": "dfrt demo LM: a 4-layer LLaMA trained from scratch with the visual model "
        "(dfrt.demo.training.lm)",
    }
    result = export_bundle(model, work, provenance, llm=gguf, prompt=DEMO_PROMPT, move_llm=True)
    staging = data.with_name(data.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in result.manifest.files:  # the bundle's own files only (not INT8 graphs or engines built later)
        shutil.copyfile(work / name, staging / name)
    shutil.copyfile(work / MANIFEST_NAME, staging / MANIFEST_NAME)
    shutil.rmtree(data, ignore_errors=True)
    staging.rename(data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", type=Path, default=Path("runs/demo"), help="the dfrt.demo.training.train output"
    )
    parser.add_argument("--work", type=Path, default=None, help="where the bundle is built (RUN/bundle)")
    args = parser.parse_args()
    out = export_demo(
        args.run, args.work or args.run / "bundle", shipped_demo(), shipped_weights(must_exist=False)
    )
    print(f"demo bundle in {out}, weights in {shipped_weights()}")


if __name__ == "__main__":
    main()
