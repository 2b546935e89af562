"""`dfrt pull NAME --out DIR`: download a model by name and convert it to a bundle (needs internet, or a
copied mirror with ``--from``, and `pip install 'dfrt[pull]'`); `dfrt pull --list`: what can be pulled.

Open VLMs (SmolVLM2) download only the files the export reads, with the disk checked first, resumably, every
file's hash checked and recorded, then convert through their family's export with a default SigLIP scorer.
LLaMA-VID names download the checkpoint and EVA-ViT-g and convert them as `dfrt export --checkpoint` does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfrt.commands import progress

if TYPE_CHECKING:
    from dfrt.export.pull_vlm import PullResult


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.export.pull import CATALOGUE  # stdlib only

    p.description = "Download a model by name and convert it to a bundle; --list shows the names."
    p.add_argument(
        "name", nargs="?", choices=list(CATALOGUE), metavar="NAME", help="what to pull (see --list)"
    )
    p.add_argument("--list", action="store_true", help="the names, families, sizes and licences; then exit")
    p.add_argument("--out", type=Path, help="bundle directory to write")
    p.add_argument(
        "--quantize",
        choices=("q8_0", "q4_k_m", "f16"),
        help="GGUF type of the language model (default: q8_0 for open VLMs, q4_k_m for LLaMA-VID)",
    )
    p.add_argument(
        "--from",
        dest="hub_folder",
        type=Path,
        metavar="HUB_FOLDER",
        help="pull from a mirror on disk laid out as HUB_FOLDER/<org>/<repo>/<files> (open VLMs; no network)",
    )
    p.add_argument("--revision", help="branch, tag or commit of the model repository (default: main)")
    p.add_argument("--no-scorer", action="store_true", help="no frame scorer: key frames evenly spaced")
    p.add_argument(
        "--cache",
        type=Path,
        help="download directory (default: <dfrt cache>/hub for open VLMs, the Hugging Face cache for "
        "LLaMA-VID); a killed pull run again resumes there",
    )
    p.add_argument(
        "--vision-weights", type=Path, help="LLaMA-VID: an eva_vit_g.pth already on disk (skips its download)"
    )
    p.add_argument("--scoring", choices=("trained", "question"), help="LLaMA-VID: DPE frame scores")
    p.add_argument("--download-only", action="store_true", help="fetch and verify the files, do not convert")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run, pull_parser=p)


def run(args: argparse.Namespace) -> int:
    from dfrt.export.pull import CATALOGUE

    if args.list:
        print_catalogue(args.json)
        return 0
    if args.name is None or (args.out is None and not args.download_only):
        args.pull_parser.error("give NAME and --out DIR (or --list)")
    entry = CATALOGUE[args.name]
    if entry.open_vlm:
        return _pull_open_vlm(args)
    for flag, given in (
        ("--from", args.hub_folder),
        ("--revision", args.revision),
        ("--no-scorer", args.no_scorer),
    ):
        if given:
            args.pull_parser.error(f"{flag} is for open VLMs; {args.name} is a LLaMA-VID checkpoint")
    return _pull_llama_vid(args, args.quantize or entry.quantize)


def catalogue_rows() -> list[dict[str, Any]]:
    """One row per name: family, repositories, approximate download sizes, licences, default scorer."""
    from dfrt.export.pull import CATALOGUE, SCORERS

    rows = []
    for entry in CATALOGUE.values():
        scorer = SCORERS[entry.scorer] if entry.scorer else None
        rows.append(
            {
                "name": entry.name,
                "family": entry.family,
                "repo": entry.repo,
                "revision": entry.revision,
                "about": entry.about,
                "licence": entry.licence,
                "download_bytes": entry.download_bytes + (scorer.download_bytes if scorer else 0),
                "model_bytes": entry.download_bytes,
                "quantize": entry.quantize,
                "scorer": None
                if scorer is None
                else {
                    "name": scorer.name,
                    "repo": scorer.repo,
                    "licence": scorer.licence,
                    "download_bytes": scorer.download_bytes,
                },
            }
        )
    return rows


def print_catalogue(as_json: bool) -> None:
    rows = catalogue_rows()
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
        return
    header = ("NAME", "FAMILY", "DOWNLOAD", "LICENCE", "SCORER (--no-scorer: none)")
    table = [header] + [
        (
            r["name"],
            r["family"],
            f"{r['download_bytes'] / 1e9:.1f} GB",
            r["licence"],
            f"{r['scorer']['name']} ({r['scorer']['licence']})" if r["scorer"] else "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print(
        "\nsizes are approximate (the scorer included); a pull checks the hub's exact sizes against free disk"
    )


def _pull_open_vlm(args: argparse.Namespace) -> int:
    from dfrt.export.pull_vlm import PullRequest, pull

    if args.vision_weights or args.scoring:
        args.pull_parser.error(f"--vision-weights and --scoring are for LLaMA-VID, not {args.name}")
    request = PullRequest(
        name=args.name,
        out=args.out,
        quantize=args.quantize,
        hub_folder=args.hub_folder,
        cache=args.cache,
        revision=args.revision,
        scorer=not args.no_scorer,
        download_only=args.download_only,
        show_progress=not args.json,
    )
    _print_pull(pull(request, progress), args.json)
    return 0


def _print_pull(result: PullResult, as_json: bool) -> None:
    export = result.export
    if as_json:
        document: dict[str, Any] = {
            "name": result.entry.name,
            "family": result.entry.family,
            "hub": result.hub,
            "downloaded_bytes": result.downloaded_bytes,
            "seconds": round(result.seconds, 2),
            "sources": [part.provenance() for part in result.parts],
            "bundle": None,
        }
        if export is not None:
            document["bundle"] = str(export.bundle)
            document["files"] = {name: f.bytes for name, f in export.manifest.files.items()}
            document["parity"] = [
                {
                    "graph": r.graph,
                    "output": r.output,
                    "cosine": r.cosine,
                    "max_abs_error": r.max_abs,
                    "ok": r.ok,
                }
                for r in export.parity
            ]
        print(json.dumps(document, indent=2))
        return
    if export is None:
        for part in result.parts:
            print(part.directory)
        return
    for r in export.parity:
        print(r.line())
    size = sum(f.bytes for f in export.manifest.files.values())
    checked = sum(len(part.files) for part in result.parts)
    print(
        f"bundle {export.bundle}: {result.entry.name}, {len(export.manifest.graphs)} graph(s), "
        f"{size / 1e6:.1f} MB, {checked} source files verified, {result.seconds:.1f} s"
    )


def _pull_llama_vid(args: argparse.Namespace, quantize: str) -> int:
    from dfrt.commands.export import print_summary
    from dfrt.export.convert import ExportRequest, check_export_out, export
    from dfrt.export.pull import download

    if not args.download_only:
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
        quantize=quantize,
        show_progress=not args.json,
    )
    print_summary(export(request, progress), args.json)
    return 0
