"""`dfrt export`: a DynFocus model -> a bundle of validated ONNX graphs, tokenizer and manifest.

Writes into a staging directory inside the bundle, validates every graph against PyTorch, then moves the
files into place and writes ``dfrt.json`` last (atomically). An interrupted or failed export leaves no
manifest that points at half-written or unvalidated files. dfrt writes only into a new or empty directory or
over a bundle it wrote: it replaces or deletes only files its manifest lists with their sha256 (the user's
other files stay), and removes the staging folders of killed exports (:mod:`dfrt.fileio`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dfrt.config import DynFocusConfig
from dfrt.contracts import graph_specs
from dfrt.errors import ConfigError, ExportError
from dfrt.export.gguf_info import describe_gguf
from dfrt.export.onnx_export import export_graph
from dfrt.export.parity import OutputParity, require_parity, validate_graph
from dfrt.export.question_vocab import build_question_tokenizer
from dfrt.fileio import check_output_dir, claimed_files, commit_bundle, sha256_file, staging_dir
from dfrt.manifest import FileEntry, GraphEntry, Manifest, Preprocess, PromptTemplate
from dfrt.model.dynfocus import DynFocus
from dfrt.model.weights import load_checkpoint

log = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    parity: list[OutputParity]
    load_summary: str | None


def build_model(
    config: DynFocusConfig, checkpoints: Sequence[Path] = (), seed: int = 0, scoring: str | None = None
) -> tuple[DynFocus, str | None]:
    """The reference model with random weights (``seed``) or loaded from ``checkpoints``.

    ``scoring``: ``trained`` or ``question``; by default ``question`` when the checkpoints carry no DPE
    scorer (LLaMA-VID), else ``trained``.
    """
    torch.manual_seed(seed)
    model = DynFocus(config, scoring or "trained").eval()
    if not checkpoints:
        return model, None
    report = load_checkpoint(model, *checkpoints, strict=True)
    no_scorer = any(k.startswith("scorer.") for k in report.initialised)
    model.scoring = scoring or ("question" if no_scorer else "trained")
    why = " (the checkpoints carry no trained DPE scorer)" if no_scorer and not scoring else ""
    note = f"scoring: {model.scoring}{why}"
    if no_scorer and model.scoring == "trained":
        note += "; WARNING: the scorer is random, key frames will be arbitrary: use --scoring question"
    return model, f"{report.summary()}\n{note}"


def export_bundle(
    model: DynFocus,
    out: Path,
    provenance: dict[str, object],
    validate: bool = True,
    progress: bool = True,
    vocab: Path | None = None,
    llm: Path | None = None,
    prompt: PromptTemplate | None = None,
    move_llm: bool = False,
) -> ExportResult:
    """Export all graphs of ``model`` into the bundle directory ``out``: created (its parent must exist),
    or an empty directory, or a bundle dfrt wrote, whose files only its manifest lists are replaced.

    ``llm``: a GGUF copied (``move_llm``: moved) into the bundle; its width must equal ``llm_width``.
    ``prompt``: the template (default: Vicuna v1, as DynFocus; ``PromptTemplate(name="gguf")`` uses the
    GGUF's own chat template).
    """
    config = model.config
    check_output_dir(out, inputs=[llm] if llm else [])
    claims = claimed_files(out)  # refuses a directory that is not empty and not a dfrt bundle
    llm_entry = describe_gguf(llm, config.llm_width) if llm else None
    specs = graph_specs(config, model.scoring)
    planned = {TOKENIZER_NAME, *(f"{g}.onnx{x}" for g in specs for x in ("", ".data"))}
    for name in sorted(planned | ({llm_entry["file"]} if llm_entry else set())):
        if (out / name).is_symlink() or ((out / name).exists() and name not in claims):
            raise ConfigError(
                f"{out / name} exists and dfrt did not write it (not in {out.name}/dfrt.json): "
                "refusing to replace it; move it away or choose another --out"
            )
    out.mkdir(exist_ok=True)
    staging = staging_dir(out)
    try:
        graphs, parity = {}, []
        for spec in tqdm(specs.values(), desc="export", unit="graph", disable=not progress):
            onnx_path, data_path = export_graph(model, spec, staging)
            graphs[spec.name] = GraphEntry(onnx_path.name, spec, data_path.name if data_path else None)
            if validate:
                results = validate_graph(model, spec, onnx_path)
                for r in results:
                    log.info("%s", r.line())
                parity += results
                require_parity(results)
                require_tensorrt_ready(onnx_path, spec.name)
        tokenizer_json = build_question_tokenizer(config.qformer.max_question_tokens, vocab)
        (staging / TOKENIZER_NAME).write_text(tokenizer_json)
        if llm is not None and llm_entry is not None:
            (os.replace if move_llm else shutil.copyfile)(llm, staging / llm_entry["file"])
        files = {
            p.name: FileEntry(sha256_file(p), p.stat().st_size)
            for p in sorted(staging.iterdir())
            if p.is_file()
        }
        manifest = Manifest(
            config=config,
            preprocess=Preprocess.for_config(config),
            graphs=graphs,
            files=files,
            tokenizer=TOKENIZER_NAME,
            prompt=prompt or PromptTemplate(),
            weights=dict(provenance),
            llm=llm_entry,
            scoring=model.scoring,
        )
        listed = {name: (entry.sha256, entry.bytes) for name, entry in files.items()}
        commit_bundle(out, staging, manifest.to_json(), listed, claims)
        return ExportResult(out, manifest, parity, provenance.get("load_report"))  # type: ignore[arg-type]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def require_tensorrt_ready(onnx_path: Path, graph: str) -> None:
    """Every graph dfrt writes must parse in TensorRT 10.3 (JetPack 6): checked statically, no GPU needed."""
    from dfrt.export.tensorrt_check import DEFAULT_TARGET, check_model

    errors = [f for f in check_model(onnx_path, graph, DEFAULT_TARGET) if f.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ExportError(f"graph {graph} would not parse in TensorRT {DEFAULT_TARGET}: {errors[0]}{more}")
