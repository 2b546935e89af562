"""`dfrt export` end to end: JSON report, checkpoint round trip, failures that keep what was built."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model and export need torch (dfrt[export])")
import torch
from safetensors.torch import save_file

from dfrt.errors import ParityError
from dfrt.manifest import MANIFEST_NAME
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.visual import VisualPipeline
from tests.conftest import frames
from tests.model.test_weights import _source_model, to_official


def _dfrt(*args):
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *args], capture_output=True, text=True, check=False
    )


def test_export_from_official_checkpoint_reproduces_it(tmp_path, tiny_config):
    source = _source_model(tiny_config)
    save_file(to_official(source.state_dict()), tmp_path / "model.safetensors")
    out = tmp_path / "bundle"
    result = _dfrt(
        "export",
        "--config",
        "tiny",
        "--checkpoint",
        str(tmp_path / "model.safetensors"),
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["parity"] and all(r["ok"] and r["cosine"] >= 0.9999 for r in report["parity"])
    assert {"vision.onnx", "tokenizer.json"} <= set(report["files"])
    assert "0 missing; 0 unexpected" in result.stderr

    pixels = frames(9, tiny_config.vision.image_size, seed=2)
    ids = torch.tensor([[101, 2054, 2003, 1996, 2158, 2725, 1029, 102]])
    with torch.no_grad():
        expected = source(pixels, ids)
    pipeline = VisualPipeline.open(out)
    got = pipeline.embed(pipeline.encode_pixels(pixels.numpy()), "What is the man doing?")
    assert np.array_equal(got.selection.key_frames, expected.selection.key_frames)
    np.testing.assert_allclose(got.embeds, expected.embeds.numpy(), atol=1e-4)
    assert Bundle.open(out).manifest.weights["source"] == "checkpoint"


def test_bad_checkpoint_is_one_line_and_exit_1(tmp_path):
    result = _dfrt(
        "export", "--config", "tiny", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "b")
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "checkpoint not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_validation_keeps_the_existing_bundle(tiny_bundle, tiny_model, tmp_path, monkeypatch):
    from dfrt.export import bundle_writer as bundle_module
    from dfrt.export import parity as validate

    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(validate, "MIN_COSINE", 1.5)  # no graph can pass
    with pytest.raises(ParityError, match="vision"):
        bundle_module.export_bundle(tiny_model, out, {"source": "random"}, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no staging left
    Bundle.open(out)


def test_interrupted_commit_leaves_no_valid_looking_manifest(tiny_model, tmp_path, monkeypatch):
    from dfrt import fileio
    from dfrt.export import bundle_writer as bundle_module

    write = fileio.atomic_write_text

    def crash_on_the_manifest(path, text):
        if path.name == MANIFEST_NAME:
            raise KeyboardInterrupt
        write(path, text)

    monkeypatch.setattr(fileio, "atomic_write_text", crash_on_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        bundle_module.export_bundle(
            tiny_model, tmp_path / "b", {"source": "random"}, validate=False, progress=False
        )
    assert not (tmp_path / "b" / MANIFEST_NAME).exists()
    assert not any(p.name.startswith(".staging") for p in (tmp_path / "b").iterdir())
    assert (tmp_path / "b" / fileio.COMMIT_JOURNAL).is_file()  # which files are dfrt's, for the next run
    monkeypatch.undo()
    bundle_module.export_bundle(
        tiny_model, tmp_path / "b", {"source": "random"}, validate=False, progress=False
    )
    assert not (tmp_path / "b" / fileio.COMMIT_JOURNAL).exists()
    Bundle.open(tmp_path / "b")


def test_re_export_removes_files_only_the_old_manifest_listed(tiny_bundle, tiny_model, tmp_path):
    from dfrt.export.bundle_writer import export_bundle

    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    digest = hashlib.sha256(b"old").hexdigest()  # dfrt deletes only files whose bytes it listed
    manifest["files"]["old-llm.gguf"] = {"sha256": digest, "bytes": 3}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    (out / "old-llm.gguf").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")  # not listed: not ours to delete
    export_bundle(tiny_model, out, {"source": "random"}, validate=False, progress=False)
    assert not (out / "old-llm.gguf").exists() and (out / "notes.txt").exists()
    Bundle.open(out)
