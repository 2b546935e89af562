"""llama.cpp's own SmolVLM vision (clip.cpp inside libmtmd, through llama-cpp-python's ctypes bindings) as an
oracle independent of transformers and of dfrt: an mmproj written by llama.cpp's converter from a Hugging Face
checkpoint, images encoded by mtmd, one embedding array per image chunk.

The converter is not part of any wheel: ``scripts/test.sh`` extracts ``convert_hf_to_gguf.py``,
``conversion/`` and ``gguf-py/`` from the llama-cpp-python sdist of the installed version (the same llama.cpp
as ``libmtmd.so``) and names the folder in ``DFRT_LLAMA_CPP_CONVERTER``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import numpy as np

from dfrt.runtime.native_log import silenced_native_stderr

CONVERTER_ENV = "DFRT_LLAMA_CPP_CONVERTER"
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py")


def converter_dir() -> Path | None:
    """The folder ``DFRT_LLAMA_CPP_CONVERTER`` names, when it holds the converter and its gguf-py."""
    value = os.environ.get(CONVERTER_ENV)
    if not value:
        return None
    root = Path(value)
    return root if all((root / name).is_file() for name in _CONVERTER_FILES) else None


def convert_mmproj(converter: Path, checkpoint: Path, out: Path) -> Path:
    """``convert_hf_to_gguf.py CHECKPOINT --mmproj --outtype f32``: the vision tower and connector as
    llama.cpp writes them (F32, so only the arithmetic differs from dfrt's F32 graph), with the converter's
    own gguf-py."""
    env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}
    env.pop("NO_LOCAL_GGUF", None)
    command = [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(checkpoint)]
    command += ["--mmproj", "--outtype", "f32", "--outfile", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"llama.cpp's converter failed (exit {done.returncode}):\n{tail}")
    return out


class MtmdVision:
    """An mtmd context over ``mmproj`` with ``text_model`` (mtmd checks the widths agree and looks up the
    image-wrapping tokens in its vocabulary). One thread at a time; ``close`` frees the context, then the
    model, and any later call raises."""

    def __init__(self, mmproj: Path, text_model: Path, threads: int = 2) -> None:
        import llama_cpp
        from llama_cpp import mtmd_cpp

        self._lib, self._mtmd = llama_cpp, mtmd_cpp
        self._model: int | None = None
        self._ctx: int | None = None
        try:
            with silenced_native_stderr():
                llama_cpp.llama_backend_init()
                params = llama_cpp.llama_model_default_params()
                params.n_gpu_layers = 0
                self._model = llama_cpp.llama_model_load_from_file(str(text_model).encode(), params) or None
                if self._model is None:
                    raise RuntimeError(f"{text_model}: llama.cpp cannot load it")
                ctx_params = mtmd_cpp.mtmd_context_params_default()
                ctx_params.use_gpu = False
                ctx_params.n_threads = threads
                ctx_params.print_timings = False
                ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), self._model, ctx_params)
                self._ctx = ctx or None
            if self._ctx is None:
                raise RuntimeError(f"{mmproj}: mtmd cannot load it (the 'dfrt' logger at DEBUG shows why)")
        except BaseException:
            self.close()
            raise

    def encode(self, frame: np.ndarray) -> list[np.ndarray]:
        """An RGB frame (H, W, 3) uint8 as mtmd tokenizes it (its own resizing, tiling and normalisation),
        every image chunk encoded: one (tokens, width) float32 array per chunk, in prompt order."""
        if self._ctx is None:
            raise RuntimeError("MtmdVision is closed")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an RGB frame (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        m = self._mtmd
        height, width = frame.shape[:2]
        data = (ctypes.c_uint8 * frame.size).from_buffer_copy(np.ascontiguousarray(frame).tobytes())
        bitmap = m.mtmd_bitmap_init(width, height, data)
        chunks = m.mtmd_input_chunks_init()
        try:
            if not bitmap or not chunks:
                raise RuntimeError("mtmd could not allocate a bitmap or a chunk list")
            part = m.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(m.mtmd_input_part) * 1)(ctypes.pointer(part))
            with silenced_native_stderr():
                status = m.mtmd_tokenize_from_parts(self._ctx, chunks, parts, 1, False)
            if status != 0:
                raise RuntimeError(f"mtmd_tokenize_from_parts failed ({status})")
            return [self._encode_chunk(chunk) for chunk in self._image_chunks(chunks)]
        finally:
            if chunks:
                m.mtmd_input_chunks_free(chunks)
            if bitmap:
                m.mtmd_bitmap_free(bitmap)

    def _image_chunks(self, chunks: int) -> list[int]:
        m = self._mtmd
        found = []
        for i in range(m.mtmd_input_chunks_size(chunks)):
            chunk = m.mtmd_input_chunks_get(chunks, i)
            if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                found.append(chunk)
        return found

    def _encode_chunk(self, chunk: int) -> np.ndarray:
        """The chunk's embeddings, copied out of the context's buffer (the next encode overwrites it)."""
        m = self._mtmd
        tokens = int(m.mtmd_input_chunk_get_n_tokens(chunk))
        width = int(self._lib.llama_model_n_embd_inp(self._model))
        with silenced_native_stderr():
            status = m.mtmd_encode_chunk(self._ctx, chunk)
        if status != 0:
            raise RuntimeError(f"mtmd_encode_chunk failed ({status})")
        out = m.mtmd_get_output_embd(self._ctx)
        if not out:
            raise RuntimeError("mtmd returned no embeddings")
        return np.ctypeslib.as_array(out, shape=(tokens * width,)).reshape(tokens, width).copy()

    def close(self) -> None:
        """Free the mtmd context, then the text model; safe to call twice."""
        if self._ctx is not None:
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> MtmdVision:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
