"""The ``dfrt`` command. Results go to stdout; progress, logs and errors to stderr.

Exit codes: 0 ok, 1 a :class:`~dfrt.errors.DfrtError` (one line, no traceback unless ``-v``), 2 usage,
70 an internal error (any other exception: a bug; one line, the traceback with ``-v``), 130 interrupted.
Only the verb being run has its command module imported and its options registered (the
others appear in ``dfrt --help`` by name and help line); a command module imports nothing heavy at the top,
so ``dfrt infer`` loads nothing of the export, calibration or training layers.
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
INTERNAL_ERROR = 70  # EX_SOFTWARE

# verb -> its help line; dfrt.commands.<verb> has register(parser) and run(args). Order of `dfrt --help`.
COMMANDS = {
    "infer": "answer a question about a video",
    "batch": "answer a JSONL file of video questions, resumably; one JSON line each (--ray: on a cluster)",
    "info": "versions, execution providers, GPU and model configs",
    "eval": "accuracy: the demo's held-out clips (DynFocus vs uniform vs random frames) or your own "
    "labelled videos (--dataset)",
    "export": "export a bundle (DynFocus graphs, or a SmolVLM2 checkpoint) as validated ONNX graphs + GGUF",
    "pull": "download public weights (LLaMA-VID, open VLMs) and convert them to a bundle (needs internet)",
    "build": "FP16/INT8 graphs calibrated on your videos, and TensorRT engines",
    "check": "check a bundle's ONNX graphs against TensorRT's ONNX parser (static, no GPU)",
    "serve": "an OpenAI-compatible video question server and a page to try it (--ray: on a cluster)",
    "watch": "watch a camera or stream; answer questions about its last seconds (stdin, --every)",
    "bench": "measure tokens, scaling, memory and latency; check the budget properties",
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default unless it already names one (flags and required options
    have none to show); ``none`` where the option is simply off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.nargs == 0
            or action.required
            or action.default is argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return text
        value = "none" if action.default in (None, [], ()) else "%(default)s"
        return f"{text} (default: {value})" if text else f"default: {value}"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the verb in ``argv`` (every verb when ``argv`` is None) gets its options."""
    parser = argparse.ArgumentParser(
        prog="dfrt",
        description="video question answering with question-aware key frames and a token budget: DynFocus "
        "and open VLMs (SmolVLM2) on TensorRT, ONNX Runtime and llama.cpp",
    )
    parser.add_argument("--version", action="version", version=f"dfrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = set(COMMANDS) if argv is None else {next((a for a in argv if a in COMMANDS), "")}
    for name, help_line in COMMANDS.items():
        command = sub.add_parser(
            name, help=help_line, description=help_line, formatter_class=DefaultsHelpFormatter
        )
        # after the verb too (`dfrt infer ... -v`); SUPPRESS: absent there, the top-level flag stands
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as dfrt -v"
        )
        if name in chosen:
            importlib.import_module(f"dfrt.commands.{name}").register(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
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
        _line(f"dfrt: error: {e}")
        return e.exit_code
    except OSError as e:  # disk full, permission denied, a directory where a file should be: not a bug
        if args.verbose:
            log.exception("failed")
        _line(f"dfrt: error: {e}")
        return 1
    except KeyboardInterrupt:
        _line("dfrt: interrupted")
        return 130
    except Exception as e:  # the last net: a bug, still one line (the traceback with -v)
        if args.verbose:
            log.exception("internal error")
        message = " ".join(str(e).split())
        print(
            f"dfrt: internal error: {type(e).__name__}: {message} (run with -v for the traceback)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


def _line(text: str) -> None:
    """One stderr line in one write (a thread silencing fd 2 for FFmpeg cannot split it from its newline)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
