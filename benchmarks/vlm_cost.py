"""The cost of a frame VLM through dfrt at real size, random weights: dfrt's default budget against uniform
frames. Shared by ``benchmarks/smolvlm_cost.py`` and ``benchmarks/internvl_cost.py``, which give a
:class:`CostFamily` (the model configurations, how to build a random checkpoint of one, the family's export
module) and call :func:`main`.

Per model, once (cached under ``--cache``): a random-weight Hugging Face checkpoint of the real configuration
(the family's builder, with transformers; nothing is downloaded) and a random SigLIP-B/16-224 frame scorer,
exported through the family's ``export_checkpoint(..., scorer=..., quantize=...)`` (the LM quantised as a
user would run it). Then, per model, in one process:

1. per-frame times of the scorer's image tower and of the VLM's visual graph, onnxruntime against PyTorch
   eager of the same modules, a batch of a few frames, the two interleaved;
2. for synthetic videos of 30 s, 2 min and 10 min (OpenCV, 1 fps sampling, dfrt's default cap of 128 frames):
   dfrt's default plan (``dpe`` key frames from the scorer, pooled frames between them) against uniform 8, 16,
   32 and 64 frames at full tokens (``Pipeline.embed(video, q, frames=KeyFrameSelection(...), rods=False)``),
   each through the same llama.cpp context: visual tokens, prompt tokens, prefill seconds, a few generated
   tokens, and the end-to-end seconds (decode + scorer + visual encoder + host steps + prefill + generation).

The visual encoder's seconds of a configuration are (frames it encodes) x (the measured onnxruntime seconds a
frame, at batch ``--batch``): the graph is linear in frames and running it on up to 64 frames per
configuration would take most of an hour on 2 cores. The frames' rows fed to the LLM are real outputs of the
exported graph (a few frames encoded once, reused for the others: values do not change llama.cpp's cost).
One dfrt-default run at 2 min encodes its frames for real, as a check of that product (``--encode-check``).
``--max-prefill-tokens KEY=N`` leaves longer prompts unprefilled (reported as not measured) where a 2-core
machine cannot afford them. Prefill is measured for every distinct prompt length (a prompt of the same token
count, e.g. uniform-32 at 2 min and at 10 min, reuses the measurement: llama.cpp's cost depends on the count,
not the values); see ``prefill_reused``.

Weights are random: accuracy is not measured, cost only.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SCORER = {  # google/siglip-base-patch16-224's shape [U]
    "tower": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "image_size": 224,
    "patch_size": 16,
    "text_length": 64,
    "vocab": 32000,
}
QUESTION = "What does the person in the red coat do after the car stops?"
DURATIONS = (30, 120, 600)
UNIFORM = (8, 16, 32, 64)
FPS, MAX_FRAMES = 1.0, 128  # dfrt's defaults (checked below)
GOAL_SECONDS, GOAL_FRAMES, GOAL_TOKENS, GOAL_COST = 120, 32, 4.0, 1.3
MAX_NEW_TOKENS = 4


@dataclass(frozen=True)
class CostFamily:
    """What the benchmark needs of a family: its model configurations (``name``, ``quantize`` and the
    family's own fields, keyed by the ``--models`` names), a builder of a random checkpoint of one, and the
    family's export module (``export_checkpoint`` and ``VisualGraph``)."""

    title: str  # e.g. "SmolVLM2"
    models: dict[str, dict[str, Any]]
    vocab: int
    unverified: str
    build_version: int  # bump when the checkpoint or bundle recipe changes
    build_checkpoint: Callable[[str, Path], Path]  # (model key, directory) -> the checkpoint directory
    export_module: str  # e.g. "dfrt.families.smolvlm.export"
    drop_text: Callable[[Any], None]  # deletes the language model of a loaded checkpoint (eager timing)
    cache: Path
    json: Path
    plot: Path
    encode_check: str = ""  # models whose default plan at 2 min is also really encoded (by default)
    n_ctx: int = 8192  # llama.cpp context: at least the longest prompt to prefill
    doc: str = __doc__ or ""
    build_scorer: Callable[[Path], Path] | None = None  # None: :func:`build_scorer` (SigLIP-B/16-224)

    def export(self) -> Any:
        return importlib.import_module(self.export_module)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_scorer(directory: Path) -> Path:
    """A random SigLIP of google/siglip-base-patch16-224's shape with a word-level tokenizer (64 tokens)."""
    import torch
    import transformers

    from tests.tiny_scorer import save_tokenizer

    tower = SCORER["tower"]
    text = dict(
        tower,
        vocab_size=SCORER["vocab"],
        max_position_embeddings=SCORER["text_length"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    vision = dict(tower, image_size=SCORER["image_size"], patch_size=SCORER["patch_size"])
    torch.manual_seed(1)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    size = SCORER["image_size"]
    processor = {"size": {"height": size, "width": size}, "resample": 3, "image_mean": [0.5] * 3}
    processor.update(image_std=[0.5] * 3, rescale_factor=1 / 255, do_rescale=True, do_normalize=True)
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    save_tokenizer(directory, clip=False)
    return directory


def recipe_hash(family: CostFamily, key: str) -> str:
    recipe = {
        "model": family.models[key],
        "scorer": SCORER,
        "vocab": family.vocab,
        "version": family.build_version,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def ensure_bundle(family: CostFamily, key: str, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The cached bundle of ``key`` (built, with its checkpoint and scorer, when missing or stale)."""
    spec = family.models[key]
    root = cache / key
    marker = root / "built.json"
    digest = recipe_hash(family, key)
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("recipe") == digest and (root / "bundle" / "dfrt.json").is_file():
            log(f"{key}: cached bundle {root / 'bundle'}")
            return root / "bundle", info
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    log(f"{key}: building a random {spec['name']} checkpoint")
    checkpoint = family.build_checkpoint(key, root / spec["name"])
    timings["checkpoint"] = time.perf_counter() - start
    start = time.perf_counter()
    scorer = (family.build_scorer or build_scorer)(root / "siglip-base-patch16-224")
    timings["scorer_checkpoint"] = time.perf_counter() - start
    start = time.perf_counter()
    result = family.export().export_checkpoint(
        checkpoint,
        root / "bundle",
        scorer=scorer,
        quantize=spec["quantize"],
        progress=lambda message: log(f"{key}: export: {message}"),
    )
    timings["export"] = time.perf_counter() - start
    info = {
        "recipe": digest,
        "build_seconds": {k: round(v, 1) for k, v in timings.items()},
        "parity": [p.line() for p in result.parity],
        "bundle_bytes": {
            p.name: p.stat().st_size for p in sorted((root / "bundle").iterdir()) if p.is_file()
        },
    }
    marker.write_text(json.dumps(info, indent=1))
    log(f"{key}: built in {sum(timings.values()):.0f} s ({info['build_seconds']})")
    return root / "bundle", info


# --- measuring ---------------------------------------------------------------------------------------------
def write_video(path: Path, seconds: int, fps: float = 2.0, size: tuple[int, int] = (192, 128)) -> Path:
    """A synthetic mp4 (as ``tests/media.py``'s ``write_clip``): a scene colour changing every 7 s, a block
    moving with the frame index."""
    import cv2

    if path.is_file():
        return path
    width, height = size
    partial = path.with_suffix(".partial.mp4")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    rng = np.random.default_rng(seconds)
    colours = rng.integers(0, 255, (seconds // 7 + 2, 3))
    for i in range(round(seconds * fps)):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:] = colours[int(i / fps) // 7]
        x = (i * 3) % (width - 20)
        frame[30:50, x : x + 20] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    partial.rename(path)
    return path


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_processes() -> list[str]:
    """Other processes using more than 20% of a core (``ps``), to say how loaded the machine was."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    mine = os.getpid()
    rows = []
    for line in out:
        parts = line.split(None, 3)
        if len(parts) == 4 and int(parts[0]) != mine and float(parts[1]) > 20.0:
            rows.append(" ".join(parts))
    return rows[:6]


def time_graphs(
    family: CostFamily, pipe: Any, frames: np.ndarray, batch: int, threads: int
) -> dict[str, Any]:
    """Seconds a frame of the scorer's image tower and of the VLM's visual graph, onnxruntime against
    PyTorch eager of the same modules (the checkpoint loaded in float32), ``batch`` frames a call,
    onnxruntime and PyTorch interleaved, two rounds after a warm-up; also the VLM graph's rows of those
    frames (real outputs, reused as the rows of other frames)."""
    import torch
    import transformers

    from dfrt.runtime.preprocess import preprocess_frames

    torch.set_num_threads(threads)
    visual = pipe.visual
    scorer = visual.scorer
    picks = frames[np.linspace(0, len(frames) - 1, batch).round().astype(int)]
    start = time.perf_counter()
    vlm_pixels = preprocess_frames(picks, pipe.manifest.preprocess)
    vlm_preprocess = (time.perf_counter() - start) / batch
    start = time.perf_counter()
    scorer_pixels = scorer.preprocess(picks)
    scorer_preprocess = (time.perf_counter() - start) / batch
    weights = pipe.manifest.weights
    checkpoint, scorer_dir = Path(weights["checkpoints"][0]), Path(weights["scorer"])
    log("loading the checkpoints in PyTorch (float32) for the eager comparison")
    vlm = transformers.AutoModelForImageTextToText.from_pretrained(
        str(checkpoint), dtype=torch.float32
    ).eval()
    family.drop_text(vlm)
    gc.collect()
    vlm_module = family.export().VisualGraph(vlm).eval()
    siglip = transformers.SiglipModel.from_pretrained(str(scorer_dir), dtype=torch.float32).eval()
    vision_runner = visual.runners["vision"]
    scorer_runner = scorer.image_runner
    rows: np.ndarray | None = None

    def ort_vlm() -> None:
        nonlocal rows
        rows = vision_runner.run({"pixels": vlm_pixels})["frame_embeds"]

    def torch_vlm() -> None:
        with torch.inference_mode():
            vlm_module(torch.from_numpy(vlm_pixels))

    def ort_scorer() -> None:
        scorer_runner.run({"pixels": scorer_pixels})

    def torch_scorer() -> None:
        with torch.inference_mode():
            siglip.vision_model(pixel_values=torch.from_numpy(scorer_pixels))

    runs = {
        "vlm_ort": ort_vlm,
        "vlm_torch": torch_vlm,
        "scorer_ort": ort_scorer,
        "scorer_torch": torch_scorer,
    }
    # warm-up: one frame each (sessions, thread pools, weight pages)
    warm_vlm, warm_scorer = vlm_pixels[:1], scorer_pixels[:1]
    vision_runner.run({"pixels": warm_vlm})
    scorer_runner.run({"pixels": warm_scorer})
    with torch.inference_mode():
        vlm_module(torch.from_numpy(warm_vlm))
        siglip.vision_model(pixel_values=torch.from_numpy(warm_scorer))
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(2):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append((time.perf_counter() - start) / batch)
        log(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s/frame" for k, v in seconds.items()))
    del vlm, runs
    gc.collect()
    best = {name: min(v) for name, v in seconds.items()}
    return {
        "batch": batch,
        "rounds_seconds_per_frame": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
        "seconds_per_frame": {k: round(v, 4) for k, v in best.items()},
        "onnxruntime_speedup": {
            "vlm": round(best["vlm_torch"] / best["vlm_ort"], 3),
            "scorer": round(best["scorer_torch"] / best["scorer_ort"], 3),
        },
        "preprocess_seconds_per_frame": {
            "vlm": round(vlm_preprocess, 5),
            "scorer": round(scorer_preprocess, 5),
        },
        "rows": rows,
    }


def uniform_selection(total: int, count: int) -> Any:
    from dfrt.runtime.selection import KeyFrameSelection, uniform_frames

    keys = uniform_frames(total, count)
    return KeyFrameSelection(total, np.arange(keys.size, dtype=np.int64), keys, np.zeros(0, dtype=np.int64))


def prompt_length(pipe: Any, visual: Any) -> tuple[int, int]:
    """(text tokens, visual rows) of the prompt :meth:`Pipeline.answer` would prefill."""
    text = sum(len(ids) for ids in pipe.generator.visual_prompt_ids(QUESTION, visual.prompt))
    return text, int(visual.embeds.shape[0])


def measure_model(
    family: CostFamily, key: str, bundle: Path, videos: dict[int, Path], args: argparse.Namespace
) -> dict[str, Any]:
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    limit = prefill_limits(args.max_prefill_tokens).get(key)
    sampling = SamplingConfig(max_tokens=MAX_NEW_TOKENS, temperature=0.0)
    spec = family.models[key]
    record: dict[str, Any] = {"model": spec["name"], "quantize": spec["quantize"]}
    record["load_average_start"] = load_average()
    record["busy_processes_start"] = busy_processes()
    with Pipeline(bundle, n_ctx=args.n_ctx, threads=args.threads) as pipe:
        config = pipe.config
        record["config"] = {
            "tokens_per_frame": config.tokens_per_frame,
            "pooled_tokens": config.pooled_tokens,
            "default_visual_tokens": config.default_visual_tokens,
            "key_share": config.key_share,
            "pooled_grid": config.pooled_grid,
            "vision": f"{config.vision.width} wide x {config.vision.depth} at {config.vision.image_size}px "
            f"patch {config.vision.patch_size}",
            "llm_width": config.llm_width,
            "selection": pipe.visual.selection,
            "n_ctx": pipe.llm.n_ctx,
        }
        log(f"{key}: {record['config']}")
        first_seconds = GOAL_SECONDS if GOAL_SECONDS in videos else max(videos)
        first = pipe.load_video(videos[first_seconds], fps=FPS, max_frames=MAX_FRAMES)
        graphs = time_graphs(family, pipe, first.features.frames, args.batch, args.threads)
        rows = graphs.pop("rows")
        record["graphs"] = graphs
        per_frame = graphs["seconds_per_frame"]["vlm_ort"] + graphs["preprocess_seconds_per_frame"]["vlm"]
        measured_prefill: dict[tuple[int, int], dict[str, Any]] = {}
        results = []
        for seconds in DURATIONS:
            if seconds == first_seconds:  # decoded and scored once, before the graphs were timed
                video = first
            else:
                video = pipe.load_video(videos[seconds], fps=FPS, max_frames=MAX_FRAMES)
            total = video.features.num_frames
            decode = video.timings.get("decode", 0.0)
            scorer_image = video.features.timings.get("scorer_image", 0.0)
            log(f"{key} {seconds} s: {total} frames, decode {decode:.2f} s, scorer {scorer_image:.2f} s")
            check = None
            if seconds == GOAL_SECONDS and key in args.encode_check.split(","):  # the default plan, encoded
                result = pipe.embed(video, QUESTION)
                encoded = len(video.features.encoded)
                check = {
                    "frames": encoded,
                    "vision_seconds": round(result.timings.get("vision", 0.0), 3),
                    "preprocess_seconds": round(result.timings.get("preprocess", 0.0), 3),
                    "modelled_seconds": round(encoded * per_frame, 3),
                }
                log(f"{key}: real encode of the default plan's {encoded} frames: {check}")
            for i in range(total):  # every other frame's rows: real graph outputs, reused
                video.features.encoded.setdefault(i, np.ascontiguousarray(rows[i % len(rows)]))
            for name in ["dfrt", *(f"uniform-{n}" for n in UNIFORM)]:
                frames = None if name == "dfrt" else uniform_selection(total, int(name.split("-")[1]))
                result = pipe.embed(video, QUESTION, frames=frames, rods=frames is None)
                text_tokens, visual_tokens = prompt_length(pipe, result)
                shown = int((result.tokens_per_frame > 0).sum())
                keys = int(result.selection.key_frames.size)
                row: dict[str, Any] = {
                    "video_seconds": seconds,
                    "sampled_frames": total,
                    "config": name,
                    "frames_encoded": shown,
                    "key_frames": keys,
                    "pooled_frames": shown - keys,
                    "visual_tokens": visual_tokens,
                    "prompt_tokens": text_tokens + visual_tokens,
                    "decode_seconds": round(decode, 3),
                    "scorer_seconds": round(
                        scorer_image + result.timings.get("scorer_text", 0.0) if name == "dfrt" else 0.0, 3
                    ),
                    "encoder_seconds": round(shown * per_frame, 3),
                    "host_seconds": round(
                        result.timings.get("selection", 0.0) + result.timings.get("pooling", 0.0), 4
                    ),
                }
                row["visual_seconds"] = round(row["scorer_seconds"] + row["encoder_seconds"], 3)
                count = (text_tokens, visual_tokens)
                if limit is not None and row["prompt_tokens"] > limit:
                    row.update(prefill_seconds=None, llm_seconds=None, end_to_end_seconds=None)
                    row["prefill_note"] = f"not prefilled: above --max-prefill-tokens {limit}"
                    results.append(row)
                    log(f"{key} {seconds} s {name}: {row['prompt_tokens']} tokens, prefill skipped")
                    continue
                if count not in measured_prefill:
                    start = time.perf_counter()
                    answer = pipe.answer(QUESTION, result.prompt, sampling)
                    wall = time.perf_counter() - start
                    if answer.prompt_tokens != text_tokens or answer.visual_tokens != visual_tokens:
                        raise RuntimeError(f"prompt length {count} != answered {answer}")
                    measured_prefill[count] = {
                        "prefill_seconds": round(answer.prefill_seconds, 3),
                        "generated_tokens": answer.generated_tokens,
                        "llm_seconds": round(wall, 3),
                        "at": f"{seconds} s {name}",
                    }
                    row["prefill_reused"] = None
                else:
                    row["prefill_reused"] = measured_prefill[count]["at"]
                llm = measured_prefill[count]
                row.update(
                    prefill_seconds=llm["prefill_seconds"],
                    generated_tokens=llm["generated_tokens"],
                    llm_seconds=llm["llm_seconds"],
                )
                row["end_to_end_seconds"] = round(
                    decode + row["visual_seconds"] + row["host_seconds"] + llm["llm_seconds"], 3
                )
                results.append(row)
                log(
                    f"{key} {seconds} s {name}: {shown} frames ({keys} key), {visual_tokens} visual / "
                    f"{row['prompt_tokens']} prompt tokens, visual {row['visual_seconds']:.1f} s, prefill "
                    f"{row['prefill_seconds']:.2f} s{' (reused)' if row['prefill_reused'] else ''}, e2e "
                    f"{row['end_to_end_seconds']:.1f} s"
                )
            if check is not None:
                record["encode_check"] = check
        record["rows"] = results
        record["what_if"] = what_if(pipe, record, per_frame)
    record["load_average_end"] = load_average()
    record["goal"] = goal(record)
    return record


def prefill_limits(text: str) -> dict[str, int]:
    limits = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        limits[key.strip()] = int(value)
    return limits


def goal(record: dict[str, Any]) -> dict[str, Any]:
    """At 2 min: prompt (prefill) tokens of uniform-32 over dfrt's (>= 4), dfrt's visual seconds (scorer +
    encoder) over uniform-32's encoder seconds (<= 1.3); also the visual-token ratio."""
    rows = {r["config"]: r for r in record["rows"] if r["video_seconds"] == GOAL_SECONDS}
    if "dfrt" not in rows or f"uniform-{GOAL_FRAMES}" not in rows:
        return {"met": None, "note": "not measured (2 min or uniform-32 left out)"}
    ours, base = rows["dfrt"], rows[f"uniform-{GOAL_FRAMES}"]
    tokens = base["prompt_tokens"] / ours["prompt_tokens"]
    cost = ours["visual_seconds"] / base["visual_seconds"]
    # the same ratio from the interleaved per-frame timings alone (scorer and encoder timed back to back, so
    # the machine's load at the time the video was scored does not tilt it)
    spf, pre = record["graphs"]["seconds_per_frame"], record["graphs"]["preprocess_seconds_per_frame"]
    scorer_frame, encoder_frame = spf["scorer_ort"] + pre["scorer"], spf["vlm_ort"] + pre["vlm"]
    interleaved = (ours["sampled_frames"] * scorer_frame + ours["frames_encoded"] * encoder_frame) / (
        base["frames_encoded"] * encoder_frame
    )
    return {
        "visual_time_ratio_interleaved": round(interleaved, 3),
        "prefill_token_ratio": round(tokens, 3),
        "visual_token_ratio": round(base["visual_tokens"] / ours["visual_tokens"], 3),
        "visual_time_ratio": round(cost, 3),
        "tokens_met": tokens >= GOAL_TOKENS,
        "time_met": cost <= GOAL_COST,
        "met": tokens >= GOAL_TOKENS and cost <= GOAL_COST,
    }


def what_if(pipe: Any, record: dict[str, Any], per_frame: float) -> list[dict[str, Any]]:
    """The goal's two ratios at 2 min for other defaults (budget, key share, pooled grid): tokens counted
    exactly with the bundle's tokenizer and the plan's layout, visual seconds from this run's measured scorer
    seconds and per-frame encoder seconds. Nothing in the library is changed."""
    import dataclasses

    from dfrt.families.frame_runtime import plan_frames
    from dfrt.runtime.generate import VisualPrompt
    from dfrt.runtime.selection import uniform_frames

    rows = {r["config"]: r for r in record["rows"] if r["video_seconds"] == GOAL_SECONDS}
    if "dfrt" not in rows or f"uniform-{GOAL_FRAMES}" not in rows:
        return []
    base, ours = rows[f"uniform-{GOAL_FRAMES}"], rows["dfrt"]
    total = ours["sampled_frames"]
    config = pipe.config
    full = config.tokens_per_frame
    width = config.llm_width
    out = []
    for grid in (1, 2, 4):
        for budget in sorted({full * k for k in (2, 3, 4, 5, 8)} | {192, 256, 320, 384, 405}):
            if budget < full:
                continue
            for share in (0.6, 0.7, 0.8, 0.9, 1.0):
                try:
                    variant = dataclasses.replace(
                        config, default_visual_tokens=budget, key_share=share, pooled_grid=grid
                    )
                except Exception:  # a variant the config refuses is skipped
                    continue
                plan = plan_frames(total, budget, variant)
                keys = uniform_frames(total, plan.key_frames)
                rest = np.setdiff1d(np.arange(total), keys)
                pooled = (
                    rest[uniform_frames(rest.size, plan.frames - plan.key_frames)]
                    if plan.frames > plan.key_frames
                    else rest[:0]
                )
                shown = np.union1d(keys, pooled)
                counts = [full if i in set(keys.tolist()) else variant.pooled_tokens for i in shown.tolist()]
                layout = pipe.visual.layout([float(i) for i in shown], counts, float(total))
                prompt = VisualPrompt(np.zeros((sum(counts), width), np.float32), layout)
                text = sum(len(ids) for ids in pipe.generator.visual_prompt_ids(QUESTION, prompt))
                tokens = text + sum(counts)
                visual = ours["scorer_seconds"] + shown.size * per_frame
                out.append(
                    {
                        "default_visual_tokens": budget,
                        "key_share": share,
                        "pooled_grid": grid,
                        "key_frames": plan.key_frames,
                        "pooled_frames": plan.frames - plan.key_frames,
                        "visual_tokens": sum(counts),
                        "prompt_tokens": tokens,
                        "prefill_token_ratio": round(base["prompt_tokens"] / tokens, 3),
                        "visual_time_ratio": round(visual / base["visual_seconds"], 3),
                        "met": base["prompt_tokens"] / tokens >= GOAL_TOKENS
                        and visual / base["visual_seconds"] <= GOAL_COST,
                    }
                )
    return out


def table(record: dict[str, Any]) -> str:
    lines = [
        "| video | config | frames encoded (key + pooled) | visual tokens | prompt tokens | scorer s "
        "| encoder s "
        "| prefill s | end-to-end s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        prefill = (
            "—"
            if r["prefill_seconds"] is None
            else f"{r['prefill_seconds']:.2f}" + ("*" if r.get("prefill_reused") else "")
        )
        e2e = "—" if r["end_to_end_seconds"] is None else f"{r['end_to_end_seconds']:.1f}"
        length = f"{r['video_seconds'] // 60} min" if r["video_seconds"] >= 60 else f"{r['video_seconds']} s"
        lines.append(
            f"| {length} ({r['sampled_frames']} fr) | {r['config']} | {r['frames_encoded']} "
            f"({r['key_frames']} + "
            f"{r['pooled_frames']}) | {r['visual_tokens']} | {r['prompt_tokens']} | "
            f"{r['scorer_seconds']:.1f} | "
            f"{r['encoder_seconds']:.1f} | {prefill} | {e2e} |"
        )
    return "\n".join(lines)


def graphs_table(records: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | graph | onnxruntime s/frame | PyTorch eager s/frame | onnxruntime speed-up |",
        "|---|---|---|---|---|",
    ]
    for key, record in records.items():
        g = record["graphs"]
        spf = g["seconds_per_frame"]
        lines.append(
            f"| {key} | scorer image tower (SigLIP-B/16-224) | {spf['scorer_ort']:.3f} | "
            f"{spf['scorer_torch']:.3f} "
            f"| {g['onnxruntime_speedup']['scorer']:.2f}x |"
        )
        lines.append(
            f"| {key} | VLM visual graph ({record['config']['vision']}) | {spf['vlm_ort']:.3f} | "
            f"{spf['vlm_torch']:.3f} | {g['onnxruntime_speedup']['vlm']:.2f}x |"
        )
    return "\n".join(lines)


def save_plot(records: dict[str, dict[str, Any]], path: Path) -> str:
    """Prompt tokens and visual seconds (scorer + encoder) against video length, per model and configuration:
    matplotlib when installed, else dfrt's own OpenCV plotter (``dfrt.bench.plot``)."""
    try:
        import matplotlib
    except ImportError:
        return save_plot_opencv(records, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(records), 2, figsize=(12, 4.5 * len(records)), squeeze=False)
    for row, record in enumerate(records.values()):
        for col, (field, label) in enumerate(
            (("prompt_tokens", "prompt tokens"), ("visual_seconds", "scorer + encoder s"))
        ):
            ax = axes[row][col]
            for name in ["dfrt", *(f"uniform-{n}" for n in UNIFORM)]:
                pts = [
                    (r["video_seconds"], r[field]) for r in record["rows"] if r["config"] == name and r[field]
                ]
                if pts:
                    width = 2.5 if name == "dfrt" else 1
                    ax.plot(*zip(*pts, strict=True), marker="o", label=name, linewidth=width)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(DURATIONS, [f"{s // 60} min" if s >= 60 else f"{s} s" for s in DURATIONS])
            ax.set_title(f"{record['model']}: {label}")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return "matplotlib"


def save_plot_opencv(records: dict[str, dict[str, Any]], path: Path) -> str:
    import cv2

    from dfrt.bench import plot

    names = ["dfrt", *(f"uniform-{n}" for n in UNIFORM)]
    greys = np.linspace(200, 20, max(1, len(UNIFORM))).round().astype(int).tolist()  # light: fewest frames
    colours = [(40, 40, 220), *((g, g, g) for g in greys)]
    for name, colour in zip(names, colours, strict=True):
        plot.COLOURS[name] = colour
        plot.LABELS[name] = "dfrt default (dpe)" if name == "dfrt" else f"{name} full tokens"
    images = []
    for key, record in records.items():
        panels = []
        for field, title, unit in (
            ("prompt_tokens", f"{record['model']}: prompt tokens prefilled", "tokens"),
            ("visual_seconds", f"{record['model']}: scorer + visual encoder", "seconds"),
        ):
            series = {}
            for name in names:
                by = {r["video_seconds"]: r[field] for r in record["rows"] if r["config"] == name}
                series[name] = [by.get(s) for s in DURATIONS]
            panels.append(plot.Panel(title, unit, [float(s) for s in DURATIONS], series))
        goal_ = record["goal"]
        caption = (
            f"{key} at 2 min: uniform-32 / dfrt prompt tokens {goal_.get('prefill_token_ratio')}x (>= 4), "
            f"dfrt / uniform-32 visual s {goal_.get('visual_time_ratio')}x (<= 1.3). Random weights."
        )
        images.append(plot.render_plot(panels, caption))
    cv2.imwrite(str(path), np.concatenate(images, axis=0))
    return "opencv (dfrt.bench.plot; matplotlib is not installed)"


def run(family: CostFamily, args: argparse.Namespace, keys: list[str]) -> int:
    from dfrt.runtime.defaults import DEFAULT_FPS, DEFAULT_MAX_FRAMES

    if (DEFAULT_FPS, DEFAULT_MAX_FRAMES) != (FPS, MAX_FRAMES):
        log(f"note: dfrt's defaults are now {DEFAULT_FPS} fps, {DEFAULT_MAX_FRAMES} frames; measuring those")
    started = time.perf_counter()
    (args.cache / "videos").mkdir(exist_ok=True)
    videos = {s: write_video(args.cache / "videos" / f"synthetic-{s}s.mp4", s) for s in DURATIONS}
    bundles = {key: ensure_bundle(family, key, args.cache) for key in keys}
    records: dict[str, dict[str, Any]] = {}
    for key in keys:
        bundle, info = bundles[key]
        start = time.perf_counter()
        records[key] = measure_model(family, key, bundle, videos, args)
        records[key]["build"] = info
        records[key]["measure_seconds"] = round(time.perf_counter() - start, 1)
        gc.collect()
    import llama_cpp
    import onnxruntime
    import torch
    import transformers

    document = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "llama_cpp_python": llama_cpp.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": args.threads,
            "n_ctx": args.n_ctx,
        },
        "weights": "random (no downloads): cost only, accuracy not measured",
        "family": family.title,
        "unverified": family.unverified,
        "question": QUESTION,
        "fps": FPS,
        "max_frames": MAX_FRAMES,
        "max_new_tokens": MAX_NEW_TOKENS,
        "models": records,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    if args.merge and args.json.is_file():
        previous = json.loads(args.json.read_text())
        kept = {k: v for k, v in previous.get("models", {}).items() if k not in records}
        document["models"] = {**kept, **records}
        document["runs"] = [*previous.get("runs", [previous.get("command")]), document["command"]]
        records = document["models"]
    print()
    print(graphs_table(records))
    for record in records.values():
        print(
            f"\n{record['model']} (LM {record['quantize']}), load {record['load_average_start']} -> "
            f"{record['load_average_end']}"
        )
        print(table(record))
        g = record["goal"]
        if g.get("met") is None:
            continue
        print(
            f"goal at 2 min: prompt tokens uniform-32 / dfrt = {g['prefill_token_ratio']:.2f}x (>= 4: "
            f"{g['tokens_met']}), visual tokens {g['visual_token_ratio']:.2f}x, visual s dfrt / uniform-32 "
            f"= {g['visual_time_ratio']:.2f}x (<= 1.3: {g['time_met']}) -> {'MET' if g['met'] else 'MISSED'}"
        )
        if "encode_check" in record:
            print(f"encoder check (default plan at 2 min really encoded): {record['encode_check']}")
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    log(f"wrote {args.json}")
    how = save_plot(records, args.plot)
    log(f"wrote {args.plot} ({how})")
    return 0


def main(family: CostFamily, argv: list[str] | None = None) -> int:
    global DURATIONS, UNIFORM
    parser = argparse.ArgumentParser(
        description=family.doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = ",".join(family.models)
    parser.add_argument("--models", default=names, help=f"comma-separated: {', '.join(family.models)}")
    parser.add_argument("--cache", type=Path, default=family.cache)
    parser.add_argument("--json", type=Path, default=family.json)
    parser.add_argument("--plot", type=Path, default=family.plot)
    parser.add_argument("--batch", type=int, default=4, help="frames per timed graph call")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=family.n_ctx, help="llama.cpp context (tokens)")
    first = next(iter(family.models))
    parser.add_argument(
        "--max-prefill-tokens",
        default="",
        help=f"per model, e.g. {first}=3500: longer prompts not prefilled",
    )
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument(
        "--encode-check",
        default=family.encode_check,
        help="models whose default plan at 2 min is also really encoded",
    )
    parser.add_argument("--merge", action="store_true", help="keep the other models' records in --json")
    parser.add_argument(
        "--durations", default=",".join(map(str, DURATIONS)), help="video seconds (debugging)"
    )
    parser.add_argument("--uniform", default=",".join(map(str, UNIFORM)), help="uniform frame counts")
    args = parser.parse_args(argv)
    DURATIONS = tuple(int(x) for x in args.durations.split(","))
    UNIFORM = tuple(int(x) for x in args.uniform.split(","))
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    for key in keys:
        if key not in family.models:
            parser.error(f"unknown model {key!r}: choose from {', '.join(family.models)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        for key in keys:
            ensure_bundle(family, key, args.cache)
        return 0
    return run(family, args, keys)
