"""Files that are never half-written, outputs that never replace what is not ours, and hashes. stdlib only.

Every file dfrt writes goes to a temporary file beside its target, then is renamed over it. A path a user
names for an output (``--timeline``, ``--plot``, ``--record``, ``--out``, ...) is first checked by
:func:`check_output_path` (a file) or :func:`check_output_dir` (a directory): dfrt replaces only regular
files, never a symbolic link, device, FIFO or socket, never an input, never a file inside a bundle, and it
never creates missing parent directories. Staging folders and temporary files carry the writer's pid, so
what a killed run left behind is recognised and removed by the next run (:func:`remove_dead_leftovers`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dfrt.errors import ConfigError

BUNDLE_MARKER = "dfrt.json"  # = dfrt.manifest.MANIFEST_NAME: a directory holding one is a bundle
COMMIT_JOURNAL = ".dfrt-commit.json"  # while a bundle commits: every file it may hold, old and new
BOOKKEEPING = frozenset({BUNDLE_MARKER, ".verified.json", COMMIT_JOURNAL})  # dfrt's own, in a bundle
# what dfrt leaves in a directory while it writes; <pid> is the writer's process id
LEFTOVER_PATTERNS = (
    re.compile(r"\.staging-(?:(?:int8|fp16)-)?(?P<pid>\d+)(?:-[a-z0-9_]{8})?"),  # export, build
    re.compile(r"\.demo-(?:staging|retired)-(?P<pid>\d+)"),  # the demo bundle in the cache
    re.compile(r"\.llm-(?:f16|q8_0|q4_k_m)-(?P<pid>\d+)\.gguf\.partial"),  # export's converted LLM
    re.compile(r"\..+\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(?:\..*)?"),  # atomic_path's temporary files
)


class UnsafeOutputError(ConfigError, OSError):
    """An output path dfrt refuses to write (also an ``OSError``, so best-effort writers may skip it)."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_output_path(
    path: str | Path,
    *,
    what: str = "output",
    inputs: Iterable[str | Path] = (),
    protected_dirs: Iterable[str | Path] = (),
) -> Path:
    """``path`` if dfrt may write a file there, else one-line :class:`UnsafeOutputError`.

    Refused: an existing non-regular file (directory, symbolic link even to a regular file, device, FIFO,
    socket), a missing parent directory, the same file as one of ``inputs``, anything inside one of
    ``protected_dirs`` or inside a bundle (a directory holding ``dfrt.json``). ``what`` names the option.
    """
    path = Path(path)
    label = f"{what} {path}"
    if path.name in ("", ".", ".."):
        raise UnsafeOutputError(f"{label}: give a file name")
    _refuse_non_regular(path, label)
    parent = path.parent
    if not parent.is_dir():
        raise UnsafeOutputError(f"{label}: directory {parent} does not exist (dfrt does not create it)")
    if path.exists():
        for given in inputs:
            if _same_file(path, Path(given)):
                raise UnsafeOutputError(f"{label} is the input {given}: refusing to replace it")
    where = parent.resolve()
    for directory in protected_dirs:
        if where.is_relative_to(Path(directory).resolve()):
            raise UnsafeOutputError(f"{label} is inside the bundle {directory}: write it elsewhere")
    if (where / BUNDLE_MARKER).exists():
        raise UnsafeOutputError(f"{label} is inside the bundle {parent}: write it elsewhere")
    return path


