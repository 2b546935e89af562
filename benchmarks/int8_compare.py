"""INT8 through NVIDIA Model Optimizer against onnxruntime's quantizer, on the demo bundle (CPU).

    python benchmarks/int8_compare.py [--bundle DIR] [--calib CLIPS] [--count 140] [--json out.json]

For each quantizer (``dfrt build --quantizer onnxruntime|modelopt``): the build itself (a fresh copy of the
bundle, ``dfrt build --precision int8 --calib CLIPS``, timed, in its own process: Model Optimizer patches
onnxruntime's quantizer process-wide), the gate's figures per graph (each graph INT8 alone, on the held-out
half of CLIPS), where the Q/DQ pairs are (all three graphs quantized once more outside the gate, counted by
the op type each DequantizeLinear feeds), then the answers of the committed INT8 graphs on the demo's
held-out test clips against the FP32 graphs' (accuracy, answers changed, embedding cosine, key frames).

CLIPS defaults to 24 training-distribution clips with the demo's questions (``python -m dfrt.demo.samples
CLIPS --calibration 24``), the procedure of ``benchmarks/RESULTS.md``; the bundle defaults to the shipped
demo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

QUANTIZERS = ("onnxruntime", "modelopt")
GRAPHS = ("vision", "question", "fusion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="FP32 bundle (default: the shipped demo)")
    parser.add_argument("--calib", type=Path, help="calibration clips (default: 24 written to a temp dir)")
    parser.add_argument("--count", type=int, default=140, help="held-out test clips to answer")
    parser.add_argument("--quantizers", default=",".join(QUANTIZERS))
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--work", type=Path, help="keep the built bundles here (default: a temp dir)")
    parser.add_argument(
        "--quantize-only", nargs=4, metavar=("QUANTIZER", "BUNDLE", "CLIPS", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.quantize_only:
        _quantize_all(*args.quantize_only)
        return
    from dfrt.runtime.default_bundle import resolve_bundle

    source = resolve_bundle(args.bundle, print)
    work = args.work or Path(tempfile.mkdtemp(prefix="int8-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    clips = args.calib or _calibration_clips(work / "clips")
    quantizers = args.quantizers.split(",")
    record: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} ({os.cpu_count()} cores), {platform.python_version()}",
        "versions": {p: _version(p) for p in ("onnxruntime", "onnx", "nvidia-modelopt", "torch", "numpy")},
        "bundle": str(source),
        "calibration_clips": len([p for p in clips.iterdir() if p.suffix == ".mp4"]),
        "quantizers": {},
    }
    bundles: dict[str, Path] = {}
    for quantizer in quantizers:
        bundle = work / f"bundle-{quantizer}"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(source, bundle)
        entry = {"build": _build(bundle, clips, quantizer)}
        entry["placement"] = _placement(quantizer, source, clips, work / f"graphs-{quantizer}")
        record["quantizers"][quantizer] = entry  # type: ignore[index]
        bundles[quantizer] = bundle
        print(f"== {quantizer}: {json.dumps(entry['build'], indent=1)[:2000]}", flush=True)
    record["answers"] = _answers(source, bundles, args.count)
    print(_table(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _calibration_clips(folder: Path) -> Path:
    if not folder.is_dir():
        subprocess.run(
            [sys.executable, "-m", "dfrt.demo.samples", str(folder), "--calibration", "24"], check=True
        )
    return folder


def _build(bundle: Path, clips: Path, quantizer: str) -> dict[str, object]:
    """``dfrt build`` in a process of its own, timed; its JSON report."""
    command = [sys.executable, "-m", "dfrt.cli", "build", str(bundle), "--precision", "int8"]
    command += ["--calib", str(clips), "--quantizer", quantizer, "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:], "seconds": round(seconds, 1)}
    report = json.loads(done.stdout)["int8"]
    return {
        "quantizer": report.get("quantizer"),
        "seconds": round(seconds, 1),
        "kept": report["graphs"],
        "gate": _gate(report["gate"]),
        "per_graph": {g: _gate(r) for g, r in report["per_graph"].items()},
        "calibration_frames": report["calibration_frames"],
        "gate_pairs": report["gate"]["samples"],
    }


def _gate(report: dict[str, object]) -> dict[str, object]:
    return {k: report[k] for k in ("cosine_min", "cosine_mean", "key_agreement")}


def _placement(quantizer: str, bundle: Path, clips: Path, out: Path) -> dict[str, object]:
    """All three graphs quantized (also those the gate keeps in FP32), in a process of its own: where the
    Q/DQ pairs are, and how long each graph took."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = Path(__file__).resolve()
    command = [sys.executable, str(script), "--quantize-only", quantizer, str(bundle), str(clips), str(out)]
    subprocess.run(command, check=True)
    seconds = json.loads((out / "seconds.json").read_text())
    return {graph: {**_qdq(out / f"{graph}.int8.onnx"), "seconds": seconds[graph]} for graph in GRAPHS}


