"""`dfrt pull NAME`: download public LLaMA-VID weights and the EVA-ViT-g tower, then convert them to a bundle
with the same library call as `dfrt export --checkpoint` (needs internet and `pip install 'dfrt[pull]'`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfrt.commands import progress


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.export.pull import SOURCES  # stdlib only

    names = ", ".join(f"{n} ({s.about})" for n, s in SOURCES.items())
    p.description = f"Known names: {names}."
    p.add_argument("name", choices=sorted(SOURCES), help="which checkpoint")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument(
        "--cache",
        type=Path,
        help="download directory (default: the Hugging Face cache, ~/.cache/huggingface)",
    )
    p.add_argument(
        "--vision-weights", type=Path, help="an eva_vit_g.pth already on disk (skips its download)"
    )
    p.add_argument("--quantize", choices=("f16", "q8_0", "q4_k_m"), default="q4_k_m")
    p.add_argument("--scoring", choices=("trained", "question"))
    p.add_argument("--download-only", action="store_true", help="fetch the files, do not convert")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.commands.export import print_summary
    from dfrt.export.convert import ExportRequest, check_export_out, export
    from dfrt.export.pull import download

    check_export_out(args.out)  # before a 14 GB download, not after
    checkpoint, eva = download(args.name, args.cache, args.vision_weights, progress)
    if args.download_only:
        print(f"{checkpoint}\n{eva}")
        return 0
    request = ExportRequest(
        out=args.out,
        checkpoints=(checkpoint,),
        vision_weights=eva,
        scoring=args.scoring,
        quantize=args.quantize,
        show_progress=not args.json,
    )
    print_summary(export(request, progress), args.json)
    return 0
