"""What ``dfrt pull NAME`` knows (:data:`CATALOGUE`), and the LLaMA-VID download.

Open VLMs (SmolVLM2, InternVL3.5) are pulled by :mod:`dfrt.export.pull_vlm`: only the files their export
needs, disk space checked first, resumable, every file's hash checked and recorded, then converted by the
family's ``export_checkpoint``. LLaMA-VID checkpoints go through :func:`download` and
:func:`dfrt.export.convert.export`: the DynFocus authors published no weights; LLaMA-VID shares DynFocus's
vision tower, Q-Former, projectors and LLM, and the bundle uses question-aware scoring in place of the
missing DPE scorer.

Needs internet access (or a copied mirror: ``--from HUB_FOLDER``) and ``pip install 'dfrt[pull]'``
(huggingface_hub, imported only when downloading). This module is stdlib only: ``dfrt pull --help`` and
``--list`` read the catalogue without it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfrt.errors import ConfigError, MissingDependencyError
from dfrt.export.hub import PullError

__all__ = ["CATALOGUE", "SCORERS", "PullError", "Pullable", "ScorerSource", "download", "download_url"]

# LAVIS's public copy, the file LLaMA-VID's README points to (not on the Hugging Face hub)
EVA_VIT_G_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"


GB = 10**9
# Revisions: "main", resolved at pull time to the commit the hub names, which the bundle's manifest and the
# pull record keep (`dfrt pull NAME --revision COMMIT` pins one). No commit is pinned here because none could
# be checked where dfrt is built (no network): a pin nobody verified would be worse than a recorded "main".
MAIN = "main"


@dataclass(frozen=True)
class ScorerSource:
    """A dual encoder that scores frames against the question (``--scorer`` of ``dfrt export``)."""

    name: str
    repo: str
    about: str
    licence: str
    download_bytes: int  # approximate, for --list; a pull uses the hub's exact sizes
    revision: str = MAIN


SCORERS = {
    s.name: s
    for s in (
        ScorerSource(
            "siglip-base-patch16-224",
            "google/siglip-base-patch16-224",
            "SigLIP B/16 at 224 px (203M parameters, FP32 weights)",
            "Apache-2.0",
            int(0.81 * GB),
        ),
    )
}
DEFAULT_SCORER = "siglip-base-patch16-224"


@dataclass(frozen=True)
class Pullable:
    """One name of ``dfrt pull``: the model repository, its family (:mod:`dfrt.registry`), its scorer."""

    name: str
    family: str
    repo: str
    about: str
    licence: str
    download_bytes: int  # approximate, for --list (the model; the scorer's is added when it has one)
    revision: str = MAIN
    scorer: str | None = DEFAULT_SCORER
    vision_params: int = 0  # the vision tower + connector: kept FP32 in the bundle's ONNX (disk estimate)
    quantize: str = "q8_0"  # the default --quantize of its language model

    @property
    def open_vlm(self) -> bool:
        return self.family != "dynfocus"


# One tuple per family; a family's sizes go in its own block, and into CATALOGUE below.
SMOLVLM2 = (
    Pullable(
        "smolvlm2-256m",
        "smolvlm",
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        "SmolVLM2 256M Video-Instruct: SigLIP B/16 at 512 px + SmolLM2-135M, 64 tokens a frame",
        "Apache-2.0",
        int(0.51 * GB),
        vision_params=100_000_000,
    ),
    Pullable(
        "smolvlm2-500m",
        "smolvlm",
        "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
        "SmolVLM2 500M Video-Instruct: SigLIP B/16 at 512 px + SmolLM2-360M, 64 tokens a frame",
        "Apache-2.0",
        int(1.02 * GB),
        vision_params=105_000_000,
    ),
    Pullable(
        "smolvlm2-2.2b",
        "smolvlm",
        "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "SmolVLM2 2.2B Instruct: SigLIP SO400M at 384 px + SmolLM2-1.7B, 81 tokens a frame",
        "Apache-2.0",
        int(4.49 * GB),
        vision_params=450_000_000,
    ),
)
# transformers-format ("-HF") checkpoints: InternVLForConditionalGeneration, what dfrt.families.internvl reads
INTERNVL35 = (
    Pullable(
        "internvl3.5-1b",
        "internvl",
        "OpenGVLab/InternVL3_5-1B-HF",
        "InternVL3.5 1B: InternViT-300M at 448 px + Qwen3-0.6B, 256 tokens a frame",
        "Apache-2.0",
        int(2.12 * GB),
        vision_params=310_000_000,
    ),
    Pullable(
        "internvl3.5-2b",
        "internvl",
        "OpenGVLab/InternVL3_5-2B-HF",
        "InternVL3.5 2B: InternViT-300M at 448 px + Qwen3-1.7B, 256 tokens a frame",
        "Apache-2.0",
        int(4.70 * GB),
        vision_params=317_000_000,
    ),
)
# A further open family adds its tuple here and to CATALOGUE once dfrt.registry registers it.
LLAMA_VID = (
    Pullable(
        "llama-vid-7b-video",
        "dynfocus",
        "YanweiLi/llama-vid-7b-full-224-video-fps-1",
        "LLaMA-VID 7B, 224 px, video fine-tuned (1 fps), + EVA-ViT-g (LAVIS)",
        "research only (LLaMA-VID: LLaMA/Vicuna terms)",
        int(16 * GB),
        scorer=None,
        quantize="q4_k_m",
    ),
    Pullable(
        "llama-vid-7b-image",
        "dynfocus",
        "YanweiLi/llama-vid-7b-full-224",
        "LLaMA-VID 7B, 224 px, image only, + EVA-ViT-g (LAVIS)",
        "research only (LLaMA-VID: LLaMA/Vicuna terms)",
        int(16 * GB),
        scorer=None,
        quantize="q4_k_m",
    ),
)
CATALOGUE = {p.name: p for p in (*SMOLVLM2, *INTERNVL35, *LLAMA_VID)}


@dataclass(frozen=True)
class Source:
    repo_id: str  # Hugging Face model repository
    about: str


SOURCES = {p.name: Source(p.repo, p.about.split(", +")[0]) for p in LLAMA_VID}  # the LLaMA-VID download
# what a LLaMA-VID checkpoint directory needs; the optimiser states and other files are skipped
PATTERNS = ["*.json", "tokenizer.model", "*.bin", "*.safetensors"]


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
