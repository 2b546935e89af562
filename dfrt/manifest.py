"""The bundle manifest ``dfrt.json``: what `dfrt export` writes and every runtime reads. stdlib only.

A bundle is a directory: this manifest, the ONNX graphs (with external data where large), the question
tokenizer, later the GGUF LLM and ``engines/``. Every file is listed with its sha256 and size.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass, field, replace
from typing import Any

from dfrt import __version__, registry
from dfrt.config import DynFocusConfig
from dfrt.contracts import MAX_FRAMES, GraphSpec
from dfrt.errors import ConfigError, DfrtError
from dfrt.jsonio import parse_json

SCHEMA_VERSION = 1
MANIFEST_NAME = "dfrt.json"

# Size caps of every file a bundle may hold, checked against the manifest before anything is read (and the
# real sizes against the manifest before hashing). The GGUF is huge by nature: only the general cap.
MAX_MANIFEST_BYTES = 4 << 20  # a real manifest is about 10 kB; refuse anything absurd before parsing it
MAX_TOKENIZER_BYTES = 16 << 20  # BERT's is 466 kB; a 250k-word multilingual vocabulary about 10 MB
MAX_GRAPH_BYTES = 2 << 30  # an ONNX file is one protobuf message: 2 GiB at most
MAX_DATA_BYTES = 64 << 30  # ONNX external data: the paper's EVA tower is 4 GB in fp32
MAX_FILE_BYTES = 1 << 40  # anything else listed (the GGUF)
MAX_FILES = 256  # a bundle lists about 15
MAX_VARIANTS = 8  # precisions of one graph (fp16, int8)
MAX_NAME_CHARS = 255  # file names, tensor names, axis names, template names
MAX_TEXT_CHARS = 1 << 16  # a contract's doc, the prompt's system text and format
MAX_STOPS = 16  # stop strings of a prompt, each at most MAX_STOP_CHARS
MAX_STOP_CHARS = 64

# Plausibility caps of a config's sizes (the `paper` value in the comment): whatever a manifest says, no
# shape the runtime derives from it can ask numpy or a graph for an absurd allocation or loop.
CONFIG_LIMITS: dict[str, float] = {
    "vision.image_size": 1024,  # 224
    "vision.patch_size": 1024,  # 14
    "vision.width": 8192,  # 1408
    "vision.depth": 128,  # 39
    "vision.heads": 256,  # 16
    "vision.mlp_ratio": 16.0,  # 4.3637
    "vision.ln_eps": 1.0,  # 1e-6
    "qformer.hidden": 8192,  # 768
    "qformer.layers": 128,  # 12
    "qformer.heads": 256,  # 12
    "qformer.intermediate": 65536,  # 3072
    "qformer.cross_attention_freq": 128,  # 2
    "qformer.num_queries": 1024,  # 32
    "qformer.vocab_size": 1_000_000,  # 30523
    "qformer.max_positions": 8192,  # 512
    "qformer.ln_eps": 1.0,  # 1e-12
    "qformer.max_question_tokens": 8192,  # 256
    "dpe.pooled_grid": 64,  # 4
    "dpe.max_prototypes": MAX_FRAMES,  # 80
    "dpe.key_ratio": 1.0,  # 0.45
    "dpe.kmeans_iters": 1000,  # 10
    "dpe.topk_samples": 100_000,  # 500 (training only)
    "dpe.topk_sigma": 100.0,  # 0.1 (training only)
    "cce.clusters1": 4096,  # 16
    "cce.knn1": 4096,  # 8
    "cce.clusters2": 4096,  # 6
    "cce.knn2": 4096,  # 3
    "llm_width": 65536,  # 4096
}
MAX_PATCHES = 4096  # patches per frame (a 64 x 64 grid); paper 256
MAX_FRAME_ELEMENTS = 1 << 23  # (1 + patches) x width floats per frame (32 MiB); paper 361,856 (1.4 MiB)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_FORMAT = "{system} USER: <image>\n{question} ASSISTANT:"
VICUNA_TURN = " {answer}</s>USER: {question} ASSISTANT:"  # LLaVA's conv_vicuna_v1: sep " ", sep2 "</s>"


@dataclass(frozen=True)
class Preprocess:
    """CLIP image processing: resize the shortest edge (bicubic), centre crop, scale to [0, 1], normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shortest_edge_bicubic"
    crop: str = "center"

    @classmethod
    def for_config(cls, config: Any, family: str = registry.DEFAULT_FAMILY) -> Preprocess:
        """The preprocessing a family's config implies."""
        preprocess: Preprocess = registry.spec(family).preprocess(config)
        return preprocess


