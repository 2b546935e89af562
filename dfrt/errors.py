"""The one exception hierarchy of dfrt: every expected failure is a :class:`DfrtError`.

The CLI turns a ``DfrtError`` into one line on stderr and exit code 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class DfrtError(Exception):
    """Root of every error dfrt raises on purpose."""

    exit_code = 1


class ConfigError(DfrtError):
    """A bad flag, config value or bundle manifest."""


class ContractError(DfrtError):
    """A tensor's name, dtype or shape does not match its graph contract."""


class CheckpointError(DfrtError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the model."""


class ExportError(DfrtError):
    """Exporting a graph or the LLM failed."""


class ParityError(ExportError):
    """An exported artifact does not reproduce the reference within tolerance."""


class BuildError(DfrtError):
    """Building a TensorRT engine failed."""


class EngineMismatchError(BuildError):
    """An engine was built for another GPU, TensorRT version, precision or graph."""


class InputError(DfrtError):
    """A video, question or other user input cannot be used."""


class BackendError(DfrtError):
    """A TensorRT, onnxruntime or llama.cpp call failed."""


class MissingDependencyError(DfrtError, ImportError):
    """An optional dependency needed for this operation is not installed."""
