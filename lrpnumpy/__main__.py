"""Command line: ``python -m lrpnumpy demo`` (and, with the verify module, ``verify``)."""

import argparse
import sys

from .errors import LRPError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lrpnumpy", description="Layer-wise Relevance Propagation in NumPy")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain a small built-in network and print the conservation table")
    demo.add_argument("--composite", default="epsilon_gamma_box")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run
            run(args.composite)
    except LRPError as exc:
        print(f"lrpnumpy: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
