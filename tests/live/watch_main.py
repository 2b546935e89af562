"""``dfrt watch`` for the tests while ``dfrt.cli`` does not list the verb yet: the same parser and errors."""

from __future__ import annotations

import argparse
import logging
import sys

from dfrt.commands import watch
from dfrt.errors import DfrtError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dfrt watch")
    parser.add_argument("-v", "--verbose", action="store_true")
    watch.register(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        return args.run(args)
    except DfrtError as e:
        print(f"dfrt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
