"""Open a bundle directory: parse ``dfrt.json`` and verify every file it lists (size and sha256)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfrt.errors import ConfigError
from dfrt.fileio import member_path, sha256_file
from dfrt.manifest import MANIFEST_NAME, Manifest


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
        manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
        bundle = cls(root, manifest)
        bundle._check_listing()
        if verify:
            bundle.verify()
        return bundle

    def path(self, name: str) -> Path:
        """A file of the bundle, by the plain name the manifest uses; never outside the bundle."""
        return member_path(self.root, name)

    def graph_path(self, graph: str) -> Path:
        try:
            return self.path(self.manifest.graphs[graph].file)
        except KeyError:
            raise ConfigError(f"{self.root}: bundle has no graph {graph!r}") from None

    @property
    def llm_file(self) -> str | None:
        """The GGUF inside the bundle, if it carries one."""
        llm = self.manifest.llm or {}
        return str(llm["file"]) if llm.get("file") else None

    def verify(self) -> None:
        """Every listed file exists with its recorded size and sha256; errors name the first bad file."""
        for name, entry in self.manifest.files.items():
            path = self.path(name)
            if not path.is_file():
                raise ConfigError(f"{path}: missing from the bundle")
            size = path.stat().st_size
            if size != entry.bytes:
                raise ConfigError(f"{path}: size {size} bytes, the manifest says {entry.bytes}: file damaged")
            if sha256_file(path) != entry.sha256:
                raise ConfigError(f"{path}: sha256 mismatch with the manifest: file modified or corrupted")

    def _check_listing(self) -> None:
        """Graphs and the tokenizer must be files the manifest lists (and so hashes)."""
        named = [self.manifest.tokenizer] + ([self.llm_file] if self.llm_file else [])
        for graph in self.manifest.graphs.values():
            named += [graph.file] + ([graph.data_file] if graph.data_file else [])
        for name in named:
            self.path(name)
            if name not in self.manifest.files:
                raise ConfigError(f"{self.root}: {name} is used but not listed with a sha256 in the manifest")