def _quantize_all(quantizer: str, bundle: str, clips: str, out: str) -> None:
    """Child process: calibrate as ``dfrt build`` does (the first half of the clips), quantize each graph."""
    from dfrt.calibration import modelopt_int8
    from dfrt.calibration.dataset import calibration_questions, collect, find_videos
    from dfrt.calibration.int8 import quantize_graph
    from dfrt.runtime.visual import VisualPipeline

    videos = find_videos(Path(clips))
    reference = VisualPipeline.open(Path(bundle))
    calibration = collect(reference, videos[: max(1, len(videos) // 2)], calibration_questions(Path(clips)))
    quantize = modelopt_int8.quantize_graph if quantizer == "modelopt" else quantize_graph
    seconds = {}
    for graph in GRAPHS:
        start = time.perf_counter()
        quantize(
            reference.bundle.graph_path(graph), Path(out) / f"{graph}.int8.onnx", calibration.feeds[graph]
        )
        seconds[graph] = round(time.perf_counter() - start, 2)
    (Path(out) / "seconds.json").write_text(json.dumps(seconds))


def _qdq(path: Path) -> dict[str, object]:
    """Q/DQ counts; the nodes whose weight is quantized (a DequantizeLinear of a constant, directly or through
    a QuantizeLinear) and the nodes that read a quantized activation, by op type."""
    import onnx

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    constant = {t.name for t in model.graph.initializer}
    constant |= {o for n in nodes if n.op_type == "Constant" for o in n.output}
    constant |= {n.output[0] for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] in constant}
    dq_weight = {n.output[0]: n.input[0] in constant for n in nodes if n.op_type == "DequantizeLinear"}
    ops = Counter(n.op_type for n in nodes)
    weights: Counter[str] = Counter()
    activations: Counter[str] = Counter()
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fed = [dq_weight[i] for i in n.input if i in dq_weight]
        if any(fed):
            weights[n.op_type] += 1
        if fed and not all(fed):
            activations[n.op_type] += 1
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "QuantizeLinear": ops["QuantizeLinear"],
        "DequantizeLinear": ops["DequantizeLinear"],
        "weight_quantized": dict(sorted(weights.items())),  # nodes with an INT8 weight
        "reads_quantized_activation": dict(sorted(activations.items())),  # nodes fed by an activation Q/DQ
        "nodes_of_type": {op: ops[op] for op in sorted(set(weights) | set(activations))},
        "bytes": path.stat().st_size,
    }


def _answers(fp32_bundle: Path, bundles: dict[str, Path], count: int) -> dict[str, object]:
    """Greedy answers (DynFocus selection) on ``count`` held-out clips: FP32 graphs against each INT8 bundle,
    the same LLM answering; plus the visual embeddings' cosine and key-frame agreement per clip."""
    from dfrt.demo.evaluate import GREEDY, held_out_set, normalise
    from dfrt.metrics import cosine
    from dfrt.paths import cache_dir
    from dfrt.runtime.pipeline import Pipeline
    from dfrt.runtime.video import read_video
    from dfrt.runtime.visual import VisualPipeline

    items = held_out_set(count, cache_dir() / "demo-test")
    out: dict[str, object] = {"clips": len(items)}
    with Pipeline(fp32_bundle, backend="onnxruntime", precision="fp32") as pipe:
        visuals = {"fp32": pipe.visual}
        for name, bundle in bundles.items():
            visuals[name] = VisualPipeline.open(bundle, backend="onnxruntime", precision="int8")
        answers: dict[str, list[str]] = {v: [] for v in visuals}
        cosines: dict[str, list[float]] = {v: [] for v in bundles}
        agreements: dict[str, list[float]] = {v: [] for v in bundles}
        seconds = dict.fromkeys(visuals, 0.0)
        for item in items:
            frames = read_video(
                item.video, fps=1.0, max_frames=128, shortest_edge=pipe.config.vision.image_size
            )
            results = {}
            for name, visual in visuals.items():
                start = time.perf_counter()
                results[name] = visual.embed(visual.encode_frames(frames.frames), item.clip.question)
                seconds[name] += time.perf_counter() - start
                text = pipe.answer(item.clip.question, results[name].embeds, GREEDY).text
                answers[name].append(normalise(text))
            ref = results["fp32"]
            for name in bundles:
                cand = results[name]
                keys = np.intersect1d(ref.selection.key_frames, cand.selection.key_frames).size
                agreements[name].append(keys / ref.selection.key_frames.size)
                if np.array_equal(ref.selection.key_frames, cand.selection.key_frames):
                    cosines[name].append(cosine(ref.embeds, cand.embeds))
                else:
                    cosines[name].append(float("nan"))
        expected = [item.clip.answer for item in items]
        for name, given in answers.items():
            row: dict[str, object] = {
                "accuracy": sum(a == e for a, e in zip(given, expected, strict=True)) / len(items),
                "visual_seconds": round(seconds[name], 1),
            }
            if name != "fp32":
                changed = [i for i, (a, b) in enumerate(zip(given, answers["fp32"], strict=True)) if a != b]
                same_keys = [c for c in cosines[name] if c == c]
                row |= {
                    "answers_changed": len(changed),
                    "changed": [
                        {
                            "clip": items[i].video.name,
                            "fp32": answers["fp32"][i],
                            "int8": given[i],
                            "expected": expected[i],
                        }
                        for i in changed
                    ],
                    "cosine_min": min(same_keys) if same_keys else None,
                    "cosine_mean": float(np.mean(same_keys)) if same_keys else None,
                    "key_frames_identical": sum(a == 1.0 for a in agreements[name]),
                    "key_agreement": float(np.mean(agreements[name])),
                }
            out[name] = row
    return out


def _table(record: dict[str, object]) -> str:
    quantizers: dict[str, dict] = record["quantizers"]  # type: ignore[assignment]
    answers: dict[str, dict] = record["answers"]  # type: ignore[assignment]
    lines = ["| | " + " | ".join(quantizers) + " |", "|---|" + "---|" * len(quantizers)]

    def row(label: str, cell) -> None:  # type: ignore[no-untyped-def]
        lines.append(f"| {label} | " + " | ".join(cell(q, e) for q, e in quantizers.items()) + " |")

    row("build (s)", lambda q, e: f"{e['build'].get('seconds')}")
    row("graphs kept INT8", lambda q, e: ", ".join(e["build"].get("kept", [])) or "-")
    for graph in GRAPHS:
        row(
            f"{graph} alone: cosine min / keys",
            lambda q, e, g=graph: (
                "{cosine_min:.5f} / {key_agreement:.1%}".format(**e["build"]["per_graph"][g])
                if "per_graph" in e["build"]
                else "-"
            ),
        )
        row(
            f"{graph}: Q / DQ; where",
            lambda q, e, g=graph: _placement_cell(e["placement"][g]),
        )
    row(
        "accuracy (FP32 {:.3f})".format(answers["fp32"]["accuracy"]),
        lambda q, e: f"{answers[q]['accuracy']:.3f}",
    )
    row("answers changed vs FP32", lambda q, e: f"{answers[q]['answers_changed']} of {answers['clips']}")
    return "\n".join(lines)


def _placement_cell(p: dict) -> str:  # type: ignore[type-arg]
    def counts(d: dict) -> str:  # type: ignore[type-arg]
        return ", ".join(f"{op} {n}" for op, n in d.items()) or "-"

    return (
        f"{p['QuantizeLinear']} / {p['DequantizeLinear']}; weights: {counts(p['weight_quantized'])}; "
        f"activations read by: {counts(p['reads_quantized_activation'])}"
    )


if __name__ == "__main__":
    main()