IMAGE_SLOT = "<image>"
GGUF_TEMPLATE = "gguf"  # the prompt comes from the GGUF's own chat template (checked where it is rendered)


@dataclass(frozen=True)
class PromptTemplate:
    """How the LLM prompt is built; ``<image>`` marks where the visual embeddings go.

    ``format`` is a ``str.format`` string with exactly one ``{question}``, at most one ``{system}``, no other
    field (positional, attribute, index, conversion or spec) and exactly one ``<image>``; ``system`` holds no
    ``<image>``. ``turn`` continues a conversation after ``format``: an earlier ``{answer}``, then the next
    user turn's ``{question}`` and the assistant's prefix, each exactly once, no ``<image>`` (None: the
    format cannot replay earlier turns, unless it is Vicuna v1's, whose turn is known). Checked on
    construction, so a bundle's template is refused when the manifest is read.
    """

    name: str = "vicuna_v1"
    system: str = VICUNA_SYSTEM
    format: str = VICUNA_FORMAT
    stop: tuple[str, ...] = ("</s>",)
    turn: str | None = None

    @property
    def turn_format(self) -> str | None:
        """How the template continues a conversation (``turn``; Vicuna v1's own for its format), or None."""
        if self.turn is None and self.format == VICUNA_FORMAT:
            return VICUNA_TURN
        return self.turn

    def __post_init__(self) -> None:
        _check_prompt(self)


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
    """``config`` is the family's config (:mod:`dfrt.families`): a :class:`DynFocusConfig` for DynFocus."""

    config: Any
    preprocess: Preprocess
    graphs: dict[str, GraphEntry]
    files: dict[str, FileEntry]
    tokenizer: str  # DynFocus: the question tokenizer (BERT); other families: the LLM's own tokenizer.json
    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    weights: dict[str, Any] = field(default_factory=dict)  # provenance: where the weights came from
    llm: dict[str, Any] | None = None
    # DynFocus: "trained" DPE scores or "question"-aware (dfrt's extension); other families name how their
    # key frames are found (SmolVLM: "uniform", or "scorer" with the bundle's dual encoder)
    scoring: str = "trained"
    family: str = registry.DEFAULT_FAMILY
    scorer: Any = None  # a dfrt.scorers.spec.ScorerSpec: the dual encoder that scores frames, if any
    dfrt_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    @property
    def family_spec(self) -> Any:
        return registry.spec(self.family)

    def expected_graphs(self) -> dict[str, GraphSpec]:
        """Every graph's contract as the config (and the scorer) imply, in execution order."""
        expected = dict(self.family_spec.graph_specs(self.config, self.scoring))
        if self.scorer is not None:
            expected.update(self.scorer.graph_specs())
        return expected

    def check_consistency(self) -> None:
        """Graphs, contracts and preprocessing must be exactly what the config implies, every size within
        its cap (:data:`CONFIG_LIMITS`, the family's limits, the ``MAX_*_BYTES`` of each file's role)."""
        family = self.family_spec
        family.check_config(self.config)
        self._check_files()
        if self.scoring not in family.SCORING_MODES:
            raise ConfigError(f"scoring {self.scoring!r}, expected one of {', '.join(family.SCORING_MODES)}")
        if (self.scorer is not None) != (self.scoring == "scorer"):
            raise ConfigError(f"scoring {self.scoring!r} and the scorer entry disagree (edited manifest?)")
        expected = self.expected_graphs()
        if list(self.graphs) != list(expected):
            raise ConfigError(f"graphs {list(self.graphs)}, expected {list(expected)}")
        for name, entry in self.graphs.items():
            if entry.spec != expected[name]:
                raise ConfigError(
                    f"the contract of graph {name} does not match the config (edited manifest?)"
                )
        if self.preprocess != Preprocess.for_config(self.config, self.family):
            raise ConfigError("preprocessing does not match the config (edited manifest?)")

    def _check_files(self) -> None:
        if len(self.files) > MAX_FILES:
            raise ConfigError(f"{len(self.files)} files listed, at most {MAX_FILES}")
        caps = {self.tokenizer: MAX_TOKENIZER_BYTES}
        for graph in self.graphs.values():
            caps.update(dict.fromkeys([graph.file, *graph.variants.values()], MAX_GRAPH_BYTES))
            if graph.data_file:
                caps[graph.data_file] = MAX_DATA_BYTES
        for name, entry in self.files.items():
            if len(name) > MAX_NAME_CHARS:
                raise ConfigError(f"file name of {len(name)} characters: {name[:40]!r}...")
            cap = caps.get(name, MAX_FILE_BYTES)
            if entry.bytes > cap:
                raise ConfigError(f"{name}: {entry.bytes} bytes listed, over the {cap}-byte cap for its role")

    def with_config_specs(self) -> Manifest:
        """The manifest with each graph's contract taken from the config (equal, and carrying what the
        manifest does not store, such as the vocabulary bound of ``input_ids``)."""
        expected = self.expected_graphs()
        graphs = {name: replace(g, spec=expected[name]) for name, g in self.graphs.items()}
        return replace(self, graphs=graphs)

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
        if self.family != registry.DEFAULT_FAMILY:  # left out for DynFocus: older runtimes read the bundle
            data["family"] = self.family
        if self.scorer is not None:
            data["scorer"] = self.scorer.to_dict()
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Parse (bounded: :func:`dfrt.jsonio.parse_json`) and validate; any problem is a
        :class:`ConfigError` naming ``where``."""
        return cls.from_data(parse_json(text, where), where)

    @classmethod
    def from_data(cls, data: Any, where: str) -> Manifest:
        """Validate parsed JSON (:func:`dfrt.jsonio.read_json`); any problem is a :class:`ConfigError`."""
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
            family = data.get("family", registry.DEFAULT_FAMILY)
            manifest = cls(
                config=registry.spec(family).config_from_dict(data["config"]),
                preprocess=Preprocess(
                    _count(pre["image_size"]),
                    _floats(pre["mean"]),
                    _floats(pre["std"]),
                    _string(pre["resize"]),
                    _string(pre["crop"]),
                ),
                graphs={
                    str(name): GraphEntry(
                        _string(g["file"]),
                        GraphSpec.from_dict(g["contract"]),
                        _optional_str(g.get("data_file")),
                        _variants(g.get("variants")),
                    )
                    for name, g in data["graphs"].items()
                },
                files={
                    str(n): FileEntry(_sha256(f["sha256"]), _count(f["bytes"]))
                    for n, f in data["files"].items()
                },
                tokenizer=_string(data["tokenizer"]),
                prompt=PromptTemplate(
                    _string(prompt["name"]),
                    _string(prompt["system"], MAX_TEXT_CHARS),
                    _string(prompt["format"], MAX_TEXT_CHARS),
                    _strings(prompt["stop"]),
                    _optional_text(prompt.get("turn"), MAX_TEXT_CHARS),
                ),
                weights=dict(data.get("weights") or {}),
                llm=_llm_entry(data.get("llm")),
                scoring=str(data.get("scoring", "trained")),  # bundles from before the field: trained
                family=family,
                scorer=_scorer_entry(data.get("scorer")),
                dfrt_version=str(data.get("dfrt_version", "?")),
            )
            manifest.check_consistency()
            return manifest.with_config_specs()
        except DfrtError as e:
            raise ConfigError(f"{where}: {_printable(str(e))}") from e
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
            raise ConfigError(f"{where}: malformed manifest ({_short(e)})") from e


def check_config_limits(config: DynFocusConfig) -> None:
    """Every size of ``config`` finite, positive and within :data:`CONFIG_LIMITS`; :class:`ConfigError`."""
    for key, high in CONFIG_LIMITS.items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if isinstance(high, float):
            ok = isinstance(value, float) and math.isfinite(value) and 0.0 < value <= high
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high
        if not ok:
            raise ConfigError(f"config.{key} = {value!r}: outside (0, {high}]")
    for key, values in (("image_mean", config.image_mean), ("image_std", config.image_std)):
        low = 0.0 if key == "image_std" else -10.0
        if not all(math.isfinite(v) and low < v <= 10.0 for v in values):
            raise ConfigError(f"config.{key} = {list(values)!r}: outside ({low}, 10]")
    patches = config.vision.num_patches
    if patches > MAX_PATCHES or (1 + patches) * config.vision.width > MAX_FRAME_ELEMENTS:
        raise ConfigError(
            f"config: {patches} patches of width {config.vision.width} per frame, over the caps "
            f"({MAX_PATCHES} patches, {MAX_FRAME_ELEMENTS} values per frame)"
        )
    if len(config.name) > MAX_NAME_CHARS:
        raise ConfigError(f"config.name of {len(config.name)} characters")


def _check_prompt(prompt: PromptTemplate) -> None:
    for what, text, cap in (
        ("name", prompt.name, MAX_NAME_CHARS),
        ("system", prompt.system, MAX_TEXT_CHARS),
        ("format", prompt.format, MAX_TEXT_CHARS),
    ):
        if not isinstance(text, str) or len(text) > cap:
            raise ConfigError(f"prompt {what}: expected text of at most {cap} characters")
    if not isinstance(prompt.stop, tuple) or len(prompt.stop) > MAX_STOPS:
        raise ConfigError(f"prompt stop: at most {MAX_STOPS} stop strings")
    if not all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in prompt.stop):
        raise ConfigError(f"prompt stop: strings of at most {MAX_STOP_CHARS} characters")
    if prompt.name == GGUF_TEMPLATE:
        return  # the GGUF's chat template is rendered instead of format
    where = f"prompt template {prompt.name!r}"
    if any(0xE000 <= ord(c) <= 0xF8FF for c in prompt.format + prompt.system):
        raise ConfigError(f"{where}: private-use characters are reserved")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(prompt.format)]
    except ValueError as e:  # unbalanced braces
        raise ConfigError(f"{where}: not a format string ({e})") from e
    names = [name for name, _, _ in fields if name is not None]
    bad = [name for name, spec, conv in fields if name is not None and (spec or conv or name not in _SLOTS)]
    if bad:
        raise ConfigError(f"{where}: only {{question}} and {{system}} may be filled in, not {{{bad[0]}}}")
    if names.count("question") != 1 or names.count("system") > 1:
        raise ConfigError(f"{where}: needs exactly one {{question}} (and at most one {{system}})")
    if prompt.format.count(IMAGE_SLOT) != 1 or IMAGE_SLOT in prompt.system:
        raise ConfigError(f"{where}: needs exactly one {IMAGE_SLOT} in its format (none in its system text)")
    if prompt.turn is not None:
        _check_turn(prompt.turn, where)


def _check_turn(turn: object, where: str) -> None:
    if not isinstance(turn, str) or len(turn) > MAX_TEXT_CHARS:
        raise ConfigError(f"{where}: its turn must be text of at most {MAX_TEXT_CHARS} characters")
    if any(0xE000 <= ord(c) <= 0xF8FF for c in turn):
        raise ConfigError(f"{where}: private-use characters are reserved")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(turn)]
    except ValueError as e:
        raise ConfigError(f"{where}: its turn is not a format string ({e})") from e
    names = [name for name, _, _ in fields if name is not None]
    if any(spec or conv for name, spec, conv in fields if name is not None) or sorted(names) != [
        "answer",
        "question",
    ]:
        raise ConfigError(
            f"{where}: its turn needs exactly one {{answer}} and one {{question}}, nothing else"
        )
    if IMAGE_SLOT in turn:
        raise ConfigError(f"{where}: its turn holds no {IMAGE_SLOT}")


_SLOTS = ("question", "system")


def _printable(text: str, cap: int = 300) -> str:
    """One line: control characters escaped (a key may hold a newline), cut to ``cap`` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: cap + 1])
    return text if len(text) <= cap else text[: cap - 3] + "..."


def _short(error: BaseException) -> str:
    """``repr`` of an error on one line, cut short: messages may quote a huge or multi-line value."""
    text = " ".join(repr(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _floats(values: Any) -> tuple[float, float, float]:
    if (
        not isinstance(values, list)
        or len(values) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"expected three numbers, got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _string(value: Any, cap: int = MAX_NAME_CHARS) -> str:
    if not isinstance(value, str) or len(value) > cap:
        raise ValueError(f"expected text of at most {cap} characters, got {str(value)[:40]!r}")
    return value


def _strings(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"expected a list of strings, got {values!r}")
    return tuple(values)


def _optional_text(value: Any, cap: int) -> str | None:
    return None if value is None else _string(value, cap)


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


def _scorer_entry(value: Any) -> Any:
    if value is None:
        return None
    from dfrt.scorers.spec import ScorerSpec

    return ScorerSpec.from_dict(value)


def _variants(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > MAX_VARIANTS
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise ValueError(f"variants must map precisions to file names, got {value!r}")
    return dict(value)
