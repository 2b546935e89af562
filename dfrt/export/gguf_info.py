"""Read what a GGUF LLM is (architecture, embedding width) before it goes into a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfrt._optional import require
from dfrt.errors import ExportError


def describe_gguf(path: Path, expected_width: int) -> dict[str, Any]:
    """Manifest entry for a GGUF; refuses a file that is not GGUF or whose width differs from the bundle's."""
    gguf = require("gguf", "dfrt[export]")
    if not path.is_file():
        raise ExportError(f"LLM not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
        arch = _field(reader, "general.architecture")
        width = int(_field(reader, f"{arch}.embedding_length"))
    except (ValueError, KeyError, OSError) as e:
        raise ExportError(f"{path}: not a readable GGUF LLM ({e})") from e
    if width != expected_width:
        raise ExportError(
            f"{path.name} has embedding width {width}; this model projects into {expected_width}: "
            "pick a config whose llm_width matches the LLM"
        )
    name = "llm.gguf"
    return {"file": name, "source_name": path.name, "architecture": arch, "embedding_length": width}


def _field(reader: Any, key: str) -> Any:
    gguf = require("gguf", "dfrt[export]")
    field = reader.fields.get(key)
    if field is None:
        raise KeyError(f"no {key}")
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8") if field.types[:1] == [gguf.GGUFValueType.STRING] else value[0]
