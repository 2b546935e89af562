"""A GGUF file's header, read and checked in Python before llama.cpp opens the file (stdlib only).

GGUF files are untrusted: llama.cpp trusts parts of a header and can abort the whole process on a malformed
one. :func:`read_gguf_header` walks the header without allocating anything a count or a length asks for:
magic and version, tensor and key counts bounded by the file size, every string and array length bounded by
the bytes left, value types, tensor ranks, dimensions, types and data offsets inside the file. Any fault is
one :class:`~dfrt.errors.ConfigError` naming the file. The facts the runtime needs before allocating (the
trained context, the KV cache's size) come from here too.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from dfrt.errors import ConfigError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what llama.cpp reads (version 1 had 32-bit counts)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TYPE = 64  # ggml type ids are small; anything at or beyond this is garbage
MAX_KEPT_STRING = 1 << 20  # metadata strings kept as values (a chat template, names); longer ones skipped
# the largest trained context accepted (the top of --ctx's range; the longest real models hold 10 Mi):
# llama-cpp-python sizes every tokenize buffer by it, and llama.cpp reads it as a signed 32-bit int
MAX_TRAINED_CONTEXT = 1 << 24

# value type id -> struct format of a scalar; 8 = string, 9 = array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# ggml type id -> (block size, bytes per block), for the data-size check; unknown types skip that check
_TYPE_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2),
}  # fmt: skip


@dataclass(frozen=True)
class GgufHeader:
    """What the runtime reads from a checked GGUF header."""

    version: int
    n_tensors: int
    metadata: dict[str, object] = field(repr=False)  # scalars and strings; arrays as None

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""

    def number(self, key: str) -> int | None:
        """``{architecture}.key`` as a positive int, or None when absent or not a positive integer."""
        value = self.metadata.get(f"{self.architecture}.{key}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            return None
        return value

    @property
    def context_length(self) -> int | None:
        """The context the model was trained with (``n_ctx_train``)."""
        return self.number("context_length")

    def kv_cache_bytes(self, n_ctx: int) -> int | None:
        """The F16 KV cache of ``n_ctx`` positions, or None when the header does not say enough."""
        layers, width = self.number("block_count"), self.number("embedding_length")
        heads = self.number("attention.head_count")
        if not (layers and width and heads):
            return None
        kv_heads = self.number("attention.head_count_kv") or heads
        key = self.number("attention.key_length") or width // heads
        value = self.number("attention.value_length") or width // heads
        return 2 * layers * n_ctx * kv_heads * (key + value)


class _Reader:
    def __init__(self, data: mmap.mmap | bytes, name: str) -> None:
        self.data, self.name, self.pos, self.size = data, name, 0, len(data)

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.name}: not a valid GGUF file ({what} at byte {self.pos})")

    def take(self, n: int, what: str) -> int:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"{what} runs past the end of the file")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str) -> int | float | bool:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from("<" + fmt, self.data, start)[0]

    def string(self, what: str, keep: bool = True) -> str | None:
        length = int(self.scalar("Q", f"{what} length"))
        start = self.take(length, what)
        if not keep or length > MAX_KEPT_STRING:
            return None
        return bytes(self.data[start : start + length]).decode("utf-8", "replace")

    def value(self, kind: int, what: str, keep: bool = True) -> object:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind], what)
        if kind == _STRING:
            return self.string(what, keep)
        if kind != _ARRAY:
            raise self.fail(f"{what} has unknown type {kind}")
        item = int(self.scalar("I", f"{what} item type"))
        count = int(self.scalar("Q", f"{what} length"))
        if item == _ARRAY:
            raise self.fail(f"{what} is an array of arrays")
        if item in _SCALARS:
            self.take(count * struct.calcsize(_SCALARS[item]), what)
        elif item == _STRING:
            if count > (self.size - self.pos) // 8:
                raise self.fail(f"{what} claims {count} strings")
            for _ in range(count):
                self.take(int(self.scalar("Q", f"{what} string length")), what)
        else:
            raise self.fail(f"{what} has unknown item type {item}")
        return None


def read_gguf_header(path: Path) -> GgufHeader:
    """Check ``path``'s whole GGUF header and tensor table; one :class:`ConfigError` for any fault."""
    name = path.name
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24 or f.read(4) != MAGIC:
                raise ConfigError(f"{path}: not a GGUF file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(_Reader(data, name))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the GGUF ({e.strerror or e})") from e


