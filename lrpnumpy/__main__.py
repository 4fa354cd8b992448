"""Command line: ``lrpnumpy demo`` and ``lrpnumpy verify MODEL``."""

import argparse
import json
import sys

import numpy as np

from .errors import LRPError, ModelFormatError

def _load_model(name):
    from .zoo import MODELS
    if name in MODELS:
        return MODELS[name]()
    from .io import load_model
    return load_model(name)


def _verify(args):
    from . import verify
    from .composites import get
    from .explain import explain
    from .errors import ShapeError
    net = _load_model(args.model)
    if args.input:
        x = _read_input(args.input)
    elif getattr(net, "input_shape", None):
        x = np.random.default_rng(args.seed).random((args.batch,) + tuple(net.input_shape))
    else:
        raise ShapeError(f"{args.model}: the model does not record its input shape; pass --input X.npy")
    rows = verify.compare(net, x, target=args.target, against=args.against, methods=args.rules, rtol=args.rtol)
    method = next((r["method"] for r in rows if r["method"] in verify.ZENNIT_COMPOSITES), None)
    report = None
    if method:
        report = explain(net.astype(np.float64), x.astype(np.float64), args.target,
                         composite=get(method, data=x)).conservation()
    if args.json:
        print(json.dumps({"rows": rows, "conservation": report.to_dict() if report else None,
                          "conservation_method": method}, indent=2))
    else:
        print(verify.format_rows(rows, args.rtol))
        if report:
            print(f"\nper-layer conservation, lrpnumpy {method} (sums over the batch):\n{report}")
    if args.plot and report:
        from .viz import plot_conservation
        plot_conservation(report, title=f"{args.model}: {method}").savefig(args.plot, dpi=120)
    return 0 if all(r["passed"] for r in rows) else 1


def _read_input(path):
    """The ``--input`` array: a .npy file of floats (never a pickle)."""
    try:
        x = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ModelFormatError(f"--input {path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, EOFError) as exc:
        raise ModelFormatError(f"--input {path}: not a .npy array of numbers ({exc})") from None
    if not isinstance(x, np.ndarray):
        raise ModelFormatError(f"--input {path}: holds several arrays ({type(x).__name__}); give one .npy array")
    return x


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit code 2 (1 means "verification failed")."""

    def error(self, message):
        self.exit(2, f"lrpnumpy: error: {message} (see {self.prog} --help)\n")


def main(argv=None):
    parser = _Parser(prog="lrpnumpy", description="Layer-wise Relevance Propagation in NumPy")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="explain a small built-in network and print the conservation table")
    demo.add_argument("--composite", default="epsilon_gamma_box")
    ver = sub.add_parser("verify", help="compare lrpnumpy's relevance with Zennit and Captum")
    ver.add_argument("model", help="a model file (.npz, .onnx, .txt) or a built-in: lenet5, toolbox_lenet, vgg16")
    ver.add_argument("--input", help=".npy batch of inputs (default: random inputs of the model's shape)")
    ver.add_argument("--against", nargs="+", default=["zennit"], choices=["zennit", "captum"])
    ver.add_argument("--rules", nargs="+", help="method names, e.g. epsilon zplus epsilon_gamma_box")
    ver.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    ver.add_argument("--rtol", type=float, default=1e-10)
    ver.add_argument("--batch", type=_positive_int, default=2, help="random inputs: batch size")
    ver.add_argument("--seed", type=int, default=0)
    ver.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ver.add_argument("--plot", help="save the conservation plot to this PNG file")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run
            run(args.composite)
            return 0
        return _verify(args)
    except (LRPError, OSError) as exc:
        print(f"lrpnumpy: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("lrpnumpy: error: not enough memory (is the model's input_shape or --batch too large?)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
