"""Checkpoint loading: recognise a layout, map its keys onto :class:`DynFocus`, report what happened.

Layouts (method.md section 2.2):
  * ``dynfocus``   the authors' full model (``model.*``, ``selective_net.*``, ``merge.*``)
  * ``llamavid``   LLaMA-VID: the same without the DPE scorer and the clustering gate
  * ``eva_vit``    LAVIS ``eva_vit_g.pth`` (the vision tower alone, 40 blocks, we use 39)
  * ``qformer``    InstructBLIP's trimmed Q-Former (``Qformer.*``, ``ln_vision.*``, ``query_tokens``); a
                   BLIP-2 / InstructBLIP file's other modules are ignored, ``visual_encoder.*`` is the tower
  * ``dfrt``       our own ``state_dict()``
Key mapping is a pure function (:func:`map_keys`), testable without files. Files are read shard by shard,
only the tensors the visual path needs are materialised, and nothing is unpickled: safetensors, or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import mmap
import re
import struct
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dfrt.config import DynFocusConfig
from dfrt.errors import CheckpointError

# official prefix -> our prefix; the first match wins
_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "dynfocus": (
        ("model.vision_tower.vision_tower.", "vision_tower."),
        ("model.vlm_att_encoder.bert.", "qformer.bert."),
        ("model.vlm_att_query", "qformer.query_tokens"),
        ("model.vlm_att_ln.", "qformer.ln_vision."),
        ("model.vlm_att_projector.", "qformer.proj."),
        ("model.vlm_att_key_projector.", "rod_attention.key_proj."),
        ("model.vlm_att_val_projector.", "rod_value_proj."),
        ("model.mm_projector.", "projector."),
        ("selective_net.score_network.", "scorer."),
        ("merge.score.", "structure.score."),
    ),
    "eva_vit": (("", "vision_tower."),),
    "qformer": (
        ("Qformer.bert.", "qformer.bert."),
        ("query_tokens", "qformer.query_tokens"),
        ("ln_vision.", "qformer.ln_vision."),
        ("visual_encoder.", "vision_tower."),  # LAVIS's frozen EVA-ViT-g (39 blocks, no final norm)
    ),
    "dfrt": (("", ""),),
}
_RENAMES["llamavid"] = _RENAMES["dynfocus"]

# parameters the authors' model carries but never uses, and buffers we do not keep
_UNUSED = re.compile(
    r"^(model\.vlm_att_em_projector\.|selective_net\.merge\.|merge\.(proj_k|proj_q|norm)\.|sf_former\."
    r"|model\.vlm_att_encoder\.cls\.|Qformer\.cls\.)|position_ids$"
)
# what a LAVIS BLIP-2 / InstructBLIP file carries besides the Q-Former, none of it used by DynFocus: that
# model's projection into its own LLM (``llm_proj`` Vicuna, ``t5_proj``, ``opt_proj``: DynFocus trains its
# own ``vlm_att_projector``), that LLM (``llm_model``, ``t5_model``, ``opt_model``: not DynFocus's, so not for
# GGUF either) and BLIP-2's stage-1 heads (``vision_proj``, ``text_proj``, ``itm_head``, ``temp``)
_UNUSED_BY_LAYOUT = {
    "qformer": re.compile(r"^((llm|t5|opt)_(proj|model)|vision_proj|text_proj|itm_head)\.|^temp$"),
}
# the language model: converted to GGUF separately, never loaded here
_LLM = re.compile(r"^(model\.embed_tokens\.|model\.layers\.|model\.norm\.|lm_head\.)")
# EVA extras: blocks beyond the configured depth (DynFocus drops block 40 of 40) and the final norm/head
_EVA_EXTRA = re.compile(r"^vision_tower\.(blocks\.(\d+)\.|norm\.|fc_norm\.|head\.)")

# what each layout is expected not to provide (initialised instead), by our key prefix
_NOT_PROVIDED = {
    "dynfocus": ("vision_tower.",),  # the tower is usually loaded from eva_vit_g.pth
    "llamavid": ("vision_tower.", "scorer.", "structure."),
    "eva_vit": ("qformer.", "scorer.", "structure.", "rod_attention.", "projector.", "rod_value_proj."),
    "qformer": (
        "vision_tower.",
        "qformer.proj.",
        "scorer.",
        "structure.",
        "rod_attention.",
        "projector.",
        "rod_value_proj.",
    ),
    "dfrt": (),
}


# how parameters that a layout does not provide are initialised (first match wins), and why
_INIT_POLICY: tuple[tuple[str, str, str], ...] = (
    ("structure.score.", "zeros", "a uniform clustering gate (softmax of zeros: each block scaled 1/6)"),
    ("scorer.", "seeded random", "the trained DPE scorer is absent: use question-aware scoring"),
    ("vision_tower.", "seeded random", "no vision weights: pass eva_vit_g.pth (--vision-weights)"),
)


def is_llm_key(key: str) -> bool:
    """A tensor of the language model (converted to GGUF, never loaded into :class:`DynFocus`)."""
    return bool(_LLM.match(key))


def detect_layout(keys: set[str] | list[str]) -> str:
    """Recognise a checkpoint family by sentinel keys."""
    keys = set(keys)
    if any(k.startswith(("selective_net.", "merge.score.")) for k in keys):
        return "dynfocus"
    if any(k.startswith(("model.vlm_att_", "model.mm_projector.")) for k in keys):
        return "llamavid"
    if any(k.startswith("Qformer.") for k in keys):
        return "qformer"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "eva_vit"
    if any(k.startswith(("vision_tower.", "qformer.", "scorer.")) for k in keys):
        return "dfrt"
    raise CheckpointError(f"unrecognised checkpoint layout (first keys: {', '.join(sorted(keys)[:5])})")


@dataclass
class KeyMap:
    """Where each checkpoint key goes: ``mapped`` (ours <- theirs), or why it is skipped."""

    layout: str
    mapped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # known-unused or beyond the configured depth
    llm: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def map_keys(keys: list[str], layout: str, model_keys: set[str], vision_depth: int) -> KeyMap:
    """Pure key mapping from a checkpoint layout onto the model's parameter names."""
    result = KeyMap(layout)
    for key in keys:
        if _LLM.match(key):
            result.llm.append(key)
            continue
        unused_here = _UNUSED_BY_LAYOUT.get(layout)
        if _UNUSED.search(key) or (unused_here and unused_here.search(key)):
            result.ignored.append(key)
            continue
        ours = _rename(key, layout)
        extra = _EVA_EXTRA.match(ours) if ours else None
        if ours in model_keys:
            result.mapped[ours] = key
        elif extra and (extra.group(2) is None or int(extra.group(2)) >= vision_depth):
            result.ignored.append(key)
        else:
            result.unexpected.append(key)
    return result


