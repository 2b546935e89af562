"""Question-aware DPE scoring (dfrt's extension): behaviour, ONNX parity, runtime = reference, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model and export need torch (dfrt[export])")
import torch
from safetensors.torch import save_file
from torch import nn

from dfrt.contracts import graph_specs
from dfrt.errors import ConfigError, ContractError
from dfrt.export.bundle_writer import export_bundle
from dfrt.export.onnx_export import export_graph
from dfrt.export.parity import validate_graph
from dfrt.manifest import MANIFEST_NAME, Manifest
from dfrt.metrics import cosine
from dfrt.model.dynfocus import DynFocus
from dfrt.model.scorer import question_scores
from dfrt.runtime.visual import VisualPipeline
from tests.conftest import frames
from tests.model.test_weights import _source_model, _write_sharded, to_official

DFRT_EXPORT = (sys.executable, "-m", "dfrt.cli", "export")


def _identity(width):
    proj = nn.Linear(width, width)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(width))
        proj.bias.zero_()
    return proj


def test_the_frame_that_matches_the_question_wins_and_its_repeat_gives_way():
    gen = torch.Generator().manual_seed(0)
    width, tokens, queries = 16, 4, 3
    target = torch.zeros(width)
    target[0] = 1.0
    prototypes = 0.1 * torch.randn(8, tokens, width, generator=gen)
    prototypes[5, 2] = 4.0 * target  # frame 5 shows what the question asks about
    q_emb = target.expand(8, queries, width).clone()  # queries conditioned on the question
    with torch.no_grad():
        scores = question_scores(prototypes, q_emb, _identity(width))
    assert int(scores.argmax()) == 5 and float(scores.max()) == pytest.approx(1.0, abs=1e-4)
    assert float(scores.min()) == pytest.approx(0.0, abs=1e-6)

    repeated = prototypes.clone()
    repeated[6] = repeated[5]  # the next frame repeats it: as relevant, but nothing new
    with torch.no_grad():
        scores = question_scores(repeated, q_emb, _identity(width))
    assert scores[5] > scores[6] > np.median(scores.numpy())


def test_a_different_question_moves_the_scores():
    width = 16
    prototypes = torch.randn(6, 4, width, generator=torch.Generator().manual_seed(1))
    first, second = torch.zeros(width), torch.zeros(width)
    first[0], second[1] = 1.0, 1.0
    prototypes[1, 0], prototypes[4, 0] = 5 * first, 5 * second
    with torch.no_grad():
        a = question_scores(prototypes, first.expand(6, 2, width), _identity(width))
        b = question_scores(prototypes, second.expand(6, 2, width), _identity(width))
    assert int(a.argmax()) == 1 and int(b.argmax()) == 4


def test_unknown_modes_are_refused(tiny_config):
    with pytest.raises(ConfigError):
        DynFocus(tiny_config, scoring="oracle")
    with pytest.raises(ContractError):
        graph_specs(tiny_config, "oracle")


@pytest.fixture(scope="module")
def question_model(tiny_config):
    torch.manual_seed(0)
    return DynFocus(tiny_config, scoring="question").eval()


def test_scoring_graph_matches_pytorch_in_onnxruntime(question_model, tmp_path):
    spec = graph_specs(question_model.config, "question")["scoring"]
    assert spec.input_names == ["prototypes", "q_emb"]
    onnx_path, _ = export_graph(question_model, spec, tmp_path)
    results = validate_graph(question_model, spec, onnx_path)
    assert {r.axes["prototypes"] for r in results} == {1, 3}  # one prototype (an image) and several
    assert all(r.ok for r in results), [r.line() for r in results]


@pytest.fixture(scope="module")
def question_bundle(question_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("qbundle") / "bundle"
    export_bundle(question_model, out, {"source": "random"}, validate=True, progress=False)
    return out


@pytest.mark.parametrize("num_frames", [1, 9, 83])
def test_runtime_selects_what_the_reference_selects_per_question(question_model, question_bundle, num_frames):
    pipeline = VisualPipeline.open(question_bundle)
    assert pipeline.question_aware
    pixels = frames(num_frames, question_model.config.vision.image_size, seed=num_frames)
    video = pipeline.encode_pixels(pixels.numpy())
    selections = []
    for seed in (3, 4):
        ids = torch.randint(1000, 30000, (1, 10), generator=torch.Generator().manual_seed(seed))
        ids[0, 0], ids[0, -1] = 101, 102
        with torch.no_grad():
            expected = question_model(pixels, ids)
        got = pipeline.embed_ids(video, ids.numpy(), np.ones_like(ids.numpy()))
        assert np.array_equal(got.selection.key_frames, expected.selection.key_frames)
        np.testing.assert_allclose(got.scores, expected.scores.numpy(), atol=1e-4)
        assert cosine(got.embeds, expected.embeds.numpy()) >= 0.9999
        assert got.embeds.shape == tuple(expected.embeds.shape)
        assert video.selection is None and video.scores is None  # a question never changes the video
        selections.append(got.scores)
    if num_frames > 1:
        assert not np.allclose(selections[0], selections[1], atol=1e-3)  # the question matters


def test_manifest_records_the_mode_and_old_bundles_read_as_trained(question_bundle, tiny_bundle):
    text = (question_bundle / MANIFEST_NAME).read_text()
    assert json.loads(text)["scoring"] == "question"
    assert Manifest.from_json(text, "q").graphs["scoring"].spec.input_names == ["prototypes", "q_emb"]
    old = json.loads((tiny_bundle / MANIFEST_NAME).read_text())
    old.pop("scoring", None)  # written before the field existed
    assert Manifest.from_json(json.dumps(old), "old").scoring == "trained"
    old["scoring"] = "question"  # a trained-scorer graph cannot pass for a question-aware one
    with pytest.raises(ConfigError, match="contract of graph scoring"):
        Manifest.from_json(json.dumps(old), "edited")


def _llamavid_checkpoint(root, config):
    """LLaMA-VID layout (sharded, no scorer, no gate, no tower) + LAVIS eva_vit_g.pth (one block more)."""
    official = to_official(_source_model(config).state_dict())
    tower = "model.vision_tower.vision_tower."
    visual = {k: v for k, v in official.items() if not k.startswith((tower, "selective_net.", "merge."))}
    directory = _write_sharded(root / "llama-vid", visual, "safetensors")
    eva = {k[len(tower) :]: v for k, v in official.items() if k.startswith(tower)}
    extra = config.vision.depth
    eva.update(
        {f"blocks.{extra}.{k.split('.', 2)[2]}": v for k, v in eva.items() if k.startswith("blocks.0.")}
    )
    torch.save(eva, root / "eva_vit_g.pth")
    return directory, root / "eva_vit_g.pth", official


def test_cli_llamavid_checkpoint_defaults_to_question_scoring(tmp_path, tiny_config):
    directory, eva, _ = _llamavid_checkpoint(tmp_path, tiny_config)
    out = tmp_path / "bundle"
    result = subprocess.run(
        [
            *DFRT_EXPORT,
            "--checkpoint",
            str(directory),
            "--vision-weights",
            str(eva),
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "checkpoint shapes match the tiny config" in err  # no --config needed
    assert "layouts: llamavid, eva_vit" in err and "0 missing; 0 unexpected" in err
    assert "structure.score.* (2 tensors): zeros, a uniform clustering gate" in err
    assert "scoring: question (the checkpoints carry no trained DPE scorer)" in err
    assert all(r["ok"] for r in json.loads(result.stdout)["parity"])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["scoring"] == "question" and manifest["weights"]["scoring"] == "question"


def test_cli_dynfocus_checkpoint_keeps_the_trained_scorer(tmp_path, tiny_config):
    save_file(to_official(_source_model(tiny_config).state_dict()), tmp_path / "model.safetensors")
    out = tmp_path / "bundle"
    result = subprocess.run(
        [
            *DFRT_EXPORT,
            "--checkpoint",
            str(tmp_path / "model.safetensors"),
            "--out",
            str(out),
            "--no-validate",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "scoring: trained" in result.stderr
    assert json.loads((out / MANIFEST_NAME).read_text())["scoring"] == "trained"
