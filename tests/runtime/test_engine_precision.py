"""Which ONNX file, typing and builder flags each TensorRT engine gets, on a fake ``tensorrt`` module (no GPU
here): strongly typed from the gated FP16/INT8 graphs, the FP16 flag only on weak typing and only for a graph
whose FP16 variant passed the gate, FP32 elsewhere."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dfrt.errors import ConfigError
from dfrt.runtime.backends.tensorrt import engine_builder as builder
from dfrt.runtime.backends.tensorrt import runner as backend
from dfrt.runtime.backends.tensorrt.engine_cache import EngineCache, Target
from dfrt.runtime.bundle import Bundle
from tests.runtime.test_loader import DEMO, add_variant

pytestmark = pytest.mark.runtime


def fake_tensorrt(version: str, strong: bool = True, weak: bool = True) -> Any:
    """Enough of the tensorrt module for build_engine; every call is recorded in ``trt.calls``."""
    calls: list[tuple[Any, ...]] = []
    creation = {"STRONGLY_TYPED": 0} if strong else {}
    flags = {"TF32": 7, **({"FP16": 0, "INT8": 1} if weak else {})}

    class Config:
        def set_memory_pool_limit(self, pool: Any, size: int) -> None: ...
        def set_flag(self, flag: int) -> None:
            calls.append(("set_flag", flag))

        def clear_flag(self, flag: int) -> None:
            calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile: Any) -> None: ...
        def create_timing_cache(self, data: bytes) -> Any:
            return SimpleNamespace(serialize=lambda: b"timing")

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> Any:
            return SimpleNamespace(serialize=lambda: b"timing")

    class Builder:
        def __init__(self, logger: Any) -> None: ...
        def create_network(self, network_flags: int) -> str:
            calls.append(("create_network", network_flags))
            return "network"

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Any:
            return SimpleNamespace(set_shape=lambda name, *shapes: None)

        def build_serialized_network(self, network: Any, config: Any) -> bytes:
            return b"plan"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None: ...

    class OnnxParser:
        def __init__(self, network: Any, logger: Any) -> None:
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse", Path(path).name))
            return True

    return SimpleNamespace(
        __version__=version,
        calls=calls,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        NetworkDefinitionCreationFlag=SimpleNamespace(**creation),
        BuilderFlag=SimpleNamespace(**flags),
        MemoryPoolType=SimpleNamespace(WORKSPACE=0),
    )


TRT_10_3 = ("10.3.0", True, True)  # JetPack 6: both typings
TRT_11 = ("11.4.0", True, False)  # STRONGLY_TYPED kept (ignored), FP16/INT8 flags gone
TRT_8_6 = ("8.6.1", False, True)  # before strong typing


@pytest.fixture(autouse=True)
def no_typing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(builder.TYPING_ENV, raising=False)


def test_precision_follows_the_bundles_variants() -> None:
    both = {"fp16", "int8"}
    assert builder.graph_precision("vision", "fp16", both) == "fp16"
    assert builder.graph_precision("vision", "fp16", set()) == "fp32"  # the FP16 gate kept it FP32
    assert builder.graph_precision("vision", "int8", {"fp16"}) == "fp32"  # no INT8 graph: FP32, not FP16
    assert builder.graph_precision("question", "int8", both) == "int8"
    assert builder.graph_precision("scoring", "fp16", both) == "fp32"
    assert builder.graph_precision("encoding", "int8", both) == "fp32"
    assert builder.graph_precision("fusion", "fp32", both) == "fp32"


@pytest.mark.parametrize(
    ("precision", "variants", "typing", "onnx", "flags"),
    [
        ("fp16", {"fp16"}, "strong", "fp16", ()),
        ("int8", {"int8"}, "strong", "int8", ()),
        ("fp32", set(), "strong", "fp32", ()),
        ("fp16", {"fp16"}, "weak", "fp32", ("FP16",)),
        ("int8", {"int8"}, "weak", "int8", ("INT8",)),
        ("int8", {"int8", "fp16"}, "weak", "int8", ("INT8", "FP16")),
        ("fp32", set(), "weak", "fp32", ()),
    ],
)
def test_build_recipe(precision, variants, typing, onnx, flags) -> None:
    recipe = builder.build_recipe(precision, variants, typing)
    assert (recipe.onnx_precision, recipe.flags, recipe.strongly_typed) == (onnx, flags, typing == "strong")
    assert recipe.precision == precision and precision in recipe.line()


def test_typing_per_tensorrt_version(monkeypatch) -> None:
    assert builder.network_typing(fake_tensorrt(*TRT_10_3)) == "strong"
    assert builder.network_typing(fake_tensorrt(*TRT_11)) == "strong"
    assert builder.network_typing(fake_tensorrt("11.4.0", False, False)) == "strong"  # flag dropped one day
    assert builder.network_typing(fake_tensorrt(*TRT_8_6)) == "weak"
    monkeypatch.setenv(builder.TYPING_ENV, "weak")
    assert builder.network_typing(fake_tensorrt(*TRT_10_3)) == "weak"
    with pytest.raises(ConfigError, match="no weak typing"):
        builder.network_typing(fake_tensorrt(*TRT_11))
    monkeypatch.setenv(builder.TYPING_ENV, "loose")
    with pytest.raises(ConfigError, match="strong or weak"):
        builder.network_typing(fake_tensorrt(*TRT_10_3))


def build(monkeypatch, tmp_path, version, precision, variants, onnx_name="vision.onnx") -> list[tuple]:
    trt = fake_tensorrt(*version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    recipe = builder.build_recipe(precision, variants, builder.network_typing(trt))
    spec = Bundle.open(DEMO).manifest.graphs["vision"].spec
    assert builder.build_engine(tmp_path / onnx_name, spec, recipe, 64, tmp_path / "timing.cache") == b"plan"
    return trt.calls


def test_strongly_typed_fp16_sets_no_precision_flag(monkeypatch, tmp_path) -> None:
    calls = build(monkeypatch, tmp_path, TRT_11, "fp16", {"fp16"}, "vision.fp16.onnx")
    assert ("create_network", 1) in calls and ("parse", "vision.fp16.onnx") in calls
    assert not [c for c in calls if c[0] == "set_flag"]


def test_fp32_clears_tf32(monkeypatch, tmp_path) -> None:
    calls = build(monkeypatch, tmp_path, TRT_11, "fp32", set())
    assert ("clear_flag", 7) in calls and ("create_network", 1) in calls


def test_weak_fp16_flag_on_the_fp32_graph(monkeypatch, tmp_path) -> None:
    calls = build(monkeypatch, tmp_path, TRT_8_6, "fp16", {"fp16"})
    assert ("create_network", 0) in calls and ("parse", "vision.onnx") in calls
    assert [c for c in calls if c[0] == "set_flag"] == [("set_flag", 0)]


@pytest.fixture
def engines(tmp_path, monkeypatch):
    """open_tensorrt_runners on the demo (question has an FP16 variant, fusion an INT8 one) with a fake
    tensorrt, target, device memory and engine runner; returns (bundle, open, set_target)."""
    root = Path(shutil.copytree(DEMO, tmp_path / "demo"))
    add_variant(root, "question", "fp16")
    add_variant(root, "fusion", "int8")
    bundle = Bundle.open(root)
    trt = fake_tensorrt(*TRT_11)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    state = {"target": Target("NVIDIA H200", "9.0", "11.4.0")}
    monkeypatch.setattr(backend, "current_target", lambda: state["target"])
    monkeypatch.setattr(backend, "device_memory", lambda: None)
    monkeypatch.setattr(
        backend,
        "TensorRTGraph",
        lambda engine, spec, memory: SimpleNamespace(engine=engine, close=lambda: None),
    )
    progress: list[str] = []

    def open_engines(precision: str) -> dict[str, Any]:
        trt.calls.clear()
        progress.clear()
        return backend.open_tensorrt_runners(bundle, precision, progress=progress.append)

    return SimpleNamespace(bundle=bundle, open=open_engines, state=state, trt=trt, progress=progress)


def test_engines_follow_the_variants_and_are_cached(engines) -> None:
    runners = engines.open("fp16")
    parsed = [c[1] for c in engines.trt.calls if c[0] == "parse"]
    assert parsed == ["vision.onnx", "scoring.onnx", "encoding.onnx", "question.fp16.onnx", "fusion.onnx"]
    assert backend.engine_precisions(engines.bundle, "fp16") == {
        "vision": "fp32",
        "scoring": "fp32",
        "encoding": "fp32",
        "question": "fp16",
        "fusion": "fp32",
    }
    assert runners["question"].engine.name == "question.fp16.engine"
    assert any("question" in line and "strongly typed" in line for line in engines.progress)
    engines.open("fp16")
    assert not [c for c in engines.trt.calls if c[0] == "parse"]  # all five from the cache
    engines.open("int8")
    parsed = [c[1] for c in engines.trt.calls if c[0] == "parse"]
    assert parsed == ["question.onnx", "fusion.int8.onnx"]  # question has no INT8 graph: FP32, built once


def test_engine_for_another_tensorrt_or_gpu_is_rebuilt(engines) -> None:
    engines.open("fp16")
    for target in (Target("NVIDIA H200", "9.0", "10.16.1"), Target("NVIDIA H100 80GB HBM3", "9.0", "11.4.0")):
        engines.state["target"] = target
        engines.open("fp16")
        assert len([c for c in engines.trt.calls if c[0] == "parse"]) == 5
    assert {r.target.tensorrt for r in EngineCache(engines.bundle).records()} == {"11.4.0", "10.16.1"}


def test_weakly_typed_engines_have_their_own_cache_label(monkeypatch) -> None:
    trt = fake_tensorrt(*TRT_10_3)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(
        "dfrt.runtime.backends.tensorrt.cuda_memory.device_memory",
        lambda: SimpleNamespace(device=lambda: ("Orin (nvgpu)", "8.7"), close=lambda: None),
    )
    assert builder.current_target() == Target("Orin (nvgpu)", "8.7", "10.3.0")
    monkeypatch.setenv(builder.TYPING_ENV, "weak")
    assert builder.current_target().tensorrt == "10.3.0" + builder.WEAK_SUFFIX
