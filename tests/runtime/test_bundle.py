"""Bundle integrity: a damaged, edited or foreign bundle is refused with a message naming the file."""

import json
import shutil

import pytest

from dfrt.errors import ConfigError
from dfrt.manifest import MANIFEST_NAME
from dfrt.runtime.bundle import Bundle


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def test_clean_bundle_opens(bundle_copy):
    bundle = Bundle.open(bundle_copy)
    assert list(bundle.manifest.graphs) == ["vision", "scoring", "encoding", "question", "fusion"]
    assert bundle.manifest.weights["source"] == "random"


def test_corrupted_graph_is_refused(bundle_copy):
    path = bundle_copy / "fusion.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"fusion\.onnx: sha256 mismatch"):
        Bundle.open(bundle_copy)


def test_replaced_graph_is_refused(bundle_copy):
    shutil.copy(bundle_copy / "scoring.onnx", bundle_copy / "encoding.onnx")
    with pytest.raises(ConfigError, match=r"encoding\.onnx: size"):
        Bundle.open(bundle_copy)


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "question.onnx").unlink()
    with pytest.raises(ConfigError, match=r"question\.onnx: missing"):
        Bundle.open(bundle_copy)


def test_wrong_schema_version(bundle_copy):
    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="schema version 99"):
        Bundle.open(bundle_copy)


def test_manifest_paths_cannot_escape(bundle_copy):
    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["graphs"]["vision"]["file"] = "../vision.onnx"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unsafe file"):
        Bundle.open(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(ConfigError, match=r"dfrt\.json is missing"):
        Bundle.open(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        Bundle.open(tmp_path / "nothing")
