"""The engine cache (no GPU needed): keys, foreign and damaged engines, atomic metadata."""

import json
import shutil

import pytest

from dfrt.runtime.backends.tensorrt.engine_cache import EngineCache, Target, engine_key
from dfrt.runtime.bundle import Bundle

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

ORIN = Target("Orin (nvgpu)", "8.7", "10.3.0")
H100 = Target("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")


@pytest.fixture
def cache(tiny_bundle, tmp_path):
    return EngineCache(Bundle.open(shutil.copytree(tiny_bundle, tmp_path / "bundle")))


def test_key_covers_everything_an_engine_depends_on(cache):
    spec = cache.bundle.manifest.graphs["vision"].spec
    base = engine_key("a" * 64, "fp16", spec, ORIN)
    assert base == engine_key("a" * 64, "fp16", spec, ORIN)
    others = {
        engine_key("b" * 64, "fp16", spec, ORIN),  # another ONNX
        engine_key("a" * 64, "int8", spec, ORIN),  # another precision
        engine_key("a" * 64, "fp16", cache.bundle.manifest.graphs["encoding"].spec, ORIN),  # another profile
        engine_key("a" * 64, "fp16", spec, H100),  # another GPU
        engine_key("a" * 64, "fp16", spec, Target(ORIN.gpu, ORIN.compute_capability, "10.4.0")),  # TensorRT
    }
    assert base not in others and len(others) == 5


def test_store_then_lookup(cache):
    assert cache.lookup("vision", "fp16", ORIN) is None
    engine = cache.store("vision", "fp16", ORIN, b"plan bytes")
    assert cache.lookup("vision", "fp16", ORIN) == engine
    meta = json.loads((engine.parent / "meta.json").read_text())
    assert meta["gpu"] == ORIN.gpu and meta["tensorrt"] == "10.3.0" and meta["engine_bytes"] == 10


def test_engine_for_another_gpu_or_tensorrt_is_never_loaded(cache):
    cache.store("vision", "fp16", ORIN, b"orin plan")
    assert cache.lookup("vision", "fp16", H100) is None
    assert [r.gpu for r in cache.foreign(H100)] == [ORIN.gpu]
    assert cache.lookup("vision", "fp16", Target(ORIN.gpu, ORIN.compute_capability, "10.7.0")) is None


def test_damaged_or_half_written_engines_are_missing(cache):
    engine = cache.store("fusion", "fp16", ORIN, b"x" * 100)
    engine.write_bytes(b"y" * 100)  # same size, other bytes
    assert cache.lookup("fusion", "fp16", ORIN) is None
    engine = cache.store("fusion", "fp16", ORIN, b"x" * 100)
    (engine.parent / "meta.json").unlink()  # killed before the metadata was written
    assert cache.lookup("fusion", "fp16", ORIN) is None


def test_metadata_that_lies_about_its_key_is_refused(cache):
    engine = cache.store("scoring", "fp16", ORIN, b"plan")
    meta_path = engine.parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["graph"] = "vision"
    meta_path.write_text(json.dumps(meta))
    assert cache.lookup("scoring", "fp16", ORIN) is None


def _store_many(bundle_root, plan, rounds):
    from dfrt.runtime.bundle import Bundle

    cache = EngineCache(Bundle.open(bundle_root, verify=False))
    for _ in range(rounds):
        cache.store("vision", "fp16", ORIN, plan)


def test_two_processes_building_the_same_engine_leave_a_valid_one(cache):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_store_many, args=(cache.bundle.root, bytes([i]) * 200_000, 15))
        for i in (1, 2)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    engine = cache.lookup("vision", "fp16", ORIN)
    assert engine is not None and engine.read_bytes() in (b"\x01" * 200_000, b"\x02" * 200_000)
    assert not [p for p in engine.parent.iterdir() if ".tmp" in p.name]
