"""Graph contracts: the one declaration of every deployment graph's inputs, outputs and dynamic axes.

Export reads them (input/output names, ``dynamic_axes``, tolerances), the runtime checks every feed against
them, the TensorRT builder turns ``ranges`` into optimisation profiles, and ``docs/graphs.md`` is rendered
from them (``python -m dfrt.contracts``). Shapes mix fixed sizes (int) and named dynamic axes (str).
stdlib + numpy only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfrt.config import ROD_TOKENS, DynFocusConfig, key_frame_count
from dfrt.errors import ContractError

OPSET = 17
MAX_FRAMES = 1024  # most sampled frames one video may have; the runtime's frame cap stays below it
CHUNK = 16  # frames (or rod frames) per call of the per-frame graphs; their axis maximum
DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8", "int8")  # what a contract may name
MAX_DIM = 1 << 20  # a fixed size or an axis maximum in a contract (the largest real one: 8192)
MAX_TENSORS = 16  # inputs or outputs of one graph
MAX_RANK = 8
_AXIS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # int = fixed size, str = named dynamic axis
    # integer inputs that index a table (token ids): every value in [0, upper). Derived from the config,
    # not stored in a manifest, and not part of equality (a manifest's contract equals the config's)
    upper: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        """Strict: a name, a known dtype, a shape of at most :data:`MAX_RANK` sizes or axis names."""
        name, dtype, shape = data["name"], data["dtype"], data["shape"]
        if not isinstance(name, str) or not 0 < len(name) <= 255:
            raise ValueError(f"tensor name {str(name)[:40]!r}")
        if dtype not in DTYPES:
            raise ValueError(f"{name}: dtype {str(dtype)[:40]!r}, expected one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise ValueError(f"{name}: shape {str(shape)[:60]}")
        for dim in shape:
            if not (_is_size(dim, MAX_DIM) or (isinstance(dim, str) and _AXIS_NAME.fullmatch(dim))):
                raise ValueError(f"{name}: dimension {str(dim)[:40]!r}, expected a size or an axis name")
        return cls(name, dtype, tuple(shape))


def _is_size(value: Any, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high


@dataclass(frozen=True)
class GraphSpec:
    name: str
    doc: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ranges: tuple[tuple[str, tuple[int, int, int]], ...]  # axis -> (min, opt, max)
    atol: float = 1e-3  # parity tolerance vs PyTorch (plus rtol * max |reference|)
    rtol: float = 1e-3

    @property
    def axis_ranges(self) -> dict[str, tuple[int, int, int]]:
        return dict(self.ranges)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes`` argument."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }

    def example_shape(self, tensor: TensorSpec, which: int = 1) -> tuple[int, ...]:
        """A concrete shape with every dynamic axis at its min (0), opt (1) or max (2)."""
        ranges = self.axis_ranges
        return tuple(d if isinstance(d, int) else ranges[d][which] for d in tensor.shape)

    def check_inputs(self, feed: dict[str, np.ndarray]) -> dict[str, int]:
        """Validate names, dtypes, ranks, fixed sizes and axis ranges; return the axis sizes seen."""
        expected, given = set(self.input_names), set(feed)
        if expected != given:
            raise ContractError(f"graph {self.name}: expected inputs {sorted(expected)}, got {sorted(given)}")
        axes: dict[str, int] = {}
        ranges = self.axis_ranges
        for spec in self.inputs:
            array = feed[spec.name]
            if array.dtype != np.dtype(spec.dtype):
                raise ContractError(f"graph {self.name}: {spec.name} is {array.dtype}, expected {spec.dtype}")
            wrong_shape = (
                f"graph {self.name}: {spec.name} has shape {array.shape}, expected {_fmt(spec.shape)}"
            )
            if array.ndim != len(spec.shape):
                raise ContractError(wrong_shape)
            if spec.upper is not None and array.size and (array.min() < 0 or array.max() >= spec.upper):
                value = int(array.min()) if array.min() < 0 else int(array.max())
                raise ContractError(
                    f"graph {self.name}: {spec.name} holds {value}, outside [0, {spec.upper})"
                )
            for size, dim in zip(array.shape, spec.shape, strict=True):
                if isinstance(dim, int):
                    if size != dim:
                        raise ContractError(wrong_shape)
                    continue
                if axes.setdefault(dim, size) != size:
                    raise ContractError(f"graph {self.name}: axis {dim} is {axes[dim]} and {size} at once")
                low, _, high = ranges[dim]
                if not low <= size <= high:
                    raise ContractError(f"graph {self.name}: axis {dim}={size} outside [{low}, {high}]")
        return axes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "doc": self.doc,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "ranges": {axis: list(r) for axis, r in self.ranges},
            "atol": self.atol,
            "rtol": self.rtol,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphSpec:
        """Strict: known dtypes, sizes and axis ranges ``1 <= min <= opt <= max <= MAX_DIM``, every axis
        a shape names has a range, finite non-negative tolerances; anything else is a :class:`ContractError`.
        """
        try:
            name, doc = data["name"], data["doc"]
            if not isinstance(name, str) or not isinstance(doc, str) or len(name) > 255 or len(doc) > 1 << 16:
                raise ValueError("name and doc must be text")
            tensors = {io: data[io] for io in ("inputs", "outputs")}
            if not all(isinstance(t, list) and 0 < len(t) <= MAX_TENSORS for t in tensors.values()):
                raise ValueError(f"inputs and outputs must be lists of 1 to {MAX_TENSORS} tensors")
            ranges = []
            for axis, bounds in data["ranges"].items():
                if not _AXIS_NAME.fullmatch(axis):
                    raise ValueError(f"axis name {axis[:40]!r}")
                if not (
                    isinstance(bounds, list)
                    and len(bounds) == 3
                    and all(_is_size(b, MAX_DIM) for b in bounds)
                    and bounds[0] <= bounds[1] <= bounds[2]
                ):
                    raise ValueError(f"axis {axis}: range {str(bounds)[:60]}, not 1 <= min <= opt <= max")
                ranges.append((axis, tuple(bounds)))
            atol, rtol = data["atol"], data["rtol"]
            for tolerance in (atol, rtol):
                if not isinstance(tolerance, int | float) or not math.isfinite(tolerance) or tolerance < 0:
                    raise ValueError(f"tolerance {tolerance!r}")
            spec = cls(
                name=name,
                doc=doc,
                inputs=tuple(TensorSpec.from_dict(t) for t in tensors["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in tensors["outputs"]),
                ranges=tuple(ranges),  # type: ignore[arg-type]
                atol=float(atol),
                rtol=float(rtol),
            )
            axes = {d for t in (*spec.inputs, *spec.outputs) for d in t.shape if isinstance(d, str)}
            if axes - set(spec.axis_ranges):
                raise ValueError(f"axis {sorted(axes - set(spec.axis_ranges))[0]} has no range")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ContractError(f"malformed graph contract: {_short(e)}") from e
        return spec


def _short(error: BaseException) -> str:
    text = " ".join(repr(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _fmt(shape: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


GRAPH_ORDER = ("vision", "scoring", "encoding", "question", "fusion")
SCORING_MODES = ("trained", "question")  # the scoring graph's two contracts; a bundle records its mode


def graph_specs(config: DynFocusConfig, scoring: str = "trained") -> dict[str, GraphSpec]:
    """The five deployment graphs of a DynFocus config, in execution order.

    ``scoring="question"`` swaps in the question-aware scoring graph, which also takes the prototypes' q_emb.
    """
    if scoring not in SCORING_MODES:
        raise ContractError(f"unknown scoring mode {scoring!r}: choose {', '.join(SCORING_MODES)}")
    v, q = config.vision, config.qformer
    w, d, s = v.width, config.llm_width, v.image_size
    tokens = 1 + v.num_patches
    max_text = q.max_question_tokens  # [CLS] question [SEP], truncated on the left to fit
    max_keys = key_frame_count(config.dpe.max_prototypes, config.dpe.key_ratio)
    f32 = "float32"
    specs = (
        GraphSpec(
            "vision",
            "Vision tower on CLIP-normalised frames: CLS + patch tokens, and the pooled grid DPE scores.",
            (TensorSpec("pixels", f32, ("frames", 3, s, s)),),
            (
                TensorSpec("tokens", f32, ("frames", tokens, w)),
                TensorSpec("pooled", f32, ("frames", config.pooled_tokens, w)),
            ),
            (("frames", (1, 8, CHUNK)),),
            atol=1e-3,
        ),
        _scoring_spec(config, scoring),
        GraphSpec(
            "encoding",
            "CCE structure tokens: two-level DPC-kNN clustering of each frame's patch tokens.",
            (TensorSpec("tokens", f32, ("frames", tokens, w)),),
            (TensorSpec("structure", f32, ("frames", config.structure_tokens, w)),),
            (("frames", (1, 8, CHUNK)),),
            atol=1e-3,
        ),
        GraphSpec(
            "question",
            "Q-Former: question-conditioned queries for each rod frame (ids from the bundle tokenizer).",
            (
                TensorSpec("tokens", f32, ("rods", tokens, w)),
                TensorSpec("input_ids", "int64", (1, "text"), upper=q.vocab_size),
                TensorSpec("attention_mask", "int64", (1, "text"), upper=2),
            ),
            (TensorSpec("q_emb", f32, ("rods", q.num_queries, w)),),
            (("rods", (1, 8, CHUNK)), ("text", (1, 16, max_text))),
            atol=1e-3,
        ),
        GraphSpec(
            "fusion",
            "Cone tokens through the projector; rods = [projected mean structure token, question-attended "
            "token through the value projector]. The host interleaves them in temporal order.",
            (
                TensorSpec("cones", f32, ("keys", config.cone_tokens, w)),
                TensorSpec("rod_structure", f32, ("rods", config.structure_tokens, w)),
                TensorSpec("q_emb", f32, ("rods", q.num_queries, w)),
            ),
            (
                TensorSpec("cone_embeds", f32, ("keys", config.cone_tokens, d)),
                TensorSpec("rod_embeds", f32, ("rods", ROD_TOKENS, d)),
            ),
            (("keys", (1, 16, max_keys)), ("rods", (1, 32, MAX_FRAMES))),
            atol=1e-3,
        ),
    )
    return {spec.name: spec for spec in specs}


def _scoring_spec(config: DynFocusConfig, scoring: str) -> GraphSpec:
    w, f32 = config.vision.width, "float32"
    prototypes = TensorSpec("prototypes", f32, ("prototypes", config.pooled_tokens, w))
    scores = (TensorSpec("scores", f32, ("prototypes",)),)
    ranges = (("prototypes", (1, 32, config.dpe.max_prototypes)),)
    if scoring == "trained":
        return GraphSpec(
            "scoring",
            "DPE scorer: one min-max normalised score per event prototype (all prototypes in one call).",
            (prototypes,),
            scores,
            ranges,
            atol=1e-4,
        )
    return GraphSpec(
        "scoring",
        "Question-aware DPE scores (`scoring: question`, dfrt's extension; no trained scorer needed): "
        "relevance of each prototype's tokens to the q_emb of its seed frame (question graph) through the "
        "rod key projector, minus 0.5 x its cosine redundancy with the previous prototype; min-max "
        "normalised.",
        (prototypes, TensorSpec("q_emb", f32, ("prototypes", config.qformer.num_queries, w))),
        scores,
        ranges,
        atol=1e-4,
    )


def render_markdown(config: DynFocusConfig) -> str:
    """``docs/graphs.md``: every contract, from the code."""
    lines = [
        "# Graph contracts",
        "",
        "Generated from `dfrt/contracts.py` by `python -m dfrt.contracts > docs/graphs.md`; a test keeps it "
        "current. Sizes are for the `" + config.name + "` config; named axes are dynamic, with the TensorRT "
        "optimisation-profile range (min / opt / max). All graphs: ONNX opset " + str(OPSET) + ".",
        "",
        "Host steps between graphs (numpy, `dfrt/runtime/selection.py`): event prototypes by deterministic "
        "k-means when T > " + str(config.dpe.max_prototypes) + ", hard top-k with "
        "k = ceil(" + str(config.dpe.key_ratio) + " T'), cone assembly [pooled prototype | structure tokens "
        "of its frame], and the temporal interleave of cone and rod rows. A bundle exported with "
        '`--scoring question` records `"scoring": "question"` in `dfrt.json` and carries the second '
        "scoring contract below: the question graph then runs on every frame first (its q_emb feeds the "
        "scores of the prototypes' seed frames and the rods), and the selection depends on the question.",
        "",
    ]
    specs = list(graph_specs(config).values())
    specs.insert(2, graph_specs(config, "question")["scoring"])
    for spec in specs:
        mode = " (`scoring: question` bundles)" if spec.input_names == ["prototypes", "q_emb"] else ""
        lines += [
            f"## `{spec.name}`{mode}",
            "",
            spec.doc,
            "",
            "| tensor | io | dtype | shape |",
            "|---|---|---|---|",
        ]
        for io, tensors in (("in", spec.inputs), ("out", spec.outputs)):
            lines += [f"| `{t.name}` | {io} | {t.dtype} | {_fmt(t.shape)} |" for t in tensors]
        ranges = ", ".join(f"`{a}` {r[0]} / {r[1]} / {r[2]}" for a, r in spec.ranges)
        lines += ["", f"Dynamic axes: {ranges}. Parity tolerance: atol {spec.atol} + rtol {spec.rtol}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from dfrt.config import paper

    print(render_markdown(paper()), end="")
