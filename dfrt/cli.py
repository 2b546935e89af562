"""The ``dfrt`` command. Results go to stdout; progress, logs and errors to stderr.

Exit codes: 0 ok, 1 a :class:`~dfrt.errors.DfrtError` (one line, no traceback unless ``-v``), 2 usage,
130 interrupted. Building the parser imports only the command modules, which import nothing heavy at the
top: each command's work (and its numpy, OpenCV, onnxruntime, llama.cpp, torch) is imported when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from dfrt import __version__
from dfrt.errors import DfrtError

log = logging.getLogger("dfrt")

# verb -> module with register(subparsers); the order is the order of `dfrt --help`
COMMANDS = ("infer", "info", "eval", "export", "pull", "build", "check", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfrt", description="DynFocus video question answering runtime")
    parser.add_argument("--version", action="version", version=f"dfrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"dfrt.commands.{name}").register(sub)
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
