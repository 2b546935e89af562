"""A Hugging Face SigLIP / SigLIP2 (fixed resolution) / CLIP directory -> the scorer's two ONNX towers and
tokenizer, validated in onnxruntime against ``transformers``. torch, transformers and onnx: export side only.

Both towers are exported as ``dfrt/export/onnx_export.py`` exports a graph: the TorchScript exporter at
opset :data:`dfrt.contracts.OPSET` (TensorRT 10.3 parses it), eager attention, names and dynamic axes from
the contracts of :meth:`ScorerSpec.graph_specs`. Each tower returns L2-normalised embeddings.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from dfrt.contracts import OPSET, GraphSpec
from dfrt.errors import CheckpointError, ExportError, ParityError
from dfrt.export.quiet import quiet_transformers
from dfrt.fileio import atomic_path, staging_dir
from dfrt.scorers.runtime import load_tokenizer
from dfrt.scorers.spec import IMAGE_GRAPH, TEXT_GRAPH, ScorerSpec

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 4 << 20
MIN_COSINE = 0.9999  # per row, ONNX in onnxruntime against transformers' normalised features
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as preprocessor_config.json stores them
_GRAPH_LIMIT = 1_800_000_000  # one protobuf: stay clear of 2 GB (no external data for scorer sizes)


def export_scorer(
    hf_dir: Path, out_dir: Path, progress: Callable[[str], None] = log.info
) -> tuple[ScorerSpec, list[str]]:
    """Export the dual encoder in ``hf_dir`` into the existing directory ``out_dir``.

    Returns the spec and the names (relative to ``out_dir``) of the files written: the image graph, the text
    graph, the tokenizer. Unsupported or unreadable checkpoints are one :class:`CheckpointError` line, export
    failures :class:`ExportError`, a cosine below ``0.9999`` for any row :class:`ParityError`.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir}: not a directory")
    config = _json(hf_dir / "config.json", "config.json")
    kind = _kind(config, hf_dir)
    processor = _json(hf_dir / "preprocessor_config.json", "preprocessor_config.json")
    tokenizer_config = (
        _json(hf_dir / "tokenizer_config.json", "tokenizer_config.json")
        if (hf_dir / "tokenizer_config.json").is_file()
        else {}
    )
    staging = staging_dir(out_dir)
    try:
        with quiet_transformers():
            return _export_all(hf_dir, out_dir, staging, kind, processor, tokenizer_config, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_all(
    hf_dir: Path,
    out_dir: Path,
    staging: Path,
    kind: str,
    processor: dict[str, Any],
    tokenizer_config: dict[str, Any],
    progress: Callable[[str], None],
) -> tuple[ScorerSpec, list[str]]:
    tokenizer_file = _tokenizer_file(hf_dir, kind, staging, progress)
    progress(f"scorer: loading {kind} from {hf_dir}")
    model = _load(hf_dir, kind)
    spec = _spec(kind, model, processor, tokenizer_config, tokenizer_file)
    load_tokenizer(tokenizer_file, spec)  # what the runtime will refuse, refused now
    contracts = spec.graph_specs()
    towers = {IMAGE_GRAPH: _ImageTower(model), TEXT_GRAPH: _TextTower(model, kind)}
    for name, module in towers.items():
        progress(f"scorer: exporting {name}")
        _export(module, contracts[name], staging / f"{name}.onnx", spec)
    progress("scorer: checking both towers in onnxruntime against transformers")
    validate(model, kind, spec, staging)
    written = []
    for name, source in (
        (spec.image_graph, staging / f"{IMAGE_GRAPH}.onnx"),
        (spec.text_graph, staging / f"{TEXT_GRAPH}.onnx"),
        (spec.tokenizer, tokenizer_file),
    ):
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(source, tmp)
        written.append(name)
    progress(
        f"scorer: {kind}, {spec.image_size} px, {spec.embed_dim}-d embeddings, {spec.text_length} tokens"
    )
    return spec, written


def _tokenizer_file(hf_dir: Path, kind: str, staging: Path, progress: Callable[[str], None]) -> Path:
    """``tokenizer.json``; for a SigLIP checkpoint that ships only ``spiece.model`` (google/siglip-*), the
    sentencepiece model converted to one (transformers has no converter for SiglipTokenizer: T5's, whose
    tokenisation it shares, without T5's extra ids)."""
    tokenizer_file = hf_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        return tokenizer_file
    if kind == "siglip" and (hf_dir / "spiece.model").is_file():
        progress("scorer: converting spiece.model to a tokenizer.json")
        converted = staging / "tokenizer.json"
        converted.write_text(_convert_siglip_tokenizer(hf_dir), encoding="utf-8")
        return converted
    raise CheckpointError(
        f"{hf_dir}: no tokenizer.json; save the fast tokenizer with transformers "
        "(AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) and export again"
    )


def _convert_siglip_tokenizer(hf_dir: Path) -> str:
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import SpmConverter

    class _Converter(SpmConverter):  # type: ignore[misc]
        def post_processor(self) -> Any:
            eos = self.original_tokenizer.eos_token
            eos_id = self.original_tokenizer.convert_tokens_to_ids(eos)
            return processors.TemplateProcessing(single=["$A", eos], special_tokens=[(eos, eos_id)])

    try:
        import transformers

        slow = transformers.SiglipTokenizer.from_pretrained(str(hf_dir))
        return str(_Converter(slow).converted().to_str())
    except Exception as e:  # sentencepiece, protobuf and transformers raise many types
        raise CheckpointError(
            f"{hf_dir}: cannot convert spiece.model (needs sentencepiece and protobuf): {_one_line(e)}"
        ) from e


class _ImageTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (frames, 3, S, S) -> (frames, D)
        return _normalize(_features(self.model.get_image_features(pixel_values=pixels)))


class _TextTower(torch.nn.Module):
    """SigLIP: the model's own text features (last position of the padded ids, no mask). CLIP: the last
    position of the unpadded ids, which the runtime ends with end-of-text, where transformers pools."""

    def __init__(self, model: Any, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (1, L) -> (1, D)
        if self.kind == "siglip":
            return _normalize(_features(self.model.get_text_features(input_ids=input_ids)))
        hidden = self.model.text_model(input_ids=input_ids).last_hidden_state  # final layer norm applied
        return _normalize(self.model.text_projection(hidden[:, -1, :]))


def validate(model: Any, kind: str, spec: ScorerSpec, directory: Path, seed: int = 0) -> None:
    """Both graphs in ``directory`` against ``transformers``' normalised image and text features: cosine
    >= 0.9999 per row, or :class:`ParityError` naming the graph and the worst row."""
    from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph

    contracts = spec.graph_specs()
    generator = torch.Generator().manual_seed(seed)
    frames = min(3, contracts[IMAGE_GRAPH].axis_ranges["frames"][2])
    pixels = torch.randn((frames, 3, spec.image_size, spec.image_size), generator=generator)
    ids = _validation_ids(model, kind, spec, generator)
    with torch.no_grad():
        image_ref = _normalize(_features(model.get_image_features(pixel_values=pixels))).numpy()
        text_ref = _normalize(_features(model.get_text_features(input_ids=ids))).numpy()
    for name, feed, reference in (
        (IMAGE_GRAPH, {"pixels": pixels.numpy()}, image_ref),
        (TEXT_GRAPH, {"input_ids": ids.numpy()}, text_ref),
    ):
        graph = OnnxRuntimeGraph(directory / f"{name}.onnx", contracts[name])
        output = next(iter(graph.run(feed).values()))
        cosine = np.sum(output * reference, axis=-1) / (
            np.linalg.norm(output, axis=-1) * np.linalg.norm(reference, axis=-1)
        )
        worst = int(np.argmin(cosine))
        if not cosine[worst] >= MIN_COSINE:
            raise ParityError(
                f"graph {name}: row {worst} has cosine {cosine[worst]:.6f} with transformers (< {MIN_COSINE})"
            )
        log.info("scorer parity %s: min cosine %.7f", name, float(cosine.min()))


def _validation_ids(model: Any, kind: str, spec: ScorerSpec, generator: torch.Generator) -> torch.Tensor:
    vocab = spec.vocab_size
    if kind == "siglip":
        length = spec.text_length
        ids = torch.randint(0, vocab, (1, length), generator=generator)
        ids[0, length // 2 :] = spec.pad_id  # padded, as the runtime feeds it
        return ids
    length = min(spec.text_length, 12)
    eos = int(model.config.text_config.eos_token_id)
    if eos == 2:  # transformers' legacy CLIP configs pool at the largest id: make it the last token
        ids = torch.randint(0, vocab - 1, (1, length), generator=generator)
        ids[0, -1] = vocab - 1
        return ids
    ids = torch.randint(0, vocab, (1, length), generator=generator)
    ids[ids == eos] = (eos + 1) % vocab
    ids[0, -1] = eos
    return ids


def _export(module: torch.nn.Module, spec: GraphSpec, target: Path, scorer: ScorerSpec) -> None:
    # trace at 2 on each dynamic axis: no size-1 axis to be specialised away
    axes = {axis: min(high, max(low, 2)) for axis, (low, _, high) in spec.ranges}
    args = []
    for tensor in spec.inputs:
        shape = tuple(d if isinstance(d, int) else axes[d] for d in tensor.shape)
        if tensor.dtype == "int64":
            args.append(torch.full(shape, min(3, scorer.vocab_size - 1), dtype=torch.int64))
        else:
            args.append(torch.zeros(shape, dtype=torch.float32))
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.onnx.export(
                module.eval(),
                tuple(args),
                str(target),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        for w in caught:
            log.debug("torch.onnx (%s): %s", spec.name, w.message)
        if target.stat().st_size > _GRAPH_LIMIT:
            raise ExportError(f"graph {spec.name}: {target.stat().st_size} bytes, over one ONNX file's limit")
        proto = onnx.load(str(target))
        onnx.checker.check_model(proto)
    except ExportError:
        raise
    except Exception as e:  # the exporter raises many types; name the graph
        raise ExportError(f"exporting graph {spec.name} failed: {_one_line(e)}") from e
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != spec.input_names or outputs != spec.output_names:
        raise ExportError(
            f"graph {spec.name}: exported inputs {inputs} / outputs {outputs} differ from the contract"
        )
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", OPSET) > OPSET or set(opsets) - {"", "ai.onnx"}:
        raise ExportError(f"graph {spec.name}: exported with opsets {opsets}, expected ai.onnx {OPSET} only")


def _kind(config: dict[str, Any], hf_dir: Path) -> str:
    model_type = config.get("model_type")
    if model_type in ("siglip", "clip"):
        return str(model_type)
    if model_type == "siglip2":
        raise CheckpointError(
            f"{hf_dir}: a SigLIP2 NaFlex checkpoint (model_type siglip2) is not supported; use a "
            "fixed-resolution SigLIP2 (google/siglip2-*-patchN-SIZE, model_type siglip) or SigLIP or CLIP"
        )
    raise CheckpointError(
        f"{hf_dir}: model_type {str(model_type)[:40]!r} is not a frame scorer; expected siglip or clip"
    )


def _load(hf_dir: Path, kind: str) -> Any:
    import transformers

    cls = transformers.SiglipModel if kind == "siglip" else transformers.CLIPModel
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(str(hf_dir), dtype=torch.float32, attn_implementation="eager")
    except Exception as e:  # transformers raises OSError, ValueError, RuntimeError, ...
        raise CheckpointError(f"{hf_dir}: cannot load the {kind} model ({_one_line(e)})") from e
    return model.eval()


def _spec(
    kind: str,
    model: Any,
    processor: dict[str, Any],
    tokenizer_config: dict[str, Any],
    tokenizer_file: Path,
) -> ScorerSpec:
    vision, text = model.config.vision_config, model.config.text_config
    try:
        if kind == "siglip":
            size = processor.get("size", {"height": vision.image_size, "width": vision.image_size})
            image_size = int(size["height"]) if isinstance(size, dict) else int(size)
            if isinstance(size, dict) and int(size["width"]) != image_size:
                raise ValueError(f"size {size} is not square")
            resize_size, resize = image_size, "squash"
        else:
            size = processor.get("size", {"shortest_edge": vision.image_size})
            resize_size = int(size["shortest_edge"]) if isinstance(size, dict) else int(size)
            crop = processor.get("crop_size", resize_size)
            image_size = int(crop["height"]) if isinstance(crop, dict) else int(crop)
            if isinstance(crop, dict) and int(crop["width"]) != image_size:
                raise ValueError(f"crop_size {crop} is not square")
            if processor.get("do_center_crop", True) is False:
                raise ValueError("do_center_crop is false")
            resize = "crop"
        resample = processor.get("resample", 3)
        if resample not in _RESAMPLE:
            raise ValueError(f"resample {resample!r} (only 2 bilinear and 3 bicubic are reproduced)")
        factor = processor.get("rescale_factor", 1 / 255)
        if not math.isclose(float(factor), 1 / 255, rel_tol=1e-4) or processor.get("do_rescale") is False:
            raise ValueError(f"rescale_factor {factor!r} (expected 1/255)")
        if processor.get("do_normalize") is False:
            raise ValueError("do_normalize is false")
        mean = tuple(float(v) for v in processor.get("image_mean", [0.5, 0.5, 0.5]))
        std = tuple(float(v) for v in processor.get("image_std", [0.5, 0.5, 0.5]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"preprocessor_config.json: {_one_line(e)}") from e
    if image_size != vision.image_size:
        raise CheckpointError(
            f"preprocessor_config.json gives {image_size} px, the vision tower takes {vision.image_size}"
        )
    if kind == "siglip":
        logit_scale, logit_bias = float(model.logit_scale.detach().exp()), float(model.logit_bias.detach())
        cleanup = _siglip_cleanup(tokenizer_config)
    else:
        logit_scale, logit_bias, cleanup = float(model.logit_scale.detach().exp()), 0.0, "none"
    return ScorerSpec(
        kind=kind,
        image_size=image_size,
        resize_size=resize_size,
        resize=resize,
        interpolation=_RESAMPLE[resample],
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        text_length=int(text.max_position_embeddings),
        text_cleanup=cleanup,
        pad_id=_pad_id(tokenizer_config, tokenizer_file, text),
        vocab_size=int(text.vocab_size),
        embed_dim=_embed_dim(model, kind),
        logit_scale=logit_scale,
        logit_bias=logit_bias,
    )


def _siglip_cleanup(tokenizer_config: dict[str, Any]) -> str:
    """SigLIP's tokenizer canonicalises in Python (lowercase, no punctuation), outside tokenizer.json;
    SigLIP2 (Gemma vocabulary) was trained on lowercased text."""
    name = str(tokenizer_config.get("tokenizer_class") or "")
    if name.startswith("SiglipTokenizer"):
        return "siglip"
    if name.startswith(("Siglip2Tokenizer", "GemmaTokenizer")):
        return "lower"
    return "none"


def _pad_id(tokenizer_config: dict[str, Any], tokenizer_file: Path, text: Any) -> int:
    pad = tokenizer_config.get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    if isinstance(pad, str):
        import tokenizers

        try:
            found = tokenizers.Tokenizer.from_file(str(tokenizer_file)).token_to_id(pad)
        except Exception as e:  # tokenizers raises bare Exceptions
            raise CheckpointError(f"{tokenizer_file}: unreadable ({_one_line(e)})") from e
        if found is not None:
            return int(found)
    pad_id = getattr(text, "pad_token_id", None)
    return int(pad_id) if pad_id is not None else 0


def _embed_dim(model: Any, kind: str) -> int:
    if kind == "clip":
        return int(model.config.projection_dim)
    text = model.config.text_config
    dim = int(getattr(text, "projection_size", None) or text.hidden_size)
    if dim != model.config.vision_config.hidden_size:
        raise CheckpointError(
            f"text embeddings of {dim} values, image embeddings of {model.config.vision_config.hidden_size}"
        )
    return dim


def _features(output: Any) -> torch.Tensor:
    """``get_*_features``: a tensor (transformers 4) or an output whose ``pooler_output`` it is (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


def _json(path: Path, what: str) -> dict[str, Any]:
    """A checkpoint's own JSON (plain ``json``: transformers writes ``model_max_length`` as a 31-digit
    integer, which dfrt's bundle reader refuses), size-capped."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {what}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: over {MAX_CONFIG_BYTES} bytes, not a {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({_one_line(e)})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."
