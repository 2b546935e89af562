"""The test bundles, built from the tiny model: by the fixtures (with torch), or ahead of time for a
torch-free run (``python -m tests.bundles DIR`` in a venv with torch, then ``DFRT_TEST_BUNDLES=DIR``): the
runtime-only CI job tests the runtime on the very bundles the full suite uses, with neither torch nor onnx."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

TINY, LLM, NARROW, SMOLVLM = "tiny", "llm", "narrow", "smolvlm"
PREBUILT = "DFRT_TEST_BUNDLES"  # a directory holding tiny/ and llm/ written by this module


def tiny_model():  # type: ignore[no-untyped-def]
    import torch

    from dfrt.config import tiny
    from dfrt.model.dynfocus import DynFocus

    torch.manual_seed(0)
    return DynFocus(tiny()).eval()


def export_tiny(model, out: Path) -> Path:  # type: ignore[no-untyped-def]
    """The tiny model exported, with validation."""
    from dfrt.export.bundle_writer import export_bundle

    export_bundle(model, out, {"source": "random", "seed": 0}, validate=True, progress=False)
    return out


def export_llm(model, out: Path, gguf: Path) -> Path:  # type: ignore[no-untyped-def]
    """The tiny model with a real LLM (``gguf``: SmolLM2-135M) and its own chat template."""
    from dfrt.export.bundle_writer import export_bundle
    from dfrt.manifest import PromptTemplate

    prompt = PromptTemplate(name="gguf", stop=())
    export_bundle(model, out, {"source": "random"}, validate=False, progress=False, llm=gguf, prompt=prompt)
    return out


def export_narrow(out: Path) -> Path:
    """A tiny model projecting into width 64: no GGUF here has that width."""
    import torch

    from dfrt.config import DynFocusConfig, tiny
    from dfrt.export.bundle_writer import export_bundle
    from dfrt.model.dynfocus import DynFocus

    config = DynFocusConfig.from_dict({**tiny().to_dict(), "llm_width": 64, "name": "narrow"})
    torch.manual_seed(0)
    export_bundle(DynFocus(config).eval(), out, {"source": "random"}, validate=False, progress=False)
    return out


def export_smolvlm(checkpoint: Path, out: Path, quantize: str = "f16", scorer: Path | None = None) -> Path:
    """A tiny random SmolVLM2 checkpoint (:mod:`tests.tiny_smolvlm`) exported as a dfrt bundle."""
    from dfrt.families.smolvlm.export import export_checkpoint

    export_checkpoint(checkpoint, out, scorer=scorer, quantize=quantize)
    return out


def prebuilt(name: str, target: Path) -> Path | None:
    """A copy of the prebuilt bundle ``name`` at ``target`` when ``DFRT_TEST_BUNDLES`` is set, else None."""
    root = os.environ.get(PREBUILT)
    if not root or not (Path(root) / name).is_dir():
        return None
    return Path(shutil.copytree(Path(root) / name, target))


def main(out: Path) -> None:
    from tests.media import smollm2_gguf

    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    export_tiny(model, out / TINY)
    export_llm(model, out / LLM, smollm2_gguf())
    export_narrow(out / NARROW)
    from tests.tiny_smolvlm import tiny_smolvlm

    export_smolvlm(tiny_smolvlm(out / ".smolvlm-checkpoint"), out / SMOLVLM)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
