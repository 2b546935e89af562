"""``dfrt pull NAME`` for open VLMs: the catalogue's repositories -> verified local files -> a bundle.

1. list the model's (and its scorer's) repository on the hub: the commit ``revision`` resolves to, every
   file's size and hash; keep only what the export reads (:func:`wanted_files`);
2. check the disk before any download: the files still to fetch plus the converted bundle (an estimate from
   the parameter counts: :func:`bundle_bytes`) against the free bytes of each disk they land on;
3. fetch each file not yet verified (a killed pull resumes: finished files are skipped through the pull
   record, a partial one continues; a partial file never has the final name), check its sha256 against the
   hub's (or a small file's git blob sha1) and record it in ``<directory>/.dfrt-pull.json``; a mismatch
   removes the file and stops the pull in one line (:class:`~dfrt.export.hub.HashMismatchError`);
4. convert with the family's ``export_checkpoint`` and write the sources, commits and every file's sha256
   into the bundle manifest's ``weights`` provenance.

Downloads land in ``<cache>/<commit>/<org>/<repo>/`` (``--cache``, else ``<dfrt cache>/hub``) and stay there:
they are the Hugging Face checkpoint directories ``dfrt export --checkpoint/--scorer`` also accept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfrt.errors import ConfigError
from dfrt.export.hub import (
    PARTIAL_DIR,
    FolderHub,
    HashMismatchError,
    HfHub,
    Hub,
    Listing,
    NotEnoughSpaceError,
    PullError,
    RemoteFile,
    git_blob_sha1,
    sha256_of,
)
from dfrt.export.pull import CATALOGUE, SCORERS, Pullable

if TYPE_CHECKING:
    from dfrt.export.bundle_writer import ExportResult

log = logging.getLogger(__name__)

RECORD = ".dfrt-pull.json"
QUANTIZE_TYPES = ("q8_0", "q4_k_m", "f16")
# bytes a language-model weight takes in the GGUF (q4_k_m mixes q4_k and q6_k: about 4.9 bits)
GGUF_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.62}
SLACK = 32 << 20  # tokenizers, the manifest, the ONNX protobufs around their weights
THIRD_PARTY = ("huggingface_hub", "transformers", "torch", "onnx", "onnxruntime", "urllib3", "filelock")

# what an export reads from a checkpoint (model) or a dual encoder (scorer): weights only as safetensors
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "*.safetensors",
    "*.safetensors.index.json",
)
SCORER_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.safetensors",
    "*.safetensors.index.json",
)


@dataclass(frozen=True)
class PullRequest:
    name: str
    out: Path | None  # the bundle to write (None only with download_only)
    quantize: str | None = None  # default: the catalogue entry's
    hub_folder: Path | None = None  # a mirror (--from); default: the Hugging Face hub
    cache: Path | None = None  # where downloads go; default <dfrt cache>/hub
    revision: str | None = None  # of the model repository; default: the catalogue's
    scorer: bool = True
    download_only: bool = False
    show_progress: bool = True


@dataclass
class Part:
    """One repository of a pull: its listing, the files wanted, where they go and what is verified."""

    role: str  # "model" or "scorer"
    listing: Listing
    files: list[RemoteFile]
    directory: Path
    record: dict[str, Any] = field(default_factory=dict)

    def pending(self) -> list[RemoteFile]:
        return [f for f in self.files if not _verified(self, f)]

    def provenance(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "repo": self.listing.repo,
            "revision": self.listing.revision,
            "commit": self.listing.commit,
            "directory": str(self.directory),
            "files": {f.name: _public(self.record["files"][f.name]) for f in self.files},
        }


@dataclass
class PullResult:
    entry: Pullable
    parts: list[Part]
    downloaded_bytes: int
    seconds: float
    hub: str
    export: ExportResult | None = None

    @property
    def checkpoint(self) -> Path:
        return self.parts[0].directory

    @property
    def scorer(self) -> Path | None:
        return self.parts[1].directory if len(self.parts) > 1 else None


def open_vlm(name: str) -> Pullable:
    entry = CATALOGUE.get(name)
    if entry is None or not entry.open_vlm:
        known = ", ".join(n for n, e in CATALOGUE.items() if e.open_vlm)
        raise ConfigError(f"{name!r} is not an open VLM dfrt can pull; choose one of {known}")
    return entry


def pull(
    request: PullRequest, progress: Callable[[str], None] = log.info, hub: Hub | None = None
) -> PullResult:
    """Download, verify and convert ``request.name`` (module docstring); every failure is one
    :class:`~dfrt.errors.DfrtError` line, and nothing is downloaded when the disk is too small."""
    start = time.perf_counter()
    entry = open_vlm(request.name)
    quantize = request.quantize or entry.quantize
    if quantize not in QUANTIZE_TYPES:
        raise ConfigError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_TYPES)}")
    out = request.out
    if not request.download_only:
        if out is None:
            raise ConfigError("give the bundle directory to write (--out DIR), or --download-only")
        _check_out(out)
        _require_export_side()
    if hub is None:
        hub = FolderHub(request.hub_folder) if request.hub_folder is not None else HfHub()
    root = request.cache or _default_cache()
    with _quiet():
        parts = [_part("model", hub, entry.repo, request.revision or entry.revision, MODEL_FILES, root)]
        if request.scorer and entry.scorer is not None:
            scorer = SCORERS[entry.scorer]
            parts.append(_part("scorer", hub, scorer.repo, scorer.revision, SCORER_FILES, root))
        bundle = 0 if out is None or request.download_only else bundle_bytes(entry, parts, quantize)
        check_space(entry.name, parts, bundle, out)
        downloaded = 0
        for part in parts:
            downloaded += _download(hub, part, request.show_progress, progress)
        result = PullResult(entry, parts, downloaded, 0.0, hub.where)
        if out is not None and not request.download_only:
            result.export = _convert(result, out, quantize, progress)
    result.seconds = time.perf_counter() - start
    return result


def wanted_files(listing: Listing, patterns: tuple[str, ...]) -> list[RemoteFile]:
    """The files of ``listing`` an export reads (top-level names matching ``patterns``); a scorer that ships
    no ``tokenizer.json`` brings its sentencepiece ``spiece.model`` (google/siglip-*)."""
    chosen = [
        f
        for name, f in sorted(listing.files.items())
        if "/" not in name and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]
    names = {f.name for f in chosen}
    if "tokenizer.json" not in names and "spiece.model" in listing.files:
        chosen.append(listing.files["spiece.model"])
    if not any(n.endswith(".safetensors") for n in names):
        raise PullError(
            f"{listing.repo}@{listing.revision} has no .safetensors weights: dfrt pulls weights only as "
            "safetensors (never pickles)"
        )
    if "config.json" not in names:
        raise PullError(
            f"{listing.repo}@{listing.revision} has no config.json: not a transformers checkpoint"
        )
    return chosen


def bundle_bytes(entry: Pullable, parts: list[Part], quantize: str) -> int:
    """About what the converted bundle takes while it is written: the vision tower and connector in FP32
    ONNX, the language model in the GGUF type (plus the F16 GGUF llama.cpp quantises from, beside it), the
    scorer's two towers in FP32."""
    model, *scorer = (_parameters(p) for p in parts)
    vision = min(entry.vision_params, model)
    llm = model - vision
    total = 4 * vision + GGUF_BYTES[quantize] * llm + 4 * sum(scorer) + SLACK
    if quantize != "f16":
        total += 2 * llm
    return int(total)