def _rename(key: str, layout: str) -> str | None:
    for theirs, ours in _RENAMES[layout]:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return None


@dataclass
class LoadReport:
    """What a load did: every model key is in exactly one of loaded, initialised, missing."""

    layouts: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)  # expected absent for these layouts; kept as built
    missing: list[str] = field(default_factory=list)  # absent though the layout should provide them
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    llm_keys: int = 0
    init_notes: list[str] = field(default_factory=list)  # how each group of initialised tensors was set

    def summary(self) -> str:
        lines = [
            f"layouts: {', '.join(self.layouts)}",
            f"loaded {len(self.loaded)} tensors; {len(self.initialised)} initialised (not in these layouts); "
            f"{len(self.missing)} missing; {len(self.unexpected)} unexpected; "
            f"{len(self.ignored)} ignored (unused by DynFocus); {self.llm_keys} language-model tensors left "
            "for GGUF conversion",
        ]
        lines += [f"initialised {note}" for note in self.init_notes]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                lines.append(f"{title}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        return "\n".join(lines)


def load_checkpoint(model: nn.Module, *paths: str | Path, strict: bool = True) -> LoadReport:
    """Load one or more checkpoints (files or Hugging Face style directories) into ``model``.

    With ``strict``, unexpected keys, missing keys and shape mismatches raise :class:`CheckpointError`.
    """
    if not paths:
        raise CheckpointError("no checkpoint given")
    params = model.state_dict()
    depth = len(getattr(getattr(model, "vision_tower", None), "blocks", ()))
    report = LoadReport()
    provided: set[str] = set()
    not_provided: set[str] = set(params)
    for path in paths:
        reader = CheckpointReader(Path(path))
        layout = detect_layout(reader.names())
        keymap = map_keys(sorted(reader.names()), layout, set(params), depth)
        report.layouts.append(layout)
        report.ignored += keymap.ignored
        report.unexpected += keymap.unexpected
        report.llm_keys += len(keymap.llm)
        not_provided &= {k for k in params if k.startswith(_NOT_PROVIDED[layout])}
        # shapes come from the file headers: a hostile size is refused before anything is allocated
        for ours, shape in reader.shapes(keymap.mapped).items():
            if shape != tuple(params[ours].shape):
                raise CheckpointError(
                    f"{path}: {keymap.mapped[ours]} has shape {shape}, "
                    f"the model expects {tuple(params[ours].shape)} for {ours}"
                )
        for ours, tensor in reader.tensors(keymap.mapped):
            target = params[ours]
            with torch.no_grad():
                target.copy_(tensor)
            provided.add(ours)
    report.loaded = sorted(provided)
    absent = sorted(set(params) - provided)
    report.initialised = [k for k in absent if k in not_provided]
    report.missing = [k for k in absent if k not in not_provided]
    report.init_notes = _initialise(params, report.initialised)
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"checkpoint does not fit the model:\n{report.summary()}")
    return report


