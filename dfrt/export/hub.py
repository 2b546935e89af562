"""Where ``dfrt pull`` gets model files: the Hugging Face hub, or a folder laid out like a mirror of it.

Both sides answer the same two questions, so the pull (and its tests, which use a folder: no network) does not
care which it talks to:

- :meth:`Hub.listing` ``(repo, revision)``: the commit and every file's name, size and the hashes the hub
  knows (an LFS file's sha256; a small file's git blob sha1), plus the weights' parameter count (disk check);
- :meth:`Hub.fetch` ``(repo, commit, file, directory)``: the file complete at ``directory/<name>``, resuming a
  partial download, never leaving a partial file under the final name.

:class:`HfHub` is huggingface_hub's ``HfApi.model_info(files_metadata=True)`` and ``hf_hub_download`` (which
resumes through its ``.incomplete`` files). :class:`FolderHub` reads ``HUB_FOLDER/<org>/<repo>/<files>``: the
expected hashes come from ``.dfrt-hub.json`` beside the files (:func:`write_mirror_manifest`), else from the
metadata ``hf download --local-dir`` leaves (``.cache/huggingface/download/<name>.metadata``: the LFS sha256),
else they are computed from the mirror's files themselves (nothing to check a copy against). stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from dfrt.errors import ConfigError, DfrtError

log = logging.getLogger(__name__)

MIRROR_MANIFEST = ".dfrt-hub.json"
PARTIAL_DIR = ".partial"  # a folder copy in progress: <directory>/.partial/<name>.part, renamed when complete
HF_METADATA = Path(".cache") / "huggingface" / "download"
SHA256 = re.compile(r"[0-9a-f]{64}")
SHA1 = re.compile(r"[0-9a-f]{40}")
CHUNK = 1 << 22
MAX_HEADER = 100 << 20  # a safetensors header larger than this is not one


class PullError(DfrtError):
    """A download failed (offline, unknown repository, interrupted) or a file is not what the hub listed."""


class HashMismatchError(PullError):
    """A downloaded file's sha256 (or git blob sha1) differs from the hub's: it was removed, never used."""


class NotEnoughSpaceError(PullError):
    """The downloads and the converted bundle would not fit on the disk: refused before any download."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path in the repository (dfrt pulls top-level files only)
    size: int
    sha256: str | None = None  # the hub's LFS sha256 (large files)
    git_sha1: str | None = None  # the git blob id (small files kept in git)


@dataclass(frozen=True)
class Listing:
    repo: str
    revision: str  # what was asked for
    commit: str | None  # what it resolved to (None: a folder without a recorded commit)
    files: dict[str, RemoteFile]
    parameters: int | None = None  # of the safetensors weights, when the hub says (else estimated from bytes)


Bar = Callable[[int], None]  # bytes just written


class Hub(Protocol):
    where: str  # for messages and records: the endpoint or the folder

    def listing(self, repo: str, revision: str) -> Listing: ...

    def fetch(self, listing: Listing, file: RemoteFile, directory: Path, show_progress: bool) -> Path: ...


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


