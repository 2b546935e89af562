"""torch -> ONNX for one graph contract: TorchScript exporter, opset 17, external data beyond 2 GB.

The TorchScript exporter (``dynamo=False``) is used on purpose: mature ``dynamic_axes`` and opset-17 graphs
that TensorRT 10.3 (JetPack 6) parses. Its deprecation warnings are logged at debug level.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import onnx
import torch

from dfrt.contracts import OPSET, GraphSpec
from dfrt.errors import ExportError
from dfrt.export.graphs import GraphModule, example_feed
from dfrt.fileio import make_readable
from dfrt.model.dynfocus import DynFocus

log = logging.getLogger(__name__)

INLINE_LIMIT = 1_800_000_000  # protobuf cannot hold more than 2 GB; stay clear of it


def export_graph(model: DynFocus, spec: GraphSpec, directory: Path) -> tuple[Path, Path | None]:
    """Write ``<name>.onnx`` (and ``<name>.onnx.data`` when large) into ``directory``; return both paths."""
    module = GraphModule(model, spec.name).eval()
    return export_module(module, spec, directory, model.config.qformer.vocab_size)


def export_module(
    module: torch.nn.Module, spec: GraphSpec, directory: Path, vocab_size: int = 2
) -> tuple[Path, Path | None]:
    """Any module whose forward takes the contract's inputs in order -> ``<name>.onnx`` (+ data) in
    ``directory`` (every family's graphs come through here); ``vocab_size`` bounds example token ids."""
    module = module.eval()
    # trace at size 2 on every dynamic axis: cheap at full size, and no size-1 axis to be specialised away
    axes = {axis: min(high, max(low, 2)) for axis, (low, _, high) in spec.ranges}
    feed = example_feed(spec, axes, vocab_size)
    args = tuple(torch.from_numpy(feed[name]) for name in spec.input_names)
    raw_dir = directory / f".raw-{spec.name}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw = raw_dir / f"{spec.name}.onnx"
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        for w in caught:
            log.debug("torch.onnx (%s): %s", spec.name, w.message)
        # measured on disk: protobuf's own ByteSize() raises beyond 2 GB
        exported_bytes = sum(p.stat().st_size for p in raw_dir.iterdir())
        proto = onnx.load(str(raw))  # pulls in any external data the exporter wrote beside it
        _check_io(proto, spec)
        target = directory / f"{spec.name}.onnx"
        if exported_bytes <= INLINE_LIMIT:
            onnx.save_model(proto, str(target))
            return target, None
        data = directory / f"{spec.name}.onnx.data"
        onnx.save_model(
            proto, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name
        )
        make_readable(data)  # onnx writes external data 0600
        return target, data
    except ExportError:
        raise
    except Exception as e:  # the exporter raises many types; name the graph
        raise ExportError(f"exporting graph {spec.name} failed: {e}") from e
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)


def _check_io(proto: onnx.ModelProto, spec: GraphSpec) -> None:
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != spec.input_names or outputs != spec.output_names:
        raise ExportError(
            f"graph {spec.name}: exported inputs {inputs} / outputs {outputs} differ from the contract "
            f"{spec.input_names} / {spec.output_names}"
        )
