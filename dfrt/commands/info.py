"""`dfrt info`: versions, execution providers, GPUs, configs and the default (or given) bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--bundle", type=Path, help="bundle to summarise (default: $DFRT_BUNDLE or the cache dir)")
    p.add_argument("--verify", action="store_true", help="re-hash every bundle file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dfrt.runtime.info import describe, format_info

    info = describe(args.bundle, verify=args.verify)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