def _parse(r: _Reader) -> GgufHeader:
    r.take(4, "magic")
    version = int(r.scalar("I", "version"))
    if version not in VERSIONS:
        raise r.fail(f"GGUF version {version}, llama.cpp reads versions {VERSIONS[0]}-{VERSIONS[-1]}")
    n_tensors, n_kv = int(r.scalar("Q", "tensor count")), int(r.scalar("Q", "key count"))
    if n_tensors > r.size // 24 or n_kv > r.size // 13:  # the smallest tensor entry and key-value pair
        raise r.fail(f"{n_tensors} tensors and {n_kv} keys cannot fit in {r.size} bytes")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string("key") or ""
        if key in metadata:
            raise r.fail(f"key {key!r} appears twice")
        kind = int(r.scalar("I", f"type of {key!r}"))
        metadata[key] = r.value(kind, repr(key))
    alignment = metadata.get("general.alignment", 32)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0:
        raise r.fail(f"alignment {alignment!r}")
    if alignment & (alignment - 1):
        raise r.fail(f"alignment {alignment} is not a power of two")
    tensors: list[tuple[str, int, int, int]] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        tensor = r.string("tensor name") or ""
        if tensor in names:
            raise r.fail(f"tensor {tensor!r} appears twice")
        names.add(tensor)
        n_dims = int(r.scalar("I", f"rank of {tensor!r}"))
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {tensor!r} has rank {n_dims}")
        dims = [int(r.scalar("Q", f"shape of {tensor!r}")) for _ in range(n_dims)]
        elements = 1
        for d in dims:
            elements *= d
        if elements >= 1 << 62:
            raise r.fail(f"tensor {tensor!r} has shape {dims}")
        kind, offset = int(r.scalar("I", f"type of {tensor!r}")), int(r.scalar("Q", f"offset of {tensor!r}"))
        if kind >= MAX_TYPE:
            raise r.fail(f"tensor {tensor!r} has unknown type {kind}")
        if offset % alignment:
            raise r.fail(f"tensor {tensor!r} is not aligned")
        tensors.append((tensor, kind, offset, elements))
        if kind in _TYPE_SIZES and dims[0] % _TYPE_SIZES[kind][0]:
            raise r.fail(f"tensor {tensor!r} rows are not whole blocks")
    data_start = -(-r.pos // alignment) * alignment
    room = r.size - data_start
    for tensor, kind, offset, elements in tensors:
        block, nbytes = _TYPE_SIZES.get(kind, (1, 0))
        if offset + elements // block * nbytes > room:
            raise r.fail(f"tensor {tensor!r} lies beyond the end of the file")
    header = GgufHeader(version, n_tensors, metadata)
    trained = metadata.get(f"{header.architecture}.context_length")
    if isinstance(trained, int) and not isinstance(trained, bool) and trained > MAX_TRAINED_CONTEXT:
        raise ConfigError(
            f"{r.name}: its trained context ({header.architecture}.context_length) is {trained} positions, "
            f"at most {MAX_TRAINED_CONTEXT} are accepted"
        )
    return header


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return None


def checked_context(n_ctx: int | None, header: GgufHeader, name: str, default: int) -> int:
    """The context to allocate: ``n_ctx`` (already range-checked) if the model and memory allow it, else a
    :class:`ConfigError` blaming ``--ctx``; None = the trained context, at most ``default``."""
    trained = header.context_length
    if n_ctx is None:
        n_ctx = min(default, trained) if trained else default
    elif trained and n_ctx > trained:
        raise ConfigError(f"--ctx {n_ctx} is beyond the {trained} positions {name} was trained for")
    need, have = header.kv_cache_bytes(n_ctx), available_memory()
    if need is not None and have is not None and need > have:
        raise ConfigError(
            f"--ctx {n_ctx} needs {need / 2**30:.1f} GiB for {name}'s KV cache, "
            f"{have / 2**30:.1f} GiB of memory is available: use a smaller --ctx"
        )
    return n_ctx
