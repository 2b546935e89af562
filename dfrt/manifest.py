"""The bundle manifest ``dfrt.json``: what `dfrt export` writes and every runtime reads. stdlib only.

A bundle is a directory: this manifest, the ONNX graphs (with external data where large), the question
tokenizer, later the GGUF LLM and ``engines/``. Every file is listed with its sha256 and size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dfrt import __version__
from dfrt.config import DynFocusConfig
from dfrt.contracts import GRAPH_ORDER, SCORING_MODES, GraphSpec, graph_specs
from dfrt.errors import ConfigError, DfrtError

SCHEMA_VERSION = 1
MANIFEST_NAME = "dfrt.json"
MAX_MANIFEST_BYTES = 4 << 20  # a real manifest is about 10 kB; refuse anything absurd before parsing it

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Preprocess:
    """CLIP image processing: resize the shortest edge (bicubic), centre crop, scale to [0, 1], normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shortest_edge_bicubic"
    crop: str = "center"

    @classmethod
    def for_config(cls, config: DynFocusConfig) -> Preprocess:
        return cls(config.vision.image_size, config.image_mean, config.image_std)


@dataclass(frozen=True)
class PromptTemplate:
    """How the LLM prompt is built; ``<image>`` marks where the visual embeddings go."""

    name: str = "vicuna_v1"
    system: str = VICUNA_SYSTEM
    format: str = "{system} USER: <image>\n{question} ASSISTANT:"
    stop: tuple[str, ...] = ("</s>",)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class GraphEntry:
    file: str
    spec: GraphSpec
    data_file: str | None = None  # ONNX external data, for graphs over 2 GB
    variants: dict[str, str] = field(default_factory=dict)  # precision -> ONNX file (e.g. int8 Q/DQ graphs)

    def file_for(self, precision: str) -> str:
        """The ONNX file for ``precision``: its variant, else the FP32 graph (kept in higher precision)."""
        return self.variants.get(precision, self.file)


@dataclass(frozen=True)
class Manifest:
    config: DynFocusConfig
    preprocess: Preprocess
    graphs: dict[str, GraphEntry]
    files: dict[str, FileEntry]
    tokenizer: str
    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    weights: dict[str, Any] = field(default_factory=dict)  # provenance: where the weights came from
    llm: dict[str, Any] | None = None
    scoring: str = "trained"  # DPE scores: the trained scorer, or question-aware (dfrt's extension)
    dfrt_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def check_consistency(self) -> None:
        """Graphs, contracts and preprocessing must be exactly what the config implies."""
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"scoring {self.scoring!r}, expected one of {', '.join(SCORING_MODES)}")
        expected = graph_specs(self.config, self.scoring)
        if list(self.graphs) != list(GRAPH_ORDER):
            raise ConfigError(f"graphs {list(self.graphs)}, expected {list(GRAPH_ORDER)}")
        for name, entry in self.graphs.items():
            if entry.spec != expected[name]:
                raise ConfigError(
                    f"the contract of graph {name} does not match the config (edited manifest?)"
                )
        if self.preprocess != Preprocess.for_config(self.config):
            raise ConfigError("preprocessing does not match the config (edited manifest?)")

    def to_json(self) -> str:
        data = {
            "schema_version": self.schema_version,
            "dfrt_version": self.dfrt_version,
            "config": self.config.to_dict(),
            "preprocess": {
                **self.preprocess.__dict__,
                "mean": list(self.preprocess.mean),
                "std": list(self.preprocess.std),
            },
            "prompt": {**self.prompt.__dict__, "stop": list(self.prompt.stop)},
            "tokenizer": self.tokenizer,
            "graphs": {
                name: {
                    "file": g.file,
                    "data_file": g.data_file,
                    "variants": g.variants,
                    "contract": g.spec.to_dict(),
                }
                for name, g in self.graphs.items()
            },
            "files": {name: {"sha256": f.sha256, "bytes": f.bytes} for name, f in self.files.items()},
            "weights": self.weights,
            "llm": self.llm,
            "scoring": self.scoring,
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Parse and validate; any problem is a :class:`ConfigError` naming ``where``."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"{where}: schema version {version!r}, this dfrt reads version {SCHEMA_VERSION}: "
                "re-export the bundle"
            )
        try:
            pre, prompt = data["preprocess"], data["prompt"]
            manifest = cls(
                config=DynFocusConfig.from_dict(data["config"]),
                preprocess=Preprocess(
                    int(pre["image_size"]),
                    _floats(pre["mean"]),
                    _floats(pre["std"]),
                    str(pre["resize"]),
                    str(pre["crop"]),
                ),
                graphs={
                    str(name): GraphEntry(
                        str(g["file"]),
                        GraphSpec.from_dict(g["contract"]),
                        _optional_str(g.get("data_file")),
                        _variants(g.get("variants")),
                    )
                    for name, g in data["graphs"].items()
                },
                files={
                    str(n): FileEntry(_sha256(f["sha256"]), int(f["bytes"])) for n, f in data["files"].items()
                },
                tokenizer=str(data["tokenizer"]),
                prompt=PromptTemplate(
                    str(prompt["name"]),
                    str(prompt["system"]),
                    str(prompt["format"]),
                    _strings(prompt["stop"]),
                ),
                weights=dict(data.get("weights") or {}),
                llm=_llm_entry(data.get("llm")),
                scoring=str(data.get("scoring", "trained")),  # bundles from before the field: trained
                dfrt_version=str(data.get("dfrt_version", "?")),
            )
            manifest.check_consistency()
            return manifest
        except DfrtError as e:
            raise ConfigError(f"{where}: {e}") from e
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{where}: malformed manifest ({e!r})") from e


def _floats(values: Any) -> tuple[float, float, float]:
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"expected three numbers, got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _strings(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"expected a list of strings, got {values!r}")
    return tuple(values)


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a file name, got {value!r}")
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a sha256 digest: {value!r}")
    return value


def _llm_entry(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("file"), str):
        raise ValueError(f"llm must be null or an object with a file name, got {value!r}")
    return value


def _variants(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"variants must map precisions to file names, got {value!r}")
    return dict(value)
