"""The per-GPU TensorRT engine cache inside a bundle: ``engines/<key>/<graph>.engine`` + ``meta.json``.

The key hashes everything an engine depends on: the ONNX file's sha256, the precision, the graph contract
(inputs and optimisation-profile ranges), the GPU name and compute capability, and the TensorRT version.
An engine for another GPU or TensorRT version simply has another key, so it is never loaded; an engine whose
bytes no longer match its ``meta.json`` is treated as missing and rebuilt. Engines and metadata are written
atomically, metadata last: a build killed midway leaves nothing that passes as valid.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from dfrt import __version__
from dfrt.contracts import GraphSpec
from dfrt.fileio import atomic_write_bytes, atomic_write_text, file_lock, sha256_file
from dfrt.runtime.bundle import Bundle

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"


@dataclass(frozen=True)
class Target:
    """What an engine is built for."""

    gpu: str
    compute_capability: str  # "8.7" for Orin, "9.0" for H100
    tensorrt: str  # TensorRT version, e.g. "10.3.0"


@dataclass(frozen=True)
class EngineRecord:
    """``meta.json`` of one engine."""

    key: str
    graph: str
    precision: str
    onnx_sha256: str
    ranges: dict[str, list[int]]
    gpu: str
    compute_capability: str
    tensorrt: str
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    built_at: str
    dfrt_version: str

    @property
    def target(self) -> Target:
        return Target(self.gpu, self.compute_capability, self.tensorrt)


def engine_key(onnx_sha256: str, precision: str, spec: GraphSpec, target: Target) -> str:
    payload = {
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "inputs": [t.to_dict() for t in spec.inputs],
        "ranges": {axis: list(r) for axis, r in spec.ranges},
        "target": asdict(target),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class EngineCache:
    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.root = bundle.root / ENGINES_DIR

    def key(self, graph: str, precision: str, target: Target) -> str:
        entry = self.bundle.manifest.graphs[graph]
        onnx_sha = self.bundle.manifest.files[entry.file_for(precision)].sha256
        return engine_key(onnx_sha, precision, entry.spec, target)

    def lookup(self, graph: str, precision: str, target: Target) -> Path | None:
        """The engine for this graph, precision and target, if one exists and is intact."""
        key = self.key(graph, precision, target)
        meta = self.root / key / "meta.json"
        if not meta.is_file():
            return None
        with file_lock(meta):  # not while another process is replacing the engine
            record = self._read_record(meta)
            if record is None:
                return None
            return self._validated(
                record, (key, graph, precision, target), self.root / key / record.engine_file
            )

    @staticmethod
    def _validated(record: EngineRecord, expected: tuple[str, str, str, Target], engine: Path) -> Path | None:
        key, graph, _, _ = expected
        if (record.key, record.graph, record.precision, record.target) != expected:
            log.warning("engine %s: metadata does not match its key; rebuilding", key)
            return None
        if (
            not engine.is_file()
            or engine.stat().st_size != record.engine_bytes
            or (sha256_file(engine) != record.engine_sha256)
        ):
            log.warning("engine %s for %s is damaged; rebuilding", key, graph)
            return None
        return engine

    def store(self, graph: str, precision: str, target: Target, plan: bytes) -> Path:
        key = self.key(graph, precision, target)
        directory = self.root / key
        engine = directory / f"{graph}.{precision}.engine"
        with file_lock(directory / "meta.json"):  # engine and metadata change together, one process at a time
            atomic_write_bytes(engine, plan)
            self._write_record(directory, key, graph, precision, target, engine, plan)
        return engine

    def _write_record(
        self, directory: Path, key: str, graph: str, precision: str, target: Target, engine: Path, plan: bytes
    ) -> None:
        entry = self.bundle.manifest.graphs[graph]
        record = EngineRecord(
            key=key,
            graph=graph,
            precision=precision,
            onnx_sha256=self.bundle.manifest.files[entry.file_for(precision)].sha256,
            ranges={axis: list(r) for axis, r in entry.spec.ranges},
            gpu=target.gpu,
            compute_capability=target.compute_capability,
            tensorrt=target.tensorrt,
            engine_file=engine.name,
            engine_sha256=hashlib.sha256(plan).hexdigest(),
            engine_bytes=len(plan),
            built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            dfrt_version=__version__,
        )
        atomic_write_text(directory / "meta.json", json.dumps(asdict(record), indent=2) + "\n")

    def records(self) -> list[EngineRecord]:
        """Every engine with readable metadata, for whatever target it was built."""
        if not self.root.is_dir():
            return []
        found = [self._read_record(d / "meta.json") for d in sorted(self.root.iterdir()) if d.is_dir()]
        return [r for r in found if r is not None]

    def foreign(self, target: Target) -> list[EngineRecord]:
        """Engines built for another GPU or TensorRT version (kept, never loaded here)."""
        return [r for r in self.records() if r.target != target]

    @staticmethod
    def _read_record(path: Path) -> EngineRecord | None:
        try:
            data = json.loads(path.read_text())
            return EngineRecord(**data)
        except (OSError, ValueError, TypeError):
            return None
