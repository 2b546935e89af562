"""Open a bundle directory: parse ``dfrt.json`` and verify every file it lists (size and sha256).

A bundle is untrusted input; opening it is the trust boundary. Every JSON file goes through the bounded
reader (:mod:`dfrt.jsonio`), the manifest's sizes are capped (:mod:`dfrt.manifest`), the question tokenizer
must be the plain BERT WordPiece structure dfrt writes (:mod:`dfrt.runtime.question_tokenizer`), and every
file a graph can load (its ONNX external data, found by walking the protobuf without importing onnx) must be
listed, and so hashed, in the manifest: nothing reaches onnxruntime or TensorRT unverified.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from dfrt.errors import ConfigError
from dfrt.fileio import atomic_write_text, member_path, sha256_file
from dfrt.jsonio import read_json
from dfrt.manifest import MANIFEST_NAME, MAX_DATA_BYTES, MAX_MANIFEST_BYTES, Manifest
from dfrt.runtime.question_tokenizer import QuestionTokenizer
from dfrt.runtime.text_tokenizer import PromptTokenizer

log = logging.getLogger(__name__)

STAMP_NAME = ".verified.json"
MAX_STAMP_BYTES = 1 << 20  # about 100 bytes a file


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
        data = read_json(manifest_path, MAX_MANIFEST_BYTES, "dfrt manifest")
        manifest = Manifest.from_data(data, str(manifest_path))
        bundle = cls(root, manifest)
        bundle._check_listing()
        if verify:
            bundle.verify()
        bundle._check_contents()
        return bundle

    @property
    def has_question_tokenizer(self) -> bool:
        """DynFocus bundles carry the Q-Former's question tokenizer; other families the LLM's own."""
        return self.manifest.family == "dynfocus"

    @cached_property
    def prompt_tokenizer(self) -> PromptTokenizer:
        """The LLM's own ``tokenizer.json`` (families other than DynFocus), checked; built once."""
        if self.has_question_tokenizer:
            raise ConfigError(f"{self.root}: a DynFocus bundle carries no LLM tokenizer")
        return PromptTokenizer(self.path(self.manifest.tokenizer))

    @cached_property
    def question_tokenizer(self) -> QuestionTokenizer:
        """The question tokenizer, checked against the config's vocabulary and length bounds; built once."""
        q = self.manifest.config.qformer
        return QuestionTokenizer(self.path(self.manifest.tokenizer), q.vocab_size, q.max_question_tokens)

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
        """The last successful check, or ``None``: a missing, damaged or huge stamp only means hashing."""
        path = self.root / STAMP_NAME
        if not path.is_file() or path.is_symlink():
            return None
        try:
            return read_json(path, MAX_STAMP_BYTES, "verification stamp")
        except ConfigError as e:
            log.debug("ignoring the verification stamp: %s", e)
            return None

    def _check_listing(self) -> None:
        """Graphs and the tokenizer must be files the manifest lists (and so hashes)."""
        named = [self.manifest.tokenizer] + ([self.llm_file] if self.llm_file else [])
        if self.manifest.scorer is not None:
            named.append(self.manifest.scorer.tokenizer)
        for graph in self.manifest.graphs.values():
            named += [graph.file, *graph.variants.values()] + ([graph.data_file] if graph.data_file else [])
        for name in named:
            self.path(name)
            if name not in self.manifest.files:
                raise ConfigError(f"{self.root}: {name} is used but not listed with a sha256 in the manifest")

    def _check_contents(self) -> None:
        """What the listed files say: the tokenizer's structure (then built, so ``tokenizers`` agrees) and the
        files each ONNX graph will load. Absent files are left to :meth:`verify`."""
        if self.path(self.manifest.tokenizer).is_file():
            # built, and so checked, once: the pipeline reuses it
            if self.has_question_tokenizer:
                self.question_tokenizer  # noqa: B018
            else:
                self.prompt_tokenizer  # noqa: B018
        for graph in self.manifest.graphs.values():
            for name in dict.fromkeys([graph.file, *graph.variants.values()]):
                path = self.path(name)
                if path.is_file():
                    self._check_external_data(path, external_data(path))

    def _check_external_data(self, graph: Path, references: list[tuple[str, int, int | None]]) -> None:
        for location, offset, length in references:
            try:
                path = self.path(location)
            except ConfigError:
                raise ConfigError(f"{graph}: loads external data from an unsafe path {location!r}") from None
            entry = self.manifest.files.get(location)
            if entry is None:
                raise ConfigError(
                    f"{graph}: loads {location!r}, which the manifest does not list with a sha256 (refused)"
                )
            end = offset + (length or 0)
            if entry.bytes > MAX_DATA_BYTES or end > entry.bytes:
                raise ConfigError(
                    f"{graph}: external data {location!r}[{offset}:{end}] beyond its listed size"
                )
            log.debug("%s loads %s (listed, hashed)", graph.name, path.name)


