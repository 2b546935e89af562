"""Bundle integrity: a damaged, edited or foreign bundle is refused with a message naming the file."""

import json
import shutil

import pytest

from dfrt.errors import ConfigError
from dfrt.manifest import MANIFEST_NAME
from dfrt.runtime.bundle import Bundle

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


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


def test_verification_stamp_skips_rehashing_until_a_file_changes(bundle_copy, monkeypatch):
    from dfrt.runtime import bundle as bundle_module

    Bundle.open(bundle_copy)  # hashes everything, leaves the stamp
    assert (bundle_copy / ".verified.json").is_file()
    calls = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda p: calls.append(p.name) or real(p))
    Bundle.open(bundle_copy)
    assert calls == ["dfrt.json"]  # only the manifest digest, no graph re-hashed
    path = bundle_copy / "scoring.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(ConfigError, match=r"scoring\.onnx: sha256 mismatch"):
        Bundle.open(bundle_copy)


def test_edited_contract_is_refused(bundle_copy):
    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["graphs"]["scoring"]["contract"]["ranges"]["prototypes"] = [1, 32, 5000]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="contract of graph scoring"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("llm", "x", "llm must be null"),
        ("graphs", {}, "expected"),
        ("files", {"a": {"sha256": "zz", "bytes": 1}}, "not a sha256"),
    ],
)
def test_malformed_manifest_fields_are_one_error(bundle_copy, field, value, message):
    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        Bundle.open(bundle_copy)


def test_non_utf8_manifest(bundle_copy):
    (bundle_copy / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="unreadable"):
        Bundle.open(bundle_copy)


def test_forced_verification_ignores_the_stamp(bundle_copy):
    import os

    Bundle.open(bundle_copy)
    path = bundle_copy / "scoring.onnx"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a forged mtime fools the stamp ...
    Bundle.open(bundle_copy)
    with pytest.raises(ConfigError, match="sha256 mismatch"):  # ... but not a forced check
        Bundle.open(bundle_copy, verify=False).verify(force=True)


def test_contracts_carry_the_vocabulary_bound(bundle_copy):
    """The manifest's contracts are replaced by the config's (equal), which bound the token ids."""
    spec = Bundle.open(bundle_copy, verify=False).manifest.graphs["question"].spec
    ids = next(t for t in spec.inputs if t.name == "input_ids")
    assert ids.upper == Bundle.open(bundle_copy, verify=False).manifest.config.qformer.vocab_size


def test_an_exported_bundle_has_no_unlisted_external_data(bundle_copy):
    from dfrt.runtime.bundle import external_data

    bundle = Bundle.open(bundle_copy)
    for name in bundle.manifest.graphs:
        for location, _, _ in external_data(bundle.graph_path(name)):
            assert location in bundle.manifest.files


def test_an_oversized_listing_is_refused_before_hashing(bundle_copy, monkeypatch):
    from dfrt.runtime import bundle as bundle_module

    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["files"]["tokenizer.json"]["bytes"] = 1 << 30
    path.write_text(json.dumps(data))
    monkeypatch.setattr(bundle_module, "sha256_file", lambda p: pytest.fail("hashed"))
    with pytest.raises(ConfigError, match="cap"):
        Bundle.open(bundle_copy)
