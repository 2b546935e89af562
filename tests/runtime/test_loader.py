"""Where the loader puts a bundle's graphs: backend, precision and onnxruntime providers, with the installed
providers faked (no GPU here): CUDA before the CPU, TensorRT's provider only on request."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from dfrt.errors import ConfigError
from dfrt.runtime import loader
from dfrt.runtime.bundle import Bundle

pytestmark = pytest.mark.runtime  # torch-free: the demo bundle shipped in the package

DEMO = Path(loader.__file__).parents[1] / "data" / "demo"
CPU, CUDA, TRT = loader.CPU, loader.CUDA, loader.TENSORRT_EP


def add_variant(root: Path, graph: str, precision: str) -> None:
    """Give ``graph`` a ``precision`` variant (a copy of its FP32 file) listed in the manifest."""
    manifest = json.loads((root / "dfrt.json").read_text())
    name = f"{graph}.{precision}.onnx"
    data = (root / manifest["graphs"][graph]["file"]).read_bytes()
    (root / name).write_bytes(data)
    manifest["graphs"][graph]["variants"][precision] = name
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (root / "dfrt.json").write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEMO, tmp_path / "demo"))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records what each OnnxRuntimeGraph is asked for; the graph 'lands' on the first provider asked."""
    calls: list[dict[str, Any]] = []

    class FakeGraph:
        def __init__(
            self, path: Path, spec: Any, providers: list[str] | None = None, threads: int = 0
        ) -> None:
            calls.append({"path": path, "graph": spec.name, "providers": list(providers or [])})
            self.provider = (providers or [CPU])[0]

        def close(self) -> None:
            pass

    monkeypatch.setattr("dfrt.runtime.backends.onnxruntime.OnnxRuntimeGraph", FakeGraph)
    monkeypatch.delenv(loader.ORT_TENSORRT_ENV, raising=False)
    return calls


def installed(monkeypatch: pytest.MonkeyPatch, *providers: str) -> None:
    monkeypatch.setattr(loader, "_available_providers", lambda: list(providers))


def test_cuda_first_then_cpu(demo, opened, monkeypatch) -> None:
    installed(monkeypatch, TRT, CUDA, CPU)
    graphs = loader.open_graphs(Bundle.open(demo), "onnxruntime")
    assert {c["graph"] for c in opened} == set(graphs.runners)
    assert all(c["providers"] == [CUDA, CPU] for c in opened)  # the TensorRT provider is not asked for
    assert set(graphs.providers.values()) == {CUDA}
    assert graphs.backend == "onnxruntime" and graphs.precision == "fp32"


@pytest.mark.parametrize("how", ["env", "argument"])
def test_tensorrt_provider_only_on_request(demo, opened, monkeypatch, how) -> None:
    installed(monkeypatch, TRT, CUDA, CPU)
    if how == "env":
        monkeypatch.setenv(loader.ORT_TENSORRT_ENV, "1")
        loader.open_graphs(Bundle.open(demo), "onnxruntime")
    else:
        wanted = loader.onnxruntime_providers(loader._available_providers(), use_tensorrt_provider=True)
        loader.open_graphs(Bundle.open(demo), "onnxruntime", providers=wanted)
    assert all(c["providers"] == [TRT, CUDA, CPU] for c in opened)


def test_tensorrt_provider_requested_but_not_installed(monkeypatch) -> None:
    monkeypatch.setenv(loader.ORT_TENSORRT_ENV, "1")
    assert loader.onnxruntime_providers([CUDA, CPU]) == [CUDA, CPU]
    monkeypatch.setenv(loader.ORT_TENSORRT_ENV, "0")
    assert loader.onnxruntime_providers([TRT, CUDA, CPU]) == [CUDA, CPU]


def test_cpu_only(demo, opened, monkeypatch) -> None:
    installed(monkeypatch, "AzureExecutionProvider", CPU)
    graphs = loader.open_graphs(Bundle.open(demo), "onnxruntime")
    assert all(c["providers"] == [CPU] for c in opened)
    assert set(graphs.providers.values()) == {CPU}


def test_auto_is_onnxruntime_without_tensorrt(demo, opened, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    installed(monkeypatch, CPU)
    assert not loader.tensorrt_available()
    assert loader.resolve_backend("auto") == "onnxruntime"
    graphs = loader.open_graphs(Bundle.open(demo))
    assert graphs.backend == "onnxruntime" and graphs.precision == "fp32" and opened
    with pytest.raises(ConfigError, match="--backend onnxruntime"):
        loader.resolve_backend("tensorrt")


def test_fp16_needs_fp16_graphs(demo, opened, monkeypatch) -> None:
    installed(monkeypatch, CUDA, CPU)
    with pytest.raises(ConfigError) as error:
        loader.open_graphs(Bundle.open(demo), "onnxruntime", "fp16")
    message = str(error.value)
    assert "\n" not in message and "no fp16 graphs" in message and "--precision fp16" in message
    assert not opened


def test_fp16_runs_the_gated_variants_and_fp32_elsewhere(demo, opened, monkeypatch) -> None:
    installed(monkeypatch, CUDA, CPU)
    add_variant(demo, "question", "fp16")
    graphs = loader.open_graphs(Bundle.open(demo), "onnxruntime", "fp16")
    files = {c["graph"]: c["path"].name for c in opened}
    assert files["question"] == "question.fp16.onnx" and files["vision"] == "vision.onnx"
    assert graphs.graph_precisions["question"] == "fp16" and graphs.graph_precisions["vision"] == "fp32"


def test_unknown_backend_or_precision(demo) -> None:
    with pytest.raises(ConfigError, match="unknown backend"):
        loader.open_graphs(Bundle.open(demo), "cuda")
    with pytest.raises(ConfigError, match="unknown precision"):
        loader.open_graphs(Bundle.open(demo), "onnxruntime", "bf16")
