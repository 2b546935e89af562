"""Open a bundle directory: parse ``dfrt.json`` and verify every file it lists (size and sha256)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from dfrt.errors import ConfigError
from dfrt.fileio import atomic_write_text, member_path, sha256_file
from dfrt.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest

STAMP_NAME = ".verified.json"


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> Bundle:
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not root.is_dir():
            raise ConfigError(f"bundle not found: {root} is not a directory")
        if not manifest_path.is_file():
            raise ConfigError(f"{root} is not a dfrt bundle: {MANIFEST_NAME} is missing (run `dfrt export`)")
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ConfigError(f"{manifest_path}: {manifest_path.stat().st_size} bytes, not a dfrt manifest")
        try:
            text = manifest_path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{manifest_path}: unreadable ({e})") from e
        manifest = Manifest.from_json(text, str(manifest_path))
        bundle = cls(root, manifest)
        bundle._check_listing()
        if verify:
            bundle.verify()
        return bundle

    def path(self, name: str) -> Path:
        """A file of the bundle, by the plain name the manifest uses; never outside the bundle."""
        return member_path(self.root, name)

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        try:
            return self.path(self.manifest.graphs[graph].file_for(precision))
        except KeyError:
            raise ConfigError(f"{self.root}: bundle has no graph {graph!r}") from None

    @property
    def precisions(self) -> set[str]:
        """Precisions the bundle has ONNX graphs for (``fp32`` always)."""
        return {"fp32"} | {p for g in self.manifest.graphs.values() for p in g.variants}

    @property
    def llm_file(self) -> str | None:
        """The GGUF inside the bundle, if it carries one."""
        llm = self.manifest.llm or {}
        return str(llm["file"]) if llm.get("file") else None

    def verify(self, force: bool = False) -> None:
        """Every listed file exists with its recorded size and sha256; errors name the first bad file.

        Hashing gigabytes on every run is slow, so a successful check leaves a stamp (``.verified.json``:
        each file's size, mtime and inode, and the manifest's digest); while nothing changed, later opens
        skip the hashing (``force`` hashes anyway). Writing a file changes its mtime, so an edited or
        re-copied file is hashed again.
        """
        signatures = {}
        for name, entry in self.manifest.files.items():
            path = self.path(name)
            if not path.is_file():
                raise ConfigError(f"{path}: missing from the bundle")
            stat = path.stat()
            if stat.st_size != entry.bytes:
                raise ConfigError(
                    f"{path}: size {stat.st_size} bytes, the manifest says {entry.bytes}: file damaged"
                )
            signatures[name] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        stamp = {"manifest": sha256_file(self.root / MANIFEST_NAME), "files": signatures}
        if not force and self._read_stamp() == stamp:
            return
        for name, entry in self.manifest.files.items():
            if sha256_file(self.path(name)) != entry.sha256:
                raise ConfigError(
                    f"{self.path(name)}: sha256 mismatch with the manifest: file modified or corrupted"
                )
        with contextlib.suppress(OSError):  # a read-only bundle is simply verified again next time
            atomic_write_text(self.root / STAMP_NAME, json.dumps(stamp))

    def _read_stamp(self) -> object:
        try:
            return json.loads((self.root / STAMP_NAME).read_text())
        except (OSError, ValueError):
            return None

    def _check_listing(self) -> None:
        """Graphs and the tokenizer must be files the manifest lists (and so hashes)."""
        named = [self.manifest.tokenizer] + ([self.llm_file] if self.llm_file else [])
        for graph in self.manifest.graphs.values():
            named += [graph.file, *graph.variants.values()] + ([graph.data_file] if graph.data_file else [])
        for name in named:
            self.path(name)
            if name not in self.manifest.files:
                raise ConfigError(f"{self.root}: {name} is used but not listed with a sha256 in the manifest")