def _initialise(params: dict[str, torch.Tensor], keys: list[str]) -> list[str]:
    """Apply :data:`_INIT_POLICY` to the absent-by-design ``keys``; one note per group."""
    notes = []
    for prefix, how, why in _INIT_POLICY:
        group = [k for k in keys if k.startswith(prefix)]
        if not group:
            continue
        if how == "zeros":
            with torch.no_grad():
                for key in group:
                    params[key].zero_()
        notes.append(f"{prefix}* ({len(group)} tensors): {how}, {why}")
    rest = [k for k in keys if not k.startswith(tuple(p for p, _, _ in _INIT_POLICY))]
    if rest:
        notes.append(f"{len(rest)} other tensors: seeded random ({', '.join(rest[:4])} ...)")
    return notes


def infer_config(paths: list[Path], candidates: dict[str, DynFocusConfig]) -> DynFocusConfig:
    """The candidate config whose every parameter shape matches the checkpoints (read from headers only)."""
    from dfrt.model.dynfocus import DynFocus

    readers = [CheckpointReader(Path(p)) for p in paths]
    for config in candidates.values():
        with torch.device("meta"):
            params = DynFocus(config).state_dict()
        depth = config.vision.depth
        fits, seen = True, 0
        for reader in readers:
            keymap = map_keys(sorted(reader.names()), detect_layout(reader.names()), set(params), depth)
            shapes = reader.shapes(keymap.mapped)
            seen += len(shapes)
            fits &= all(shape == tuple(params[ours].shape) for ours, shape in shapes.items())
        if fits and seen:
            return config
    raise CheckpointError(
        f"the checkpoint's tensor shapes match none of the configs {', '.join(candidates)}: "
        "is it a DynFocus / LLaMA-VID checkpoint?"
    )