# ONNX protobuf (onnx.proto) fields on every path to a TensorProto, the only message that names external data
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "training": {1: "graph", 2: "graph"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_EXTERNAL_KEYS = ("location", "offset", "length", "checksum")
MAX_ONNX_NESTING = 64  # subgraphs inside subgraphs (If/Loop bodies); real graphs: 1 or 2
MAX_ONNX_FIELDS = 2_000_000  # protobuf fields walked; the paper's vision graph has about 50,000


def external_data(path: Path) -> list[tuple[str, int, int | None]]:
    """Every ``(location, offset, length)`` of external data an ONNX file references, from its protobuf wire
    format (no onnx import; large tensors are skipped by length, never read). Malformed: :class:`ConfigError`.
    """
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            return []
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return _walk(data)
            except (IndexError, ValueError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}: not a valid ONNX file ({e})") from e


def _walk(data: mmap.mmap) -> list[tuple[str, int, int | None]]:
    found: list[tuple[str, int, int | None]] = []
    stack = [("model", 0, len(data), 0)]
    budget = MAX_ONNX_FIELDS
    while stack:
        kind, pos, end, depth = stack.pop()
        if depth > MAX_ONNX_NESTING:
            raise ValueError(f"messages nested deeper than {MAX_ONNX_NESTING}")
        entries: list[tuple[str, str]] = []
        external = False
        children = _CHILDREN.get(kind, {})
        while pos < end:
            budget -= 1
            if budget < 0:
                raise ValueError(f"more than {MAX_ONNX_FIELDS} protobuf fields")
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ValueError("field number 0")
            if wire == 0:
                value, pos = _varint(data, pos)
                if kind == "tensor" and number == _TENSOR_DATA_LOCATION:
                    external = value == _EXTERNAL
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                if pos + size > end:
                    raise ValueError("a field runs past its message")
                if kind == "tensor" and number == _TENSOR_EXTERNAL_DATA:
                    entries.append(_entry(data, pos, pos + size))
                elif number in children:
                    stack.append((children[number], pos, pos + size, depth + 1))
                pos += size
            else:
                raise ValueError(f"wire type {wire}")  # groups: never written by ONNX
        if pos != end:
            raise ValueError("a field runs past its message")
        if entries or external:
            found.append(_reference(entries))
    return found


def _reference(entries: list[tuple[str, str]]) -> tuple[str, int, int | None]:
    """onnxruntime's reading of a tensor's external_data entries (the last of a key wins)."""
    info: dict[str, str] = {}
    for key, value in entries:
        if key not in _EXTERNAL_KEYS:
            raise ValueError(f"unknown external data key {key[:40]!r}")
        info[key] = value
    location = info.get("location")
    if not location:
        raise ValueError("external data without a location")
    numbers = {}
    for key in ("offset", "length"):
        text = info.get(key)
        if text is not None and not (text.isascii() and text.isdigit() and len(text) <= 19):
            raise ValueError(f"external data {key} {text[:40]!r}")
        numbers[key] = None if text is None else int(text)
    return location, numbers["offset"] or 0, numbers["length"]


def _entry(data: mmap.mmap, pos: int, end: int) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    fields = {1: b"", 2: b""}
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire != 2 or number not in fields:
            raise ValueError("malformed external data entry")
        size, pos = _varint(data, pos)
        if pos + size > end or size > 4096:
            raise ValueError("malformed external data entry")
        fields[number] = data[pos : pos + size]
        pos += size
    return fields[1].decode("utf-8"), fields[2].decode("utf-8")


def _varint(data: mmap.mmap, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")