def check_space(name: str, parts: list[Part], bundle: int, out: Path | None) -> None:
    """Refuse (:class:`NotEnoughSpaceError`, one line) when the files still to download and the bundle do
    not fit on the disks they go to (the same disk: both counted against its free bytes)."""
    needs: dict[int, list[Any]] = {}  # device -> [a path on it, download bytes, bundle bytes]
    for part in parts:
        where = _existing(part.directory)
        need = needs.setdefault(os.stat(where).st_dev, [where, 0, 0])
        need[1] += sum(f.size for f in part.pending())
    if bundle and out is not None:
        where = _existing(out)
        need = needs.setdefault(os.stat(where).st_dev, [where, 0, 0])
        need[2] += bundle
    for where, download, converted in needs.values():
        free = shutil.disk_usage(where).free
        if download + converted > free:
            raise NotEnoughSpaceError(
                f"not enough disk space for {name}: {download + converted:,} bytes needed on {where} "
                f"({_size(download)} to download, {_size(converted)} for the bundle), "
                f"{free:,} bytes ({_size(free)}) free; nothing was downloaded"
            )


def record_provenance(result: PullResult, bundle: Path) -> None:
    """Write the pull's sources and every file's sha256 into the bundle manifest's ``weights``."""
    from dfrt.fileio import BUNDLE_MARKER, atomic_write_text
    from dfrt.manifest import MAX_MANIFEST_BYTES, Manifest

    path = bundle / BUNDLE_MARKER
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise PullError(f"{path}: too large to be the manifest just written")
    manifest = Manifest.from_json(path.read_text(encoding="utf-8"), path.name)
    weights = {
        **manifest.weights,
        "source": "pull",
        "name": result.entry.name,
        "hub": result.hub,
        "repos": [part.provenance() for part in result.parts],
    }
    atomic_write_text(path, dataclasses.replace(manifest, weights=weights).to_json())


def _part(role: str, hub: Hub, repo: str, revision: str, patterns: tuple[str, ...], root: Path) -> Part:
    listing = hub.listing(repo, revision)
    files = wanted_files(listing, patterns)
    # <commit>/<org>/<repo>: the folder keeps the repository's name, which the export names the model by
    directory = root / (listing.commit or revision).replace("/", "--") / repo
    part = Part(role, listing, files, directory)
    part.record = _load_record(directory, listing, hub.where)
    return part


