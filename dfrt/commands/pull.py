"""`dfrt pull NAME`: download public LLaMA-VID weights and the EVA-ViT-g tower, then convert them to a bundle.

Needs internet access and ``pip install 'dfrt[pull]'`` (huggingface_hub, imported only here). The DynFocus
authors published no weights: the names here are LLaMA-VID checkpoints, which share DynFocus's vision tower,
Q-Former, projectors and LLM; the bundle uses question-aware scoring in place of the missing DPE scorer.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dfrt.commands import progress
from dfrt.errors import ConfigError, DfrtError, MissingDependencyError

# LAVIS's public copy, the file LLaMA-VID's README points to (not on the Hugging Face hub)
EVA_VIT_G_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"


@dataclass(frozen=True)
class Source:
    repo_id: str  # Hugging Face model repository
    about: str


SOURCES = {
    "llama-vid-7b-video": Source(
        "YanweiLi/llama-vid-7b-full-224-video-fps-1", "LLaMA-VID 7B, 224 px, video fine-tuned (1 fps)"
    ),
    "llama-vid-7b-image": Source("YanweiLi/llama-vid-7b-full-224", "LLaMA-VID 7B, 224 px, image only"),
}
# what a checkpoint directory needs; the optimiser states and other files of the repository are skipped
PATTERNS = ["*.json", "tokenizer.model", "*.bin", "*.safetensors"]


class PullError(DfrtError):
    """A download failed (offline, unknown repository, interrupted)."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    names = ", ".join(f"{n} ({s.about})" for n, s in SOURCES.items())
    p = sub.add_parser(
        "pull",
        help="download public LLaMA-VID + EVA-ViT-g weights and convert them to a bundle (needs internet)",
        description=f"Known names: {names}.",
    )
    p.add_argument("name", choices=sorted(SOURCES), help="which checkpoint")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument(
        "--cache",
        type=Path,
        help="download directory (default: the Hugging Face cache, ~/.cache/huggingface)",
    )
    p.add_argument(
        "--vision-weights", type=Path, help="an eva_vit_g.pth already on disk (skips its download)"
    )
    p.add_argument("--quantize", choices=("f16", "q8_0", "q4_k_m"), default="q4_k_m")
    p.add_argument("--scoring", choices=("trained", "question"))
    p.add_argument("--download-only", action="store_true", help="fetch the files, do not convert")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    hub = _hub()
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a directory")
    source = SOURCES[args.name]
    progress(f"downloading {source.repo_id} (about 14 GB)")
    checkpoint = download_checkpoint(hub, source.repo_id, args.cache)
    eva = args.vision_weights
    if eva is None:
        eva = download_url(EVA_VIT_G_URL, (args.cache or checkpoint.parent) / "eva_vit_g.pth")
    elif not eva.is_file():
        raise ConfigError(f"--vision-weights {eva} is not a file")
    if args.download_only:
        print(f"{checkpoint}\n{eva}")
        return 0
    from dfrt.commands import export

    return export.run(
        argparse.Namespace(
            config=None,
            checkpoint=[checkpoint],
            vision_weights=eva,
            scoring=args.scoring,
            seed=0,
            out=args.out,
            llm=None,
            prompt=None,
            quantize=args.quantize,
            no_validate=False,
            json=args.json,
        )
    )


def _hub():  # type: ignore[no-untyped-def]
    try:
        import huggingface_hub
    except ImportError as e:
        raise MissingDependencyError(
            "huggingface_hub is not installed: pip install 'dfrt[pull]' (or download the checkpoint "
            "yourself and run dfrt export --checkpoint DIR --vision-weights eva_vit_g.pth)"
        ) from e
    return huggingface_hub


def download_checkpoint(hub, repo_id: str, cache: Path | None) -> Path:  # type: ignore[no-untyped-def]
    """The checkpoint files of ``repo_id``, resumable; any hub or network failure is a :class:`PullError`."""
    try:
        path = hub.snapshot_download(
            repo_id, allow_patterns=PATTERNS, local_dir=cache / repo_id.split("/")[-1] if cache else None
        )
    except Exception as e:  # huggingface_hub raises HTTP, offline and OS errors of many types
        raise PullError(
            f"cannot download {repo_id} ({type(e).__name__}: {e}); are you online? "
            "(HF_HUB_OFFLINE=1 allows only what is already cached)"
        ) from e
    return Path(path)


def download_url(url: str, target: Path) -> Path:
    """``url`` to ``target`` through a temporary file (kept if complete already)."""
    from dfrt.fileio import atomic_path

    if target.is_file():
        return target
    progress(f"downloading {url}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            atomic_path(target) as tmp,
            urllib.request.urlopen(url, timeout=60) as response,
            open(tmp, "wb") as f,
        ):
            while chunk := response.read(1 << 22):
                f.write(chunk)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise PullError(f"cannot download {url} ({e}); are you online?") from e
    return target