class HfHub:
    """The Hugging Face hub through huggingface_hub (the ``pull`` extra), imported on first use."""

    def __init__(self) -> None:
        from dfrt._optional import require

        self.hf = require("huggingface_hub", "dfrt[pull]")
        self.utils = require("huggingface_hub.utils", "dfrt[pull]")
        constants = require("huggingface_hub.constants", "dfrt[pull]")
        self.where = str(getattr(constants, "ENDPOINT", "https://huggingface.co"))

    def listing(self, repo: str, revision: str) -> Listing:
        try:
            info = self.hf.HfApi().model_info(repo, revision=revision, files_metadata=True)
        except Exception as e:  # huggingface_hub raises HTTP, offline and OS errors of many types
            raise PullError(
                f"cannot list {repo}@{revision} on {self.where} ({type(e).__name__}: {_one_line(e)}); "
                "are you online? (or pull from a copied mirror with --from HUB_FOLDER)"
            ) from e
        files = {}
        for sibling in info.siblings or ():
            lfs = getattr(sibling, "lfs", None)
            sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
            blob = getattr(sibling, "blob_id", None)
            size = sibling.size if sibling.size is not None else getattr(lfs, "size", None)
            if size is None:
                continue
            files[sibling.rfilename] = RemoteFile(
                sibling.rfilename,
                int(size),
                sha256 if isinstance(sha256, str) and SHA256.fullmatch(sha256) else None,
                None if lfs is not None or not (isinstance(blob, str) and SHA1.fullmatch(blob)) else blob,
            )
        safetensors = getattr(info, "safetensors", None)
        parameters = getattr(safetensors, "total", None)
        return Listing(repo, revision, info.sha, files, int(parameters) if parameters else None)

    def fetch(self, listing: Listing, file: RemoteFile, directory: Path, show_progress: bool) -> Path:
        utils = self.utils
        hidden = not show_progress and not utils.are_progress_bars_disabled()
        if hidden:
            utils.disable_progress_bars()
        try:
            path = self.hf.hf_hub_download(
                listing.repo,
                file.name,
                revision=listing.commit or listing.revision,
                local_dir=directory,
            )
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise PullError(
                f"cannot download {listing.repo}/{file.name} ({type(e).__name__}: {_one_line(e)}); "
                "run the same command again to resume"
            ) from e
        finally:
            if hidden:
                utils.enable_progress_bars()
        return Path(path)

    def forget(self, directory: Path, name: str) -> None:
        """Drop huggingface_hub's record of ``name`` (after a hash mismatch) so it downloads it again."""
        (directory / HF_METADATA / f"{name}.metadata").unlink(missing_ok=True)


class FolderHub:
    """A mirror on disk: ``root/<org>/<repo>/<files>`` (a USB disk, a share, what ``hf download`` wrote)."""

    def __init__(self, root: Path, chunk: int = CHUNK) -> None:
        if not Path(root).is_dir():
            raise ConfigError(f"--from {root}: not a directory")
        self.root = Path(root)
        self.where = str(self.root)
        self.chunk = chunk

    def repo_dir(self, repo: str) -> Path:
        parts = repo.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") for p in parts):
            raise ConfigError(f"{repo!r} is not an owner/name repository id")
        return self.root / parts[0] / parts[1]

    def listing(self, repo: str, revision: str) -> Listing:
        folder = self.repo_dir(repo)
        if not folder.is_dir():
            raise PullError(f"{repo} is not in the mirror {self.root} (expected the folder {folder})")
        manifest = _read_mirror_manifest(folder)
        commit = manifest.get("commit") if manifest else None
        files = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            known = (manifest or {}).get("files", {}).get(path.name)
            if isinstance(known, dict):
                sha256 = known.get("sha256") if SHA256.fullmatch(str(known.get("sha256"))) else None
                git_sha1 = known.get("git_sha1") if SHA1.fullmatch(str(known.get("git_sha1"))) else None
                size = int(known.get("bytes", path.stat().st_size))
                files[path.name] = RemoteFile(path.name, size, sha256, git_sha1)
                continue
            hf_commit, etag = _hf_download_metadata(folder, path.name)
            commit = commit or hf_commit
            files[path.name] = RemoteFile(path.name, path.stat().st_size, etag)
        weights = [folder / n for n in files if n.endswith(".safetensors")]
        commit = commit if isinstance(commit, str) else None
        return Listing(repo, revision, commit, files, _parameters(weights))

    def read(self, source: BinaryIO, size: int) -> bytes:
        """The next block of a file being copied (tests interrupt copies here)."""
        return source.read(size)

    def fetch(self, listing: Listing, file: RemoteFile, directory: Path, show_progress: bool) -> Path:
        source = self.repo_dir(listing.repo) / file.name
        target = directory / file.name
        if target.is_file() and target.stat().st_size == file.size:
            return target  # complete from an earlier run (the pull checks its hash)
        partial = directory / PARTIAL_DIR / f"{file.name}.part"
        partial.parent.mkdir(parents=True, exist_ok=True)
        done = partial.stat().st_size if partial.is_file() else 0
        if done > file.size:
            done = 0
        try:
            with open(source, "rb") as src:
                if (size := os.fstat(src.fileno()).st_size) != file.size:
                    raise HashMismatchError(
                        f"{listing.repo}/{file.name} is {size:,} bytes in {self.root}, not the {file.size:,} "
                        "its mirror lists: changed after it was hashed, not used (copy the mirror again)"
                    )
                self._copy(src, partial, done, file, show_progress)
        except OSError as e:
            raise PullError(f"cannot copy {source} ({_one_line(e)}); run the command again to resume") from e
        os.replace(partial, target)
        return target

    def _copy(self, src: BinaryIO, partial: Path, done: int, file: RemoteFile, show_progress: bool) -> None:
        """``src`` from byte ``done`` appended to ``partial`` (which holds the first ``done``), synced."""
        with open(partial, "r+b" if done else "wb") as dst:
            dst.truncate(done)
            dst.seek(done)
            src.seek(done)
            remaining = file.size - done
            with _bar(file.name, file.size, done, show_progress) as advance:
                while remaining > 0:
                    block = self.read(src, min(self.chunk, remaining))
                    if not block:
                        raise PullError(f"{file.name} ended before the {file.size:,} bytes its mirror lists")
                    dst.write(block)
                    remaining -= len(block)
                    advance(len(block))
            dst.flush()
            os.fsync(dst.fileno())