def _download(hub: Hub, part: Part, show_progress: bool, progress: Callable[[str], None]) -> int:
    """Fetch and verify what ``part`` still lacks; one pull at a time per directory (a second one waits,
    then finds the files verified)."""
    from dfrt.fileio import file_lock

    if not part.pending():
        progress(f"{part.listing.repo}: {len(part.files)} files already downloaded and verified")
        return 0
    part.directory.mkdir(parents=True, exist_ok=True)
    with file_lock(part.directory / RECORD):
        part.record = _load_record(part.directory, part.listing, hub.where)  # as the last holder left it
        pending = part.pending()
        total = sum(f.size for f in pending)
        commit = part.listing.commit or part.listing.revision
        progress(
            f"{part.listing.repo}@{commit[:12]}: {len(pending)} of {len(part.files)} files to fetch "
            f"({_size(total)}) from {hub.where} into {part.directory}"
        )
        for file in pending:
            path = hub.fetch(part.listing, file, part.directory, show_progress)
            part.record["files"][file.name] = _verify(hub, part, file, path)
            _save_record(part)
        with contextlib.suppress(OSError):  # the folder of partial copies, once empty
            (part.directory / PARTIAL_DIR).rmdir()
    return total


def _verify(hub: Hub, part: Part, file: RemoteFile, path: Path) -> dict[str, Any]:
    """The record of ``path`` once its size and hash match ``file``; else it is removed, and one line."""
    size = path.stat().st_size
    digest = sha256_of(path) if size == file.size else ""
    checked, problem = "none", ""
    if size != file.size:
        problem = f"is {size:,} bytes, not the listed {file.size:,}"
    elif file.sha256:
        checked = "sha256"
        if digest != file.sha256:
            problem = f"has sha256 {digest[:16]}..., not the hub's {file.sha256[:16]}..."
    elif file.git_sha1:
        checked = "git-blob-sha1"
        if (blob := git_blob_sha1(path)) != file.git_sha1:
            problem = f"has git blob sha1 {blob[:12]}..., not the hub's {file.git_sha1[:12]}..."
    if problem:
        path.unlink(missing_ok=True)
        forget = getattr(hub, "forget", None)
        if forget is not None:
            forget(part.directory, file.name)
        raise HashMismatchError(
            f"{part.listing.repo}/{file.name} {problem}: tampered or corrupt, removed and not used "
            "(run again to download it anew)"
        )
    return {"bytes": size, "sha256": digest, "checked": checked, "mtime_ns": path.stat().st_mtime_ns}


def _verified(part: Part, file: RemoteFile) -> bool:
    """Whether ``file`` is on disk as the record says it was verified (no fetch, no rehash)."""
    known = part.record["files"].get(file.name)
    if not isinstance(known, dict) or known.get("bytes") != file.size:
        return False
    if file.sha256 and known.get("sha256") != file.sha256:
        return False
    try:
        stat = (part.directory / file.name).stat()
    except OSError:
        return False
    return stat.st_size == file.size and stat.st_mtime_ns == known.get("mtime_ns")


def _load_record(directory: Path, listing: Listing, where: str) -> dict[str, Any]:
    fresh = {"repo": listing.repo, "revision": listing.revision, "commit": listing.commit, "files": {}}
    try:
        record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {**fresh, "hub": where}
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return {**fresh, "hub": where}
    if record.get("repo") != listing.repo or record.get("commit") != listing.commit:
        return {**fresh, "hub": where}
    return {**record, "hub": where, "revision": listing.revision}


def _save_record(part: Part) -> None:
    from dfrt.fileio import atomic_write_text

    atomic_write_text(part.directory / RECORD, json.dumps(part.record, indent=1, sort_keys=True))


def _convert(result: PullResult, out: Path, quantize: str, progress: Callable[[str], None]) -> ExportResult:
    from dfrt import registry
    from dfrt.jsonio import read_json

    family = registry.family_of_checkpoint(read_json(result.checkpoint / "config.json", 1 << 20))
    if family != result.entry.family:
        raise PullError(
            f"{result.parts[0].listing.repo}: its config.json is a {family or 'unknown'} checkpoint, "
            f"not the {result.entry.family} family dfrt pulls it as"
        )
    progress(f"converting {result.entry.name} ({family}, {quantize}) into {out}")
    export = registry.export(family).export_checkpoint(
        result.checkpoint, out, scorer=result.scorer, quantize=quantize, progress=progress
    )
    record_provenance(result, out)
    return export


def _check_out(out: Path) -> None:
    from dfrt.fileio import check_output_dir, claimed_files

    check_output_dir(out)
    claimed_files(out)


def _require_export_side() -> None:
    """The export's libraries, before gigabytes are downloaded for nothing."""
    from dfrt._optional import require

    for module in ("torch", "onnx", "transformers"):
        require(module, "dfrt[export]")


def _default_cache() -> Path:
    from dfrt.paths import cache_dir

    return cache_dir() / "hub"


def _parameters(part: Part) -> int:
    if part.listing.parameters:
        return part.listing.parameters
    return sum(f.size for f in part.files if f.name.endswith(".safetensors")) // 2  # 16-bit weights


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("bytes", "sha256", "checked")}


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Third-party loggers at error level and Python warnings off, unless ``dfrt -v``."""
    from dfrt.runtime.native_log import verbose

    if verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in THIRD_PARTY]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
