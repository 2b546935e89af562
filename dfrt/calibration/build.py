"""Add INT8 Q/DQ graphs to a bundle: calibrate on real videos, quantize, pass the gate, then commit."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dfrt.calibration.dataset import calibration_questions, collect, find_videos
from dfrt.calibration.gate import MIN_COSINE, MIN_KEY_AGREEMENT, GateReport, compare
from dfrt.calibration.int8 import QUANTIZED_GRAPHS, quantize_graph
from dfrt.errors import BuildError, InputError
from dfrt.fileio import atomic_write_text, sha256_file
from dfrt.manifest import MANIFEST_NAME, FileEntry
from dfrt.runtime.backends import GraphRunner
from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.visual import VisualPipeline

log = logging.getLogger(__name__)

PRECISION = "int8"
MANY_PAIRS = 1000  # video/question pairs beyond which calibration warns of its cost


@dataclass
class Int8Result:
    gate: GateReport  # the committed combination
    per_graph: dict[str, GateReport]  # each graph quantized alone
    kept: list[str]  # graphs that run in INT8; the others stay FP32
    calibration_videos: list[Path]
    gate_videos: list[Path]
    calibration_frames: int
    files: dict[str, int]  # new file -> bytes
    questions: tuple[str, ...] = ()  # asked of every calibration and gate video


def build_int8(
    bundle_path: Path,
    videos: Sequence[Path] | Path,
    questions: Sequence[str] | None = None,
    fps: float = 1.0,
    max_frames: int = 32,
    min_cosine: float = MIN_COSINE,
    min_key_agreement: float = MIN_KEY_AGREEMENT,
) -> Int8Result:
    """Quantize the vision, question and fusion graphs; commit only what passes the accuracy gate.

    Each graph is first gated on its own (the others in FP32): one that fails stays in FP32 (mixed
    precision). The combination of those that pass is gated again and must pass too. With two or more videos,
    the first half calibrates and the second half is held out for the gates. ``questions`` (default: the
    folder's ``questions.txt``, else generic ones) are asked of every video.
    """
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
    reference = VisualPipeline.open(bundle_path)
    bundle = reference.bundle
    calibration = collect(reference, calibration_videos, questions, fps, max_frames)
    staging = bundle.root / f".staging-int8-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        quantized: dict[str, GraphRunner] = {}
        for graph in QUANTIZED_GRAPHS:
            entry = bundle.manifest.graphs[graph]
            target = staging / f"{graph}.{PRECISION}.onnx"
            large = entry.data_file is not None
            quantize_graph(bundle.graph_path(graph), target, calibration.feeds[graph], large=large)
            quantized[graph] = OnnxRuntimeGraph(target, entry.spec)

        def gate(graphs: Sequence[str]) -> GateReport:
            candidate = VisualPipeline(bundle, {**reference.runners, **{g: quantized[g] for g in graphs}})
            return compare(reference, candidate, PRECISION, gate_videos, questions, fps, max_frames)

        per_graph = {graph: gate([graph]) for graph in QUANTIZED_GRAPHS}
        kept = [g for g, report in per_graph.items() if report.passes(min_cosine, min_key_agreement)]
        if not kept:
            failures = "; ".join(f"{g}: {r.line()}" for g, r in per_graph.items())
            raise BuildError(f"accuracy gate failed for every graph, nothing committed ({failures})")
        combined = gate(kept)
        combined.require(min_cosine, min_key_agreement)
        files = _commit(bundle, staging, {g: f"{g}.{PRECISION}.onnx" for g in kept})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Int8Result(
        combined,
        per_graph,
        kept,
        calibration_videos,
        gate_videos,
        calibration.frames,
        files,
        tuple(questions),
    )


def _commit(bundle: Bundle, staging: Path, variants: dict[str, str]) -> dict[str, int]:
    """Move the staged graphs in, then rewrite the manifest (atomically) to list and use them."""
    wanted = set(variants.values())
    staged = {p.name: p for p in staging.iterdir() if p.is_file() and p.name.removesuffix(".data") in wanted}
    entries = {name: FileEntry(sha256_file(p), p.stat().st_size) for name, p in staged.items()}
    manifest = bundle.manifest
    graphs = {
        name: dataclasses.replace(entry, variants={**entry.variants, PRECISION: variants[name]})
        if name in variants
        else entry
        for name, entry in manifest.graphs.items()
    }
    updated = dataclasses.replace(manifest, graphs=graphs, files={**manifest.files, **entries})
    for name, path in staged.items():
        os.replace(path, bundle.root / name)
    atomic_write_text(bundle.root / MANIFEST_NAME, updated.to_json())
    return {name: e.bytes for name, e in entries.items()}
