"""A tiny random SmolVLM2 checkpoint and its dfrt bundles, built once per session (torch, transformers)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smolvlm_checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.tiny_smolvlm import tiny_smolvlm

    return tiny_smolvlm(tmp_path_factory.mktemp("smolvlm") / "checkpoint")


@pytest.fixture(scope="session")
def smolvlm_f32_bundle(tmp_path_factory, smolvlm_checkpoint):
    """The checkpoint exported with its LM in F32 (exact parity), no scorer."""
    from tests.bundles import export_smolvlm

    return export_smolvlm(smolvlm_checkpoint, tmp_path_factory.mktemp("smolvlm-f32") / "bundle", "f32")


@pytest.fixture(scope="session")
def smolvlm_scorer_bundle(tmp_path_factory, smolvlm_checkpoint):
    """The checkpoint exported with a tiny random SigLIP frame scorer."""
    from tests.bundles import export_smolvlm
    from tests.tiny_scorer import build

    scorer = build(tmp_path_factory.mktemp("siglip") / "siglip", "siglip")
    return export_smolvlm(
        smolvlm_checkpoint, tmp_path_factory.mktemp("smolvlm-scorer") / "bundle", "f16", scorer
    )


@pytest.fixture(scope="session")
def smolvlm_bundle(tmp_path_factory, request):
    """The tiny SmolVLM2 bundle as the runtime-only job sees it: prebuilt (tests/bundles.py), else exported
    here (torch)."""
    from tests.bundles import SMOLVLM, export_smolvlm, prebuilt

    out = tmp_path_factory.mktemp("smolvlm-runtime") / "bundle"
    built = prebuilt(SMOLVLM, out)
    return built or export_smolvlm(request.getfixturevalue("smolvlm_checkpoint"), out)


@pytest.fixture(scope="session")
def internvl_checkpoint(tmp_path_factory):
    """A tiny random InternVL3.5 (InternViT + Qwen3) checkpoint (:mod:`tests.tiny_internvl`)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.tiny_internvl import tiny_internvl

    return tiny_internvl(tmp_path_factory.mktemp("internvl") / "checkpoint")


@pytest.fixture(scope="session")
def internvl_f32_bundle(tmp_path_factory, internvl_checkpoint):
    """The checkpoint exported with its Qwen3 LM in F32 (exact parity), no scorer."""
    from dfrt.families.internvl.export import export_checkpoint

    out = tmp_path_factory.mktemp("internvl-f32") / "bundle"
    export_checkpoint(internvl_checkpoint, out, quantize="f32")
    return out


@pytest.fixture(scope="session")
def internvl_scorer_bundle(tmp_path_factory, internvl_checkpoint):
    """The checkpoint exported (F16 LM) with a tiny random SigLIP frame scorer."""
    from dfrt.families.internvl.export import export_checkpoint
    from tests.tiny_scorer import build

    scorer = build(tmp_path_factory.mktemp("siglip-internvl") / "siglip", "siglip")
    out = tmp_path_factory.mktemp("internvl-scorer") / "bundle"
    export_checkpoint(internvl_checkpoint, out, scorer=scorer)
    return out
