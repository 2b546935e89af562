"""Add FP16 or INT8 graphs to a bundle: calibrate on real videos, convert, pass the gate, then commit.

:func:`build_precision` is what ``dfrt build`` calls: the ONNX graphs (any machine), then TensorRT engines
where TensorRT is usable.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dfrt import registry
from dfrt.calibration import modelopt_int8
from dfrt.calibration.dataset import calibration_questions, collect, find_videos
from dfrt.calibration.fp16 import Fp16Graph, convert_graph
from dfrt.calibration.gate import THRESHOLDS, GateReport, compare
from dfrt.calibration.int8 import quantize_graph
from dfrt.errors import BuildError, ConfigError, InputError
from dfrt.fileio import Claims, claimed_files, commit_bundle, sha256_file, staging_dir
from dfrt.manifest import FileEntry
from dfrt.runtime.backends import GraphRunner
from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.loader import open_graphs

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16")
MANY_PAIRS = 1000  # video/question pairs beyond which calibration warns of its cost


@dataclass
class VariantResult:
    """The FP16 or INT8 graphs a build committed, and the evidence."""

    precision: str
    gate: GateReport  # the committed combination
    per_graph: dict[str, GateReport]  # each graph converted alone
    kept: list[str]  # graphs that run at ``precision``; the others stay FP32
    calibration_videos: list[Path]
    gate_videos: list[Path]
    calibration_frames: int
    files: dict[str, int]  # new file -> bytes
    questions: tuple[str, ...] = ()  # asked of every calibration and gate video
    conversions: dict[str, Fp16Graph] = field(default_factory=dict)  # fp16: what each graph keeps in FP32
    quantizer: str = ""  # int8: what wrote the Q/DQ graphs ("nvidia-modelopt 0.47.0", "onnxruntime 1.32.0")


Int8Result = VariantResult  # the name before FP16 graphs


@dataclass
class BuildReport:
    """What ``dfrt build`` did: ONNX graphs written (if videos were given), TensorRT engines (if usable)."""

    bundle: Path
    precision: str
    graphs: VariantResult | None  # None: no calibration videos, engines only
    engines: list[str]  # graphs with a TensorRT engine ready; empty without TensorRT


def build_precision(
    bundle_path: Path,
    precision: str,
    videos: Path | None = None,
    questions_file: Path | None = None,
    min_cosine: float | None = None,
    min_key_agreement: float | None = None,
    progress: Callable[[str], None] = lambda message: None,
    quantizer: str = "auto",
) -> BuildReport:
    """FP16 or INT8 ONNX graphs calibrated on ``videos`` (a folder) and gated against FP32, then TensorRT
    engines where TensorRT is usable (from those graphs; without videos from the FP32 graphs, weakly typed).

    INT8 always needs videos; FP16 needs them where TensorRT is not usable (the FP16 ONNX graphs are then
    the whole point, and their FP32 nodes come from activation ranges measured on real frames).
    ``quantizer`` (INT8): ``modelopt``, ``onnxruntime`` or ``auto`` (Model Optimizer when it imports).
    """
    from dfrt.runtime.loader import tensorrt_available

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if quantizer != "auto" and precision != "int8":
        raise ConfigError("--quantizer chooses how INT8 graphs are quantized: use it with --precision int8")
    if questions_file is not None and videos is None:
        raise ConfigError("--questions calibrates INT8 and FP16 graphs: use it with --calib VIDEOS_DIR")
    trt = tensorrt_available()
    if videos is None and precision == "int8":
        raise ConfigError("INT8 needs calibration videos: --calib VIDEOS_DIR")
    if videos is None and not trt:
        raise ConfigError(
            "TensorRT is not usable here, so dfrt build writes FP16 ONNX graphs, which keep in FP32 what "
            "overflows FP16 on real frames: give the videos to measure on with --calib VIDEOS_DIR"
        )
    graphs = None
    if videos is not None:
        questions = calibration_questions(videos, questions_file)
        chosen = modelopt_int8.resolve_quantizer(quantizer) if precision == "int8" else ""
        how = f", quantized by {modelopt_int8.describe(chosen)}" if chosen else ""
        progress(f"calibrating {precision} on the videos in {videos} with {len(questions)} question(s){how}")
        graphs = build_variants(
            bundle_path,
            precision,
            videos,
            questions,
            min_cosine=min_cosine,
            min_key_agreement=min_key_agreement,
            quantizer=chosen or "auto",
        )
    engines: list[str] = []
    if trt:
        graph_set = open_graphs(Bundle.open(bundle_path), "tensorrt", precision, progress=progress)
        engines = sorted(graph_set.runners)
        graph_set.close()
    return BuildReport(bundle_path, precision, graphs, engines)


def build_variants(
    bundle_path: Path,
    precision: str,
    videos: Sequence[Path] | Path,
    questions: Sequence[str] | None = None,
    fps: float = 1.0,
    max_frames: int = 32,
    min_cosine: float | None = None,
    min_key_agreement: float | None = None,
    quantizer: str = "auto",
) -> VariantResult:
    """Convert the family's graphs (DynFocus: vision, question, fusion; SmolVLM: vision) to ``precision``
    (:data:`PRECISION_GRAPHS` of the family's spec); commit only what passes the gate.

    Each graph is first gated on its own (the others in FP32): one that fails stays in FP32 (mixed
    precision). The combination of those that pass is gated again and must pass too. With two or more videos,
    the first half calibrates (INT8 scales, FP16 ranges) and the second half is held out for the gates.
    ``questions`` (default: the folder's ``questions.txt``, else generic ones) are asked of every video.
    Thresholds default to the precision's (:data:`dfrt.calibration.gate.THRESHOLDS`). INT8 graphs are
    quantized by ``quantizer`` (:func:`dfrt.calibration.modelopt_int8.resolve_quantizer`); the gate is the
    same whichever quantizer wrote them.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    default_cosine, default_agreement = THRESHOLDS[precision]
    min_cosine = default_cosine if min_cosine is None else min_cosine
    min_key_agreement = default_agreement if min_key_agreement is None else min_key_agreement
    chosen = modelopt_int8.resolve_quantizer(quantizer) if precision == "int8" else ""
    quantize = modelopt_int8.quantize_graph if chosen == "modelopt" else quantize_graph
    if questions is None:  # a folder's questions.txt; for a list of videos, the generic questions
        questions = calibration_questions(videos if isinstance(videos, Path) else None)
    if not questions:
        raise InputError("calibration questions: none given")
    videos = find_videos(videos) if isinstance(videos, Path) else list(videos)
    if len(videos) * len(questions) > MANY_PAIRS:
        log.warning(
            "%d videos x %d questions: every question is asked of every video, so calibration time and "
            "memory grow with both (a few dozen questions are plenty)",
            len(videos),
            len(questions),
        )
    half = max(1, len(videos) // 2)
    calibration_videos, gate_videos = videos[:half], (videos[half:] or videos)
    bundle = Bundle.open(bundle_path)
    reference = registry.open_visual(bundle, open_graphs(bundle, "onnxruntime", "fp32"))
    converted_graphs = registry.spec(bundle.manifest.family).PRECISION_GRAPHS[precision]
    calibration = collect(reference, calibration_videos, questions, fps, max_frames)
    claims = claimed_files(bundle.root, what="bundle")  # and removes what killed builds left there
    staging = staging_dir(bundle.root, precision)
    try:
        converted: dict[str, GraphRunner] = {}
        conversions: dict[str, Fp16Graph] = {}
        for graph in converted_graphs:
            entry = bundle.manifest.graphs[graph]
            target = staging / f"{graph}.{precision}.onnx"
            large = entry.data_file is not None
            feeds = calibration.feeds[graph]
            if precision == "int8":
                quantize(bundle.graph_path(graph), target, feeds, large=large)
            else:
                conversions[graph] = convert_graph(
                    graph, bundle.graph_path(graph), target, feeds, large=large
                )
                log.info("%s fp16: %s", graph, conversions[graph].line())
            converted[graph] = OnnxRuntimeGraph(target, entry.spec)

        def gate(graphs: Sequence[str]) -> GateReport:
            runners = {**reference.runners, **{g: converted[g] for g in graphs}}
            candidate = registry.open_visual(bundle, runners)
            return compare(reference, candidate, precision, gate_videos, questions, fps, max_frames)

        per_graph = {graph: gate([graph]) for graph in converted_graphs}
        kept = [g for g, report in per_graph.items() if report.passes(min_cosine, min_key_agreement)]
        if not kept:
            failures = "; ".join(f"{g}: {r.line()}" for g, r in per_graph.items())
            raise BuildError(f"accuracy gate failed for every graph, nothing committed ({failures})")
        combined = gate(kept)
        combined.require(min_cosine, min_key_agreement)
        files = _commit(bundle, staging, precision, {g: f"{g}.{precision}.onnx" for g in kept}, claims)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        reference.close()
    return VariantResult(
        precision,
        combined,
        per_graph,
        kept,
        calibration_videos,
        gate_videos,
        calibration.frames,
        files,
        tuple(questions),
        conversions,
        modelopt_int8.describe(chosen) if chosen else "",
    )


def _commit(
    bundle: Bundle, staging: Path, precision: str, variants: dict[str, str], claims: Claims
) -> dict[str, int]:
    """Move the staged graphs in, then rewrite the manifest (atomically) to list and use them; a file in
    the way that the bundle's manifest does not list with its sha256 is never replaced."""
    wanted = set(variants.values())
    staged = {p.name: p for p in staging.iterdir() if p.is_file() and p.name.removesuffix(".data") in wanted}
    entries = {name: FileEntry(sha256_file(p), p.stat().st_size) for name, p in staged.items()}
    manifest = bundle.manifest
    graphs = {
        name: dataclasses.replace(entry, variants={**entry.variants, precision: variants[name]})
        if name in variants
        else entry
        for name, entry in manifest.graphs.items()
    }
    updated = dataclasses.replace(manifest, graphs=graphs, files={**manifest.files, **entries})
    listed = {name: (e.sha256, e.bytes) for name, e in updated.files.items()}
    root = bundle.root
    commit_bundle(root, staging, updated.to_json(), listed, claims, retire_manifest=False, moved=staged)
    return {name: e.bytes for name, e in entries.items()}