class CheckpointReader:
    """Reads tensors by name from a file or a (sharded) checkpoint directory, never unpickling code."""

    SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        self.path = path
        self._key_to_file = self._index()

    def names(self) -> list[str]:
        return list(self._key_to_file)

    def shapes(self, wanted: dict[str, str]) -> dict[str, tuple[int, ...]]:
        """(our key -> shape) read from headers (safetensors) or memory maps (torch), without loading data."""
        by_file: dict[Path, dict[str, str]] = {}
        for ours, theirs in wanted.items():
            by_file.setdefault(self._key_to_file[theirs], {})[theirs] = ours
        shapes: dict[str, tuple[int, ...]] = {}
        for file, names in sorted(by_file.items()):
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as f:
                    shapes.update(
                        {ours: tuple(f.get_slice(theirs).get_shape()) for theirs, ours in names.items()}
                    )
            else:
                state = _torch_load(file)
                shapes.update({ours: tuple(state[theirs].shape) for theirs, ours in names.items()})
        return shapes

    def tensors(self, wanted: dict[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (our key, tensor) for ``wanted`` (ours -> theirs), one shard open at a time, in
        :meth:`read_order` of the checkpoint keys. A tensor may be a view of a memory-mapped file: copy it
        before the next one is requested if it must be kept."""
        by_file: dict[Path, dict[str, str]] = {}
        for ours, theirs in wanted.items():
            by_file.setdefault(self._key_to_file[theirs], {})[theirs] = ours
        for file, names in sorted(by_file.items()):
            for theirs, tensor in _read_file(file, set(names)):
                yield names[theirs], tensor

    def read_order(self, names: list[str]) -> list[str]:
        """The order :meth:`tensors` yields these checkpoint keys in: shard by shard, sorted within."""
        return sorted(names, key=lambda k: (self._key_to_file[k], k))

    def _index(self) -> dict[str, Path]:
        if self.path.is_file():
            return {k: self.path for k in _file_keys(self.path)}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = self.path / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise CheckpointError(f"{index}: not a valid shard index ({e})") from e
                return {k: _inside(self.path, shard) for k, shard in weight_map.items()}
        files = sorted(p for p in self.path.iterdir() if p.suffix in self.SUFFIXES and p.is_file())
        files = [p for p in files if p.suffix == ".safetensors"] or files
        if not files:
            raise CheckpointError(f"{self.path}: no checkpoint files ({', '.join(self.SUFFIXES)}) inside")
        return {k: f for f in files for k in _file_keys(f)}


def _inside(root: Path, name: str) -> Path:
    """A shard named by an index must live inside the checkpoint directory."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise CheckpointError(f"{root}: shard {name!r} points outside the checkpoint directory")
    return path


def _file_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
    return list(_torch_load(path))


def _read_file(path: Path, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one file, holding at most one of them in memory at a time.

    safetensors: each tensor is read with ``pread`` from its header offsets (no memory map, so nothing of
    the file stays resident). torch zip files are memory-mapped; once the consumer has taken a tensor, its
    pages are handed back to the kernel (they are re-read from the file if touched again), so a 10 GB shard
    never counts 10 GB towards the resident set.
    """
    if path.suffix == ".safetensors":
        yield from _read_safetensors(path, names)
        return
    state, mapped = _torch_load_mapped(path)
    for name in sorted(names):
        tensor = state[name]
        yield name, tensor
        if mapped:  # only file-backed pages may be dropped: anonymous ones would read back as zeros
            _release_pages(tensor)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Read tensors by offset from a safetensors file (8-byte header length, JSON header, data)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        try:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(size - 8, 100 << 20):
                raise ValueError("header length beyond the file")
            header = json.loads(f.read(header_len))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
        start = 8 + header_len
        for name in sorted(names):
            try:
                info = header[name]
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: bad header entry for {name} ({e!r})") from e
            expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end - begin != expected or not 0 <= begin <= end <= size - start:
                raise CheckpointError(f"{path}: {name} has inconsistent data offsets")
            buffer = bytearray(end - begin)
            f.seek(start + begin)
            if f.readinto(buffer) != len(buffer):
                raise CheckpointError(f"{path}: truncated data for {name}")
            tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            yield name, tensor.reshape(shape)


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4


def _release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a memory-mapped, unmodified tensor (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    storage = tensor.untyped_storage()
    if storage.nbytes() < _PAGE:
        return
    begin = storage.data_ptr() // _PAGE * _PAGE
    end = -(-(storage.data_ptr() + storage.nbytes()) // _PAGE) * _PAGE
    _libc().madvise(ctypes.c_void_p(begin), ctypes.c_size_t(end - begin), _MADV_DONTNEED)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` restricted to tensors (no code execution), unwrapping common nests.

    Zip checkpoints (every ``torch.save`` since 1.6) are memory-mapped; legacy ones are read whole.
    """
    return _torch_load_mapped(path)[0]


def _torch_load_mapped(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    mapped = zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as e:  # pickle and zip errors come in many types
        raise CheckpointError(f"{path}: cannot be read as a tensor-only checkpoint ({e})") from e
    for nest in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(nest), dict):
            state = state[nest]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, mapped
