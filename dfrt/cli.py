"""The ``dfrt`` command. Results go to stdout; progress, logs and errors to stderr.

Exit codes: 0 ok, 1 a :class:`~dfrt.errors.DfrtError` (one line, no traceback unless ``-v``), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dfrt import __version__
from dfrt.errors import DfrtError

log = logging.getLogger("dfrt")


def _info(args: argparse.Namespace) -> int:
    from dfrt.demo.default import resolve_bundle
    from dfrt.info import bundle_summary, collect_info, format_info

    info = collect_info()
    bundle = resolve_bundle(args.bundle, assemble=False)
    if args.bundle or bundle.is_dir():
        info["bundle"] = bundle_summary(bundle, verify=args.verify)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfrt", description="DynFocus video question answering runtime")
    parser.add_argument("--version", action="version", version=f"dfrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, execution providers, GPU and model configs")
    info.add_argument("--json", action="store_true", help="print one JSON document")
    info.add_argument(
        "--bundle", type=Path, help="bundle to summarise (default: $DFRT_BUNDLE or the cache dir)"
    )
    info.add_argument("--verify", action="store_true", help="re-hash every bundle file")
    info.set_defaults(run=_info)
    from dfrt.commands import bench, build, export, infer

    infer.register(sub)
    export.register(sub)
    build.register(sub)
    bench.register(sub)
    from dfrt.commands import eval as eval_command

    eval_command.register(sub)
    from dfrt.commands import pull

    pull.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except DfrtError as e:
        if args.verbose:
            log.exception("failed")
        print(f"dfrt: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # disk full, permission denied, a directory where a file should be: not a bug
        if args.verbose:
            log.exception("failed")
        print(f"dfrt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dfrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
