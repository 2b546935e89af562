"""Convert a full-size random-weight checkpoint in the official layout into a bundle: time, memory, sizes.

    python benchmarks/checkpoint_export.py --work DIR [--layout llamavid|dynfocus] [--quantize q4_k_m]
        [--keep] [--json]

Writes, under ``DIR``, what a user downloads: a LLaMA-VID (or DynFocus) checkpoint directory at the paper's
dimensions (Vicuna-7B v1.5 LLM, BERT-base Q-Former, projectors into 4096; fp16; ``pytorch_model-*.bin``
shards of at most 10 GB, as ``save_pretrained`` wrote them then, with ``pytorch_model.bin.index.json``,
``config.json`` and a 32,000-piece sentencepiece ``tokenizer.model``) and LAVIS's ``eva_vit_g.pth`` layout
(40 blocks, fp16). Then it runs ``dfrt export --checkpoint DIR --vision-weights eva_vit_g.pth`` in a child
process, timestamps its progress lines and samples the child's resident set (peak of the whole process tree,
llama.cpp's quantiser included). The checkpoint is deleted afterwards unless ``--keep``. Needs about
2.5x the checkpoint size (16 GB) of free disk: checkpoint, F16 GGUF, quantised GGUF and ONNX graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

SHARD_BYTES = 10 * 10**9
VICUNA_7B = {
    "architectures": ["LlavaLlamaAttForCausalLM"],
    "model_type": "llava",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 4096,
    "rope_scaling": None,
    "torch_dtype": "float16",
    "mm_projector_type": "mlp2x_gelu",
    "mm_hidden_size": 1408,
    "vision_tower": "./model_zoo/LAVIS/eva_vit_g.pth",
}
OFFICIAL = {  # our prefix -> the authors' (method.md section 2.2)
    "qformer.bert.": "model.vlm_att_encoder.bert.",
    "qformer.query_tokens": "model.vlm_att_query",
    "qformer.ln_vision.": "model.vlm_att_ln.",
    "qformer.proj.": "model.vlm_att_projector.",
    "rod_attention.key_proj.": "model.vlm_att_key_projector.",
    "rod_value_proj.": "model.vlm_att_val_projector.",
    "projector.": "model.mm_projector.",
    "scorer.": "selective_net.score_network.",
    "structure.score.": "merge.score.",
}


def _random(shape: tuple[int, ...], name: str, generator: object) -> object:
    import torch

    if name.endswith(("norm.weight", "LayerNorm.weight", "norm1.weight", "norm2.weight")) or (
        name.endswith("ln_vision.weight") or name.endswith("vlm_att_ln.weight")
    ):
        return torch.ones(shape, dtype=torch.float16)
    scale = 0.02 if len(shape) > 1 else 0.01
    return (torch.randn(shape, generator=generator) * scale).to(torch.float16)


def _llm_shapes(cfg: dict[str, int]) -> dict[str, tuple[int, ...]]:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (h, h),
                p + "self_attn.v_proj.weight": (h, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    return shapes


TINY_LLM = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 2,
    "num_attention_heads": 9,
    "num_key_value_heads": 9,
}


def _visual_shapes(layout: str, dims: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(checkpoint tensors of the visual path in the official names, eva_vit_g.pth tensors)."""
    import torch

    from dfrt.config import get_config
    from dfrt.model.dynfocus import DynFocus

    config = get_config(dims)
    with torch.device("meta"):
        state = DynFocus(config).state_dict()
    ours = {k: tuple(v.shape) for k, v in state.items()}
    official = {}
    for key, shape in ours.items():
        prefix = next((p for p in OFFICIAL if key.startswith(p)), None)
        if prefix is None or (layout == "llamavid" and prefix in ("scorer.", "structure.score.")):
            continue
        official[OFFICIAL[prefix] + key[len(prefix) :]] = shape
    eva = {k[len("vision_tower.") :]: s for k, s in ours.items() if k.startswith("vision_tower.")}
    depth = config.vision.depth
    eva.update(
        {f"blocks.{depth}.{k.split('.', 2)[2]}": s for k, s in eva.items() if k.startswith("blocks.0.")}
    )
    return official, eva


