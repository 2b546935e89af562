"""`dfrt check BUNDLE`: will TensorRT's ONNX parser take every graph of the bundle? Static, no GPU needed."""

from __future__ import annotations

import argparse
import json

from dfrt.commands import progress


def register(p: argparse.ArgumentParser) -> None:
    from dfrt.export.tensorrt_check import DEFAULT_TARGET, TARGETS  # stdlib only at import: no onnx

    p.add_argument("bundle", help="bundle directory (dfrt.json and its ONNX graphs)")
    p.add_argument(
        "--tensorrt",
        default=DEFAULT_TARGET,
        metavar="VERSION",
        help=f"TensorRT release to check for: {', '.join(TARGETS)} (default {DEFAULT_TARGET}, JetPack 6)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per finding and a summary; a :class:`~dfrt.errors.BuildError` if any is an error."""
    from dfrt.errors import BuildError
    from dfrt.export.tensorrt_check import check_bundle

    progress(f"checking {args.bundle} for TensorRT {args.tensorrt}")
    report = check_bundle(args.bundle, args.tensorrt)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for finding in report.findings:
            print(finding)
        print(report.summary())
    if report.errors:
        first = report.errors[0]
        more = len(report.errors) - 1
        raise BuildError(
            f"{args.bundle}: TensorRT {report.target} would refuse it: {first}"
            + (f" (and {more} more error{'s' * (more != 1)})" if more else "")
        )
    return 0