def check_output_dir(path: str | Path, *, what: str = "--out", inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` if dfrt may create or fill the directory: an existing real directory, or a new one whose
    parent exists; never a symbolic link, a file or one of ``inputs``. One-line :class:`UnsafeOutputError`."""
    path = Path(path)
    label = f"{what} {path}"
    mode = _lstat_mode(path)
    if mode is not None and stat.S_ISLNK(mode):
        raise UnsafeOutputError(f"{label} is a symbolic link: give the real directory")
    if mode is not None and not stat.S_ISDIR(mode):
        raise UnsafeOutputError(f"{label} exists and is not a directory")
    if mode is None and not path.parent.is_dir():
        raise UnsafeOutputError(f"{label}: directory {path.parent} does not exist (dfrt does not create it)")
    for given in inputs:
        if mode is not None and _same_file(path, Path(given)):
            raise UnsafeOutputError(f"{label} is the input {given}: refusing to write into it")
    return path


def _refuse_non_regular(path: Path, label: str) -> None:
    mode = _lstat_mode(path)
    if mode is None or stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        raise UnsafeOutputError(f"{label} is a symbolic link: dfrt replaces only regular files")
    if stat.S_ISDIR(mode):
        raise UnsafeOutputError(f"{label} is a directory: give a file name")
    raise UnsafeOutputError(f"{label} is a {_kind(mode)}, not a regular file: dfrt does not write to it")


def _lstat_mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UnsafeOutputError(f"{path}: cannot be examined ({e.strerror})") from e


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed over ``path`` (readers see
    the old file or the new one, never half of one), on failure it is removed.

    ``path``'s directory must exist; an existing ``path`` must be a regular file (a symbolic link, device or
    FIFO is never followed nor replaced: :class:`UnsafeOutputError`). Temporary files of ``path`` left by a
    killed process are removed first.
    """
    path = Path(path)
    _refuse_non_regular(path, str(path))
    if not path.parent.is_dir():
        raise UnsafeOutputError(f"{path}: directory {path.parent} does not exist")
    _remove_dead_temporaries(path)
    # the real suffix last: writers such as OpenCV pick the container from it
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        make_readable(tmp)  # mkstemp makes 0600
        _refuse_non_regular(path, str(path))  # again: it may have changed while we wrote
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (POSIX ``flock``): one process at a time."""
    import fcntl

    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def staging_dir(directory: Path, kind: str = "") -> Path:
    """A new empty folder ``<directory>/.staging-[<kind>-]<pid>-<random>`` (see LEFTOVER_PATTERNS)."""
    prefix = f".staging-{kind}-" if kind else ".staging-"
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=directory))


def leftover_pid(name: str) -> int | None:
    """The writer's pid if ``name`` is exactly a staging folder or temporary file dfrt makes, else None."""
    for pattern in LEFTOVER_PATTERNS:
        if match := pattern.fullmatch(name):
            return int(match["pid"])
    return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (ours or another user's); pid 0 and below never count as dead."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def remove_dead_leftovers(directory: Path) -> list[str]:
    """Remove what killed dfrt runs left in ``directory``: entries named exactly as dfrt's staging folders
    or temporary files whose writer process no longer exists. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        pid = leftover_pid(entry.name)
        if pid is None or pid_alive(pid):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # another run cleaned it first
            pass
        removed.append(entry.name)
    return removed


def _remove_dead_temporaries(path: Path) -> None:
    """Temporary files of ``path`` itself (``.<name>.<pid>.<random>.tmp...``) left by dead processes."""
    prefix = f".{path.name}."
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        rest = entry.name[len(prefix) :]
        pid, _, tail = rest.partition(".")
        if (
            pid.isdigit()
            and re.fullmatch(r"[a-z0-9_]{8}\.tmp(?:\..*)?", tail)
            and not pid_alive(int(pid))
            and entry.is_file(follow_symlinks=False)
        ):
            Path(entry.path).unlink(missing_ok=True)


# name -> the (sha256, bytes) a manifest or commit journal lists for it (two while a commit is under way)
Claims = dict[str, set[tuple[str, int]]]


def claimed_files(directory: Path, what: str = "--out") -> Claims:
    """The files a bundle directory's ``dfrt.json`` (and a commit journal a killed commit left) list: the
    only files dfrt may replace or delete there, once :func:`owned_files` has matched their bytes.

    What killed runs left is removed first (:func:`remove_dead_leftovers`). One-line
    :class:`UnsafeOutputError` for an invalid or foreign ``dfrt.json`` (never trusted) or a directory that
    holds other things and no bundle. A missing directory claims nothing.
    """
    if not directory.is_dir():
        return {}
    remove_dead_leftovers(directory)
    claims: Claims = {}
    manifest, journal = directory / BUNDLE_MARKER, directory / COMMIT_JOURNAL
    for path in (manifest, journal):
        if _lstat_mode(path) is not None:
            for name, entry in _listed_files(path, directory, what).items():
                claims.setdefault(name, set()).add(entry)
    if _lstat_mode(manifest) is None and _lstat_mode(journal) is None:
        mine = os.getpid()  # this process's own staging (a converted LLM, say) is no stranger
        others = sorted(
            e.name
            for e in os.scandir(directory)
            if e.name not in BOOKKEEPING and leftover_pid(e.name) != mine
        )
        busy = [n for n in others if leftover_pid(n) is not None]
        if others and len(busy) == len(others):
            raise UnsafeOutputError(
                f"{what} {directory}: another dfrt process (pid {leftover_pid(busy[0])}) is writing into it"
            )
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise UnsafeOutputError(
                f"{what} {directory} is not empty and holds no dfrt bundle ({shown}): "
                "refusing to write into it; give a new or empty directory"
            )
    return claims


def _listed_files(path: Path, directory: Path, what: str) -> dict[str, tuple[str, int]]:
    """The ``files`` of a manifest (fully validated) or a commit journal; else ``directory`` is refused."""
    from dfrt.manifest import MAX_MANIFEST_BYTES, Manifest

    refuse = f"{what} {directory}: {path.name} is not a dfrt manifest"
    mode = _lstat_mode(path)
    if mode is None or not stat.S_ISREG(mode):
        raise UnsafeOutputError(f"{refuse} (not a regular file): refusing to write into the directory")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UnsafeOutputError(f"{refuse} (too large): refusing to write into the directory")
    try:
        text = path.read_bytes().decode("utf-8")
        if path.name == BUNDLE_MARKER:
            files = {n: (e.sha256, e.bytes) for n, e in Manifest.from_json(text, path.name).files.items()}
        else:
            files = _journal_entries(text)
        for name in files:
            _plain_name(name)
    except (OSError, UnicodeDecodeError, ValueError, ConfigError) as e:
        reason = " ".join(str(e).split())
        raise UnsafeOutputError(f"{refuse} ({reason}): refusing to write into the directory") from e
    return files


def _journal_entries(text: str) -> dict[str, tuple[str, int]]:
    files = json.loads(text)["files"]
    entries = {}
    for name, entry in files.items():
        digest, size = entry["sha256"], entry["bytes"]
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) and isinstance(size, int)):
            raise ValueError(f"bad entry for {name!r}")
        entries[str(name)] = (digest, size)
    return entries


def _plain_name(name: str) -> None:
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name in BOOKKEEPING:
        raise ValueError(f"unsafe file name {name!r}")


def owned_files(directory: Path, claims: Claims) -> dict[str, tuple[str, int]]:
    """The claimed files dfrt wrote: regular files (no link) whose size and sha256 match a claim."""
    owned = {}
    for name, entries in claims.items():
        path = directory / name
        try:
            info = os.lstat(path)
        except OSError:
            continue
        sizes = {size for _, size in entries}
        if stat.S_ISREG(info.st_mode) and info.st_size in sizes:
            entry = (sha256_file(path), info.st_size)
            if entry in entries:
                owned[name] = entry
    return owned


def commit_bundle(
    directory: Path,
    staging: Path,
    manifest_text: str,
    listed: Mapping[str, tuple[str, int]],
    claims: Claims,
    retire_manifest: bool = True,
    moved: Iterable[str] | None = None,
) -> list[str]:
    """Move the listed files of ``staging`` into the bundle ``directory``, write its manifest last
    (atomically), then delete the files only the previous manifest listed. Returns the names deleted.

    ``listed``: every file of the new manifest; ``moved``: those in ``staging`` (default: every listed file
    found there), the others are in place already; ``claims``:
    what the previous one listed (:func:`claimed_files`). A file in the way that dfrt did not write
    (:func:`owned_files`) refuses the commit before anything moves. A journal of every file the bundle may
    hold is written first and removed last, so a commit killed midway leaves the next run knowing which
    files are dfrt's. ``retire_manifest``: remove the old manifest before moving (export: no manifest ever
    points at half-moved files).
    """
    owned = owned_files(directory, claims)
    moved = sorted(moved if moved is not None else (n for n in listed if (staging / n).is_file()))
    for name in moved:
        if _lstat_mode(directory / name) is not None and name not in owned:
            raise UnsafeOutputError(
                f"{directory / name} exists and dfrt did not write it (no matching sha256 in "
                f"{BUNDLE_MARKER}): refusing to replace it; move it away"
            )
    stale = sorted(set(owned) - set(listed))
    journal = {n: {"sha256": d, "bytes": b} for n, (d, b) in {**owned, **listed}.items()}
    atomic_write_text(directory / COMMIT_JOURNAL, json.dumps({"files": journal}, indent=1))
    if retire_manifest:
        (directory / BUNDLE_MARKER).unlink(missing_ok=True)
    for name in moved:
        os.replace(staging / name, directory / name)
    atomic_write_text(directory / BUNDLE_MARKER, manifest_text)
    for name in stale:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(directory / name).st_mode):
                (directory / name).unlink()
    (directory / COMMIT_JOURNAL).unlink(missing_ok=True)
    return stale


def member_path(root: Path, name: str) -> Path:
    """``root / name`` for a plain file name from a manifest; refuses anything that could leave ``root``."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    ):
        raise ConfigError(f"{root}: manifest names an unsafe file {name!r}")
    path = root / name
    if path.is_symlink():
        raise ConfigError(f"{root}: {name} is a symbolic link; bundle files must be regular files")
    return path


def make_readable(path: Path) -> None:
    """Give a file the permissions a plain ``open`` would (0666 less the umask)."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
