"""Trained weights -> the shipped demo: fp16 weights and the ONNX bundle (without its LLM) as package data.

    python -m dfrt.demo.export --weights runs/demo/weights.safetensors

Weights are rounded to fp16 once (half the size in the repository); the graphs are exported from the rounded
weights, so the ONNX bundle and the PyTorch reference compute the same model. The full bundle, LLM included,
is built in ``--work`` and validated against PyTorch; everything but the LLM is copied into ``dfrt/data/demo``
(the manifest pins the LLM's sha256: :mod:`dfrt.demo.default` adds SmolLM2 from its package on first use).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dfrt.config import demo
from dfrt.demo.bundle import DEMO_PROMPT, smollm2_gguf
from dfrt.demo.default import shipped_demo
from dfrt.demo.reference import shipped_weights
from dfrt.export.bundle import export_bundle
from dfrt.fileio import atomic_path, sha256_file
from dfrt.manifest import MANIFEST_NAME
from dfrt.model.dynfocus import DynFocus


def export_demo(weights: Path, work: Path, data: Path, weights_out: Path) -> Path:
    state = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(weights)).items()}
    with atomic_path(weights_out) as tmp:
        save_file(state, str(tmp))
    model = DynFocus(demo()).eval()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    provenance = {
        "source": "dfrt demo: trained by dfrt.demo.train on the synthetic shape world (not DynFocus weights)",
        "weights_sha256": sha256_file(weights_out),
    }
    result = export_bundle(model, work, provenance, llm=smollm2_gguf(), prompt=DEMO_PROMPT)
    llm_file = result.manifest.llm["file"] if result.manifest.llm else None
    staging = data.with_name(data.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in result.manifest.files:
        if name != llm_file:
            shutil.copyfile(work / name, staging / name)
    shutil.copyfile(work / MANIFEST_NAME, staging / MANIFEST_NAME)
    shutil.rmtree(data, ignore_errors=True)
    staging.rename(data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--weights", type=Path, required=True, help="weights.safetensors from dfrt.demo.train"
    )
    parser.add_argument("--work", type=Path, default=Path("runs/demo/bundle"))
    args = parser.parse_args()
    out = export_demo(args.weights, args.work, shipped_demo(), shipped_weights())
    print(f"demo bundle in {out}, weights in {shipped_weights()}")


if __name__ == "__main__":
    main()