def write_mirror_manifest(folder: Path, commit: str | None = None) -> Path:
    """``folder/.dfrt-hub.json``: every file's size and sha256 (what a copied mirror is checked against)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    path = folder / MIRROR_MANIFEST
    path.write_text(json.dumps({"commit": commit, "files": files}, indent=1), encoding="utf-8")
    return path


def sha256_of(path: Path, advance: Bar = lambda n: None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            advance(len(block))
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of ``path``'s bytes (what the hub lists for a small, non-LFS file)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _read_mirror_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MIRROR_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PullError(f"{path}: not a mirror manifest ({_one_line(e)})") from e
    if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
        raise PullError(f"{path}: not a mirror manifest (expected {{'commit', 'files': {{name: ...}}}})")
    return data


def _hf_download_metadata(folder: Path, name: str) -> tuple[str | None, str | None]:
    """The commit and, for an LFS file, the sha256 ``hf download --local-dir`` recorded for ``name``."""
    path = folder / HF_METADATA / f"{name}.metadata"
    try:
        commit, etag = path.read_text(encoding="utf-8").splitlines()[:2]
    except (OSError, UnicodeDecodeError, ValueError):
        return None, None
    commit, etag = commit.strip(), etag.strip().strip('"')
    return (commit if SHA1.fullmatch(commit) else None), (etag if SHA256.fullmatch(etag) else None)


def _parameters(weights: Iterable[Path]) -> int | None:
    """The parameter count of safetensors files, from their headers (no tensor is read)."""
    total = 0
    try:
        for path in weights:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > MAX_HEADER:
                    return None
                header = json.loads(f.read(length))
            for key, tensor in header.items():
                if key != "__metadata__":
                    count = 1
                    for dim in tensor["shape"]:
                        count *= int(dim)
                    total += count
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total or None


class _bar:
    """A tqdm byte bar on stderr (when tqdm is installed and progress is shown), as a context manager."""

    def __init__(self, name: str, total: int, initial: int, show: bool) -> None:
        self.bar = None
        if show:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total, initial=initial, unit="B", unit_scale=True, desc=name, file=sys.stderr,
                    leave=False, dynamic_ncols=True,
                )  # fmt: skip

    def __enter__(self) -> Bar:
        return self.bar.update if self.bar is not None else (lambda n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