def _tokenizer(directory: Path, vocab_size: int) -> None:
    """A sentencepiece BPE model trained on a few sentences, padded to ``vocab_size`` pieces."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf (benchmark only)

    sentences = [
        "A chat between a curious user and an artificial intelligence assistant.",
        "What happens in the video after the red car stops at the corner?",
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    ]
    prefix = directory / "sp"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 50),
        model_prefix=str(prefix),
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(f"{prefix}.model").read_bytes())
    i = 0
    while len(proto.pieces) < vocab_size:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"\u2581pad{i}", -1000.0 - i, piece.NORMAL
        i += 1
    (directory / "tokenizer.model").write_bytes(proto.SerializeToString())
    for suffix in (".model", ".vocab"):
        Path(f"{prefix}{suffix}").unlink()


def write_checkpoint(work: Path, layout: str, dims: str = "paper") -> tuple[Path, Path, dict[str, float]]:
    """The official files under ``work``; returns (checkpoint dir, eva_vit_g.pth, figures)."""
    import torch

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    directory = work / ("llama-vid-7b-full-224-video-fps-1" if layout == "llamavid" else "dynfocus-7b")
    directory.mkdir(parents=True)
    llm = {**VICUNA_7B, **(TINY_LLM if dims == "tiny" else {})}
    (directory / "config.json").write_text(json.dumps(llm, indent=2))
    _tokenizer(directory, llm["vocab_size"])
    official, eva = _visual_shapes(layout, dims)
    shapes = {**_llm_shapes(llm), **official}
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        part = {k: _random(shapes[k], k, generator) for k in keys}
        total += sum(t.numel() * 2 for t in part.values())
        torch.save(part, directory / name)
        del part
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    eva_path = work / "eva_vit_g.pth"
    torch.save({k: _random(s, k, generator) for k, s in eva.items()}, eva_path)
    figures = {
        "write_seconds": round(time.perf_counter() - start, 1),
        "checkpoint_gb": round(sum(p.stat().st_size for p in directory.iterdir()) / 1e9, 2),
        "eva_gb": round(eva_path.stat().st_size / 1e9, 2),
        "shards": len(shards),
    }
    return directory, eva_path, figures


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0]) * 1024
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, IndexError):
            continue
        stack += [int(c) for c in children]
    return total


def export(checkpoint: Path, eva: Path, out: Path, quantize: str) -> dict[str, object]:
    command = [
        *(sys.executable, "-m", "dfrt.cli", "export"),
        *("--checkpoint", str(checkpoint), "--vision-weights", str(eva)),
        *("--quantize", quantize, "--out", str(out), "--json"),
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], _tree_rss(child.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stages, errors = [], []
    assert child.stderr is not None and child.stdout is not None
    for line in child.stderr:
        stages.append((round(time.perf_counter() - start, 1), line.rstrip()))
        errors.append(line)
    stdout = child.stdout.read()
    child.wait()
    sampler.join()
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"export failed ({child.returncode}): {''.join(errors)[-3000:]}")
    report = json.loads(stdout)
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(max(maxrss, peak[0]) / 2**30, 2),
        "files_mb": {name: round(size / 1e6, 1) for name, size in report["files"].items()},
        "bundle_gb": round(sum(report["files"].values()) / 1e9, 2),
        "parity_ok": all(r["ok"] for r in report["parity"]),
        "worst_parity": max((r["max_abs_error"] for r in report["parity"]), default=0.0),
        "progress": [f"{t:7.1f} s  {line}" for t, line in stages if line and "%|" not in line],
        "scoring": json.loads((out / "dfrt.json").read_text())["scoring"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="directory for checkpoint and bundle")
    parser.add_argument("--layout", choices=("llamavid", "dynfocus"), default="llamavid")
    parser.add_argument("--quantize", choices=("f16", "q8_0", "q4_k_m"), default="q4_k_m")
    parser.add_argument(
        "--dims", choices=("paper", "tiny"), default="paper", help="tiny: a minute-long rehearsal"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint and bundle")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"{args.work} is not empty")
    try:
        checkpoint, eva, written = write_checkpoint(args.work, args.layout, args.dims)
        figures = {"layout": args.layout, "dims": args.dims, "quantize": args.quantize, **written}
        figures.update(export(checkpoint, eva, args.work / "bundle", args.quantize))
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        if key == "progress":
            print("progress:", *value, sep="\n  ")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
