"""Download public LLaMA-VID weights and the EVA-ViT-g tower for :func:`dfrt.export.convert.export`.

Needs internet access and ``pip install 'dfrt[pull]'`` (huggingface_hub, imported only here). The DynFocus
authors published no weights: the names here are LLaMA-VID checkpoints, which share DynFocus's vision tower,
Q-Former, projectors and LLM; the bundle uses question-aware scoring in place of the missing DPE scorer.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def download(
    name: str,
    cache: Path | None = None,
    vision_weights: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[Path, Path]:
    """The checkpoint directory of ``name`` and the EVA-ViT-g weights (``vision_weights`` if given)."""
    if name not in SOURCES:
        raise ConfigError(f"unknown checkpoint {name!r}; choose one of {', '.join(sorted(SOURCES))}")
    hub = _hub()
    source = SOURCES[name]
    progress(f"downloading {source.repo_id} (about 14 GB)")
    checkpoint = download_checkpoint(hub, source.repo_id, cache)
    if vision_weights is None:
        vision_weights = download_url(EVA_VIT_G_URL, (cache or checkpoint.parent) / "eva_vit_g.pth", progress)
    elif not vision_weights.is_file():
        raise ConfigError(f"--vision-weights {vision_weights} is not a file")
    return checkpoint, vision_weights


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


def download_url(url: str, target: Path, progress: Callable[[str], None] = lambda message: None) -> Path:
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
