"""Command line: ``lrpnumpy demo``, ``explain``, ``evaluate``, ``explain-dataset``, ``verify``, ``train`` and ``bench``.

One error path for every subcommand: an lrpnumpy error, an unreadable input, a non-real dtype or a
missing package is exit code 2 and one line on standard error (1 means "verification failed");
warnings are one line each too.
"""

import argparse
import contextlib
import json
import os
import sys
import warnings

import numpy as np

from .errors import (DatasetError, DTypeError, LRPError, MissingDependencyError, ModelFormatError, NonFiniteError,
                     RuleParameterError, ShapeError, WorkerError)

#: Images with more pixels than this are refused before they are decoded (Pillow's own default limit,
#: applied whatever ``PIL.Image.MAX_IMAGE_PIXELS`` is set to).
MAX_IMAGE_PIXELS = 89_478_485

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
    net = _load_model(args.model)
    if args.input:
        x = _fits(args.input, _read_input(args.input), net, args.model)
    elif getattr(net, "input_shape", None):
        x = np.random.default_rng(args.seed).random((args.batch,) + tuple(net.input_shape))
    else:
        raise ShapeError(f"{args.model}: the model does not record its input shape; pass --input X.npy")
    def progress(row):
        diff = f"max rel diff {row['max_rel']:.2e} " if row["max_rel"] is not None else ""
        print(f"  {row['method']} against {row['against']}: {diff}{verify._result(row)}", file=sys.stderr,
              flush=True)
    rows = verify.compare(net, x, target=args.target, against=args.against, methods=args.rules, rtol=args.rtol,
                          chunk=args.chunk, progress=progress)
    method = next((r["method"] for r in rows if r["method"] in verify.ZENNIT_COMPOSITES), None)
    report = None
    if method:
        net64 = net if net.dtype == np.float64 else net.astype(np.float64)
        report = explain(net64, x.astype(np.float64), args.target,
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
    return verify.exit_status(rows)


def _read_input(path):
    """The ``--input`` array: a .npy file of floats (never a pickle)."""
    try:
        x = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, EOFError) as exc:
        raise ModelFormatError(f"{path}: not a .npy array of numbers ({exc})") from None
    if not isinstance(x, np.ndarray):
        raise ModelFormatError(f"{path}: holds several arrays ({type(x).__name__}); give one .npy array")
    _check_real(x.dtype, path)
    return x


def _check_real(dtype, path):
    """Refuse what is not real numbers (strings, records, objects, complex, datetimes, booleans): never cast."""
    if dtype.kind not in "fiu" or dtype.fields is not None:
        raise DTypeError(f"{path}: holds {dtype} values; expected real numbers (floats in the model's input range, "
                         f"or uint8 pixels 0-255)")


def _scaled(x, path, net, input_range=None):
    """Floats as they are (in the network's dtype); uint8 pixels 0..255 scaled to the model's input range, as
    images are; other integers refused (their scale is unknown)."""
    dtype = np.dtype(net.dtype or np.float64)
    if x.dtype == np.uint8:
        low, high = _input_range(net, input_range)
        return (low + (high - low) * (np.asarray(x, dtype=np.float64) / 255.0)).astype(dtype)
    if x.dtype.kind in "iu":
        raise DTypeError(f"{path}: holds {x.dtype} values; give floats in the model's input range, or uint8 pixels "
                         f"0-255 (scaled to the input range like images)")
    if x.dtype == dtype:
        return x
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.asarray(x).astype(dtype)
    if not np.isfinite(y).all() and np.isfinite(x).all():
        raise NonFiniteError(f"{path}: holds values up to {float(np.abs(x).max()):.4g}, beyond {dtype}'s range "
                             f"(the model's dtype)")
    return y


def _input_range(net, input_range=None):
    """``--input-range``, else the model's metadata, else [0, 1]."""
    value = input_range or net.meta.get("input_range", [0.0, 1.0])
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelFormatError(f"the model's input_range must be two numbers [low, high], got {value!r:.80}") \
            from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ModelFormatError(f"the input range must be finite with low <= high, got [{low}, {high}]")
    return low, high


def _fits(path, x, net, name="the model"):
    """``x`` as a batch (one sample of the model's recorded input shape gains a batch axis); an input the
    model cannot take is refused with a ShapeError that names the shape it expects."""
    shape = tuple(getattr(net, "input_shape", None) or ())
    if not shape:
        return x
    x = x[None] if x.shape == shape else x
    try:
        bad = x.shape[1:] != shape and not net.output_shape((1,) + x.shape[1:])
    except LRPError:
        bad = True
    if bad:
        dims = " x ".join(str(d) for d in shape)
        raise ShapeError(f"{path}: an array of shape {x.shape}, but {name} expects {dims} inputs (one sample of "
                         f"shape {shape} or a batch (N, {', '.join(str(d) for d in shape)}))")
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


def _read_inputs(paths, net, input_range=None):
    """The input batch from .npy files (a batch or one sample) or images (PNG/JPEG, via Pillow)."""
    shape = tuple(net.input_shape or ())
    parts = []
    for path in paths:
        if path.lower().endswith(".npy"):
            parts.append(_fits(path, _scaled(_read_input(path), path, net, input_range), net))
            continue
        if not shape or len(shape) != 3:
            raise ShapeError(f"{path}: an image input needs a model that records its (C, H, W) input shape")
        a = _read_image(path, shape)
        low, high = _input_range(net, input_range)
        a = low + (high - low) * (a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        parts.append(a[None].astype(net.dtype or np.float64))
    try:
        x = np.concatenate(parts)
    except ValueError as exc:
        raise ShapeError(f"the inputs do not stack into one batch ({exc})") from None
    return x if x.dtype == (net.dtype or x.dtype) else x.astype(net.dtype)


def _read_image(path, shape):
    """An image file as floats in [0, 1] at the model's (C, H, W) size; its declared size is checked before it
    is decoded, and anything Pillow's decoders raise is a one-line error."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError("image inputs need Pillow: pip install 'lrpnumpy[data]'") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DatasetError(f"{path}: declares {width} x {height} pixels, more than lrpnumpy reads "
                                       f"({MAX_IMAGE_PIXELS}); resize it first")
                im = im.convert("L" if shape[0] == 1 else "RGB").resize((shape[2], shape[1]))
                return np.asarray(im, dtype=np.float64) / 255.0
    except (LRPError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(f"{path}: refused ({exc})") from None
    except Exception as exc:  # a hostile file can make a decoder raise anything: OSError, SyntaxError, ...
        raise DatasetError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc)[:200]})") from None


def _npy_path(path):
    """Where ``--npy PATH`` writes: PATH/relevance.npy for a folder (never a hidden PATH/.npy), else PATH with
    ``.npy`` added when it lacks it (as numpy.save does)."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        if not os.path.isdir(path):
            raise DatasetError(f"--npy {path}: no such folder")
        return os.path.join(path, "relevance.npy")
    return path if path.endswith(".npy") else path + ".npy"


def _explain(args):
    from . import composites, methods, rules, viz
    from .explain import explain
    net = _load_model(args.model)
    x = _read_inputs(args.inputs, net, args.input_range)
    if args.method:  # Grad-CAM's map is drawn at the input's size
        e = methods.get(args.method)(net, x, args.target, **({"upsample": "bilinear"}
                                                               if args.method == "grad_cam" else {}))
    elif args.rule:
        e = explain(net, x, args.target, rule=rules.get(args.rule))
    else:
        e = explain(net, x, args.target, composite=composites.get(args.composite, data=x))
    classes = net.meta.get("classes")
    rows = []
    for i in range(len(x)):
        pred, t = int(e.output[i].argmax()), int(e.target[i])
        row = dict(input=i, predicted=pred, target=t, logit=float(e.output[i, t]),
                   relevance_sum=float(e.relevance[i].sum()))
        if classes:
            row.update(predicted_class=classes[pred], target_class=classes[t])
        if e.layers is not None:
            row["absorbed_by_biases"] = float(sum(r["bias"] for r in e.conservation().to_dict(sample=i)))
        rows.append(row)
    if args.npy:
        args.npy = _npy_path(args.npy)
        np.save(args.npy, e.relevance)
    if args.out:
        name = args.rule or args.method or args.composite
        viz.save(viz.grid({name: e.relevance}, images=x,
                          titles=[r.get("target_class", str(r["target"])) for r in rows]), args.out)
    if args.json:
        print(json.dumps({"rows": rows, "out": args.out, "npy": args.npy}, indent=2))
    else:
        for r in rows:
            label = f" ({r['predicted_class']!r})" if classes else ""
            bias = f", biases absorbed {r['absorbed_by_biases']:+.4f}" if "absorbed_by_biases" in r else ""
            print(f"input {r['input']}: predicted {r['predicted']}{label}, target {r['target']}, logit "
                  f"{r['logit']:.4f}, sum of relevance {r['relevance_sum']:.4f}{bias}")
        _wrote(args.out, args.npy)
    return 0


def _wrote(*paths):
    for path in paths:
        if path:
            print(f"wrote {path}")


def _train(args):
    import importlib.util
    from .datasets import DATA_DIR  # the shipped models (package data); the recipes are in the repository's data/
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "make_models.py")
    spec = importlib.util.spec_from_file_location("make_models", script)
    if spec is None or not os.path.exists(script):
        raise ModelFormatError(f"{script}: the training recipes are not there; they come with the repository "
                               f"(data/make_models.py), not with an installed package: run train from a checkout")
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    if args.model not in recipes.MODELS:
        raise RuleParameterError(f"unknown model {args.model!r}; known: {', '.join(sorted(recipes.MODELS))}")
    recipes.make(args.model, args.epochs or recipes.EPOCHS[args.model], args.fashion_mnist, args.out or DATA_DIR)
    return 0


def _bench(args):
    import subprocess
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          f"{args.script}.py")
    if not os.path.exists(script):
        raise ModelFormatError(f"{script}: the benchmark scripts are in the repository's benchmarks/ folder")
    return subprocess.call([sys.executable, script] + args.args)


def _method_by_name(name, x):
    """A method for evaluate: a registered method, a composite name (LRP), or "random"."""
    from . import composites, evaluate, methods
    from .explain import explain
    if name == "random":
        return evaluate.random_relevance
    if name in composites.REGISTRY:
        composite = composites.get(name, data=x)
        return lambda model, v, t: explain(model, v, t, composite=composite)
    usable = [m for m in methods.REGISTRY if m not in ("lrp", "grad_cam", "pattern_net", "pattern_attribution")]
    if name in usable:  # (Grad-CAM's map is not input-sized; the pattern methods need fitted patterns)
        return methods.get(name)
    raise RuleParameterError(f"unknown method {name!r} for evaluate: use a composite ({', '.join(composites.REGISTRY)})"
                             f", a method ({', '.join(usable)}) or random")


def _evaluate(args):
    from . import evaluate
    net = _load_model(args.model)
    x = _read_inputs(args.inputs, net, args.input_range)
    methods = {name: _method_by_name(name, x) for name in args.methods}
    options = {"pixel_flipping": dict(features_per_step=args.features_per_step, steps=args.steps),
               "region_perturbation": dict(patch=args.patch, steps=args.steps),
               "selectivity": dict(steps=args.steps)}
    table = evaluate.compare(net, x, methods, metrics=args.metrics, target=args.target, options=options)
    print(table.to_json() if args.json else table)
    if args.csv:
        table.to_csv(args.csv)
    if args.plot:
        from . import viz
        viz.save(table.plot(next((m for m in args.metrics if m in ("pixel_flipping", "region_perturbation",
                                                                    "selectivity")), "pixel_flipping")), args.plot)
    if not args.json:
        _wrote(args.csv, args.plot)
    return 0


class _Converted:
    """A data set read chunk by chunk in the network's dtype (uint8 pixels scaled to the input range)."""

    def __init__(self, data, path, net, input_range=None):
        self.data, self.path, self.net, self.input_range = data, path, net, input_range
        _scaled(data[:1], path, net, input_range)  # refused now, not in a task

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return _scaled(np.asarray(self.data[index]), self.path, self.net, self.input_range)


def _read_dataset(path, net, input_range=None):
    """explain-dataset's data: a .npy array (memory-mapped, read one chunk at a time) or an IDX file."""
    from .datasets import load_idx
    if path.lower().endswith(".npy"):
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except (ValueError, EOFError, TypeError) as exc:
            raise DatasetError(f"{path}: not a .npy array of numbers ({type(exc).__name__}: {str(exc)[:200]})") \
                from None
        if not isinstance(data, np.ndarray):
            raise DatasetError(f"{path}: holds {type(data).__name__}; give one .npy array")
    else:  # an IDX file (MNIST, Fashion-MNIST): (N, H, W) images get their channel axis
        data = load_idx(path)
        data = data[:, None] if data.ndim == 3 else data
    _check_real(data.dtype, path)
    if data.ndim < 2 or len(data) == 0:
        raise ShapeError(f"{path}: holds an array of shape {data.shape}; expected a batch (N, ...) of inputs")
    dtype = np.dtype(net.dtype or np.float64)
    return data if data.dtype == dtype else _Converted(data, path, net, input_range)


def _local_cluster(workers, stack):
    """A Client of a local cluster of ``workers`` processes, closed (then the cluster) when ``stack`` exits;
    distributed's log lines are held back meanwhile: a failure is the command's one error line."""
    import logging
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise MissingDependencyError(f"--workers needs dask.distributed ({exc}): pip install 'lrpnumpy[dask]'") \
            from None
    logger = logging.getLogger("distributed")
    stack.callback(logger.setLevel, logger.level)
    logger.setLevel(logging.CRITICAL)
    try:
        cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address=None))
        return stack.enter_context(Client(cluster))
    except Exception as exc:  # (distributed raises RuntimeError, OSError, TimeoutError, ...)
        raise WorkerError(f"--workers {workers}: a local Dask cluster cannot start ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None


def _explain_dataset(args):
    from . import composites, parallel
    net = _load_model(args.model)
    data = _read_dataset(args.data, net)
    kwargs = dict(method=args.method) if args.method else dict(
        composite=composites.get(args.composite, data=np.asarray(data[:args.batch_size])))
    with contextlib.ExitStack() as stack:
        scheduler = _local_cluster(args.workers, stack) if args.workers else args.scheduler
        result = parallel.explain_dataset(net, data, target=args.target, batch_size=args.batch_size,
                                          scheduler=scheduler, out=args.out, progress=not args.quiet,
                                          overwrite=args.overwrite, **kwargs)
    relevance = parallel.load(result) if args.out else result
    if args.npy:
        args.npy = _npy_path(args.npy)
        np.save(args.npy, relevance)
    print(f"explained {len(relevance)} inputs; sum of relevance per input: mean "
          f"{relevance.reshape(len(relevance), -1).sum(axis=1).mean():.6g}")
    _wrote(args.out, args.npy)
    return 0


def _spray(args):
    from .spray import cli
    return cli(args, _load_model)


def _error(message):
    """Exit code 2 and one line, whatever the message holds."""
    print("lrpnumpy: error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


def _warn(message, category, filename, lineno, file=None, line=None):
    print(f"lrpnumpy: warning: {message}", file=sys.stderr)


def main(argv=None):
    from . import __version__
    parser = _Parser(prog="lrpnumpy", description="Layer-wise Relevance Propagation in NumPy")
    parser.add_argument("--version", action="version", version=f"lrpnumpy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="explain shipped Fashion-MNIST test images with a shipped trained model and "
                                       "write a figure comparing five explanations")
    demo.add_argument("--out", default="lrpnumpy_demo.png", help="the figure (PNG or PDF; default %(default)s)")
    demo.add_argument("--model", default="fashion_cnn_maxpool",
                      help="a shipped model: fashion_cnn_maxpool (default), fashion_cnn_sumpool, fashion_mlp")
    exp = sub.add_parser("explain", help="explain a model's predictions for images or .npy inputs")
    exp.add_argument("model", help="a model file (.npz, .onnx, .txt, .prototxt) or a built-in name")
    exp.add_argument("inputs", nargs="+", help=".npy arrays (a batch or one sample) or PNG/JPEG images "
                                               "(converted, resized and scaled to the model's input range)")
    how = exp.add_mutually_exclusive_group()
    how.add_argument("--composite", default="epsilon_plus", help="a composite name (default %(default)s)")
    how.add_argument("--rule", help="one rule on every Linear/Conv2d layer: NAME[:key=value,...], e.g. "
                                    "epsilon:epsilon=0.25")
    how.add_argument("--method", help="another explanation method instead of LRP's composites: "
                                      "gradient, sensitivity, gradient_x_input, interior_gradients, "
                                      "integrated_gradients, smoothgrad, simple_taylor, deconvnet, guided_backprop, "
                                      "deeplift, occlusion, grad_cam (each with its defaults)")
    exp.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    exp.add_argument("--input-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                     help="image pixels 0..255 are scaled to [LOW, HIGH] (default: the model's metadata, else 0 1)")
    exp.add_argument("--out", help="write the heatmaps to this PNG/PDF")
    exp.add_argument("--npy", help="write the relevance to this .npy file")
    exp.add_argument("--json", action="store_true", help="print JSON")
    ver = sub.add_parser("verify", help="compare lrpnumpy's relevance with Zennit and Captum (needs the "
                                        "'reference' extra; lenet5 takes seconds, vgg16 about 7 minutes and "
                                        "4.4 GB of memory in float64, one sample at a time)")
    ver.add_argument("model", help="a model file (.npz, .onnx, .txt) or a built-in: lenet5, toolbox_lenet, vgg16")
    ver.add_argument("--input", help=".npy batch of inputs (default: random inputs of the model's shape)")
    ver.add_argument("--against", nargs="+", default=["zennit"], choices=["zennit", "captum"],
                     help="the implementations to compare with (default: zennit)")
    ver.add_argument("--rules", nargs="+", help="method names, e.g. epsilon zplus epsilon_gamma_box")
    ver.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    ver.add_argument("--rtol", type=float, default=1e-10,
                     help="a method passes when its largest difference is at most rtol times the reference's "
                          "largest value (default %(default)g)")
    ver.add_argument("--batch", type=_positive_int, default=2, help="random inputs: batch size")
    ver.add_argument("--seed", type=int, default=0, help="seed of the random inputs and of SmoothGrad's noise")
    ver.add_argument("--chunk", type=_positive_int, default=1,
                     help="samples both sides explain at a time (default %(default)s: the least memory; the results "
                          "do not depend on it)")
    ver.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ver.add_argument("--plot", help="save the conservation plot to this PNG file")
    ev = sub.add_parser("evaluate", help="score explanation methods by pixel flipping and other metrics (one table)")
    ev.add_argument("model", help="a model file (.npz, .onnx, .txt, .prototxt) or a built-in name")
    ev.add_argument("inputs", nargs="+", help=".npy arrays or PNG/JPEG images, as for explain")
    ev.add_argument("--methods", nargs="+", default=["epsilon_plus", "gradient", "random"],
                    help="composite names (LRP), method names or random (default: %(default)s)")
    ev.add_argument("--metrics", nargs="+", default=["pixel_flipping"], choices=["pixel_flipping",
                    "region_perturbation", "selectivity", "continuity", "class_sensitivity", "randomization"],
                    help="default: %(default)s")
    ev.add_argument("--features-per-step", type=_positive_int, default=1, help="pixel flipping: pixels per step")
    ev.add_argument("--patch", type=_positive_int, default=9, help="region perturbation: patch size (default 9)")
    ev.add_argument("--steps", type=_positive_int, help="perturbation steps (default: until all are removed)")
    ev.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    ev.add_argument("--input-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                    help="image pixels 0..255 are scaled to [LOW, HIGH] (default: the model's metadata)")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--csv", help="write the table to this CSV file")
    ev.add_argument("--plot", help="write the perturbation curves to this PNG/PDF")
    ds = sub.add_parser("explain-dataset", help="explain a whole data set in chunks, serially or on Dask (threads, "
                                                "processes, or --workers N local worker processes)")
    ds.add_argument("model", help="a model file (.npz, .onnx, .txt, .prototxt) or a built-in name")
    ds.add_argument("data", help="a .npy array (read chunk by chunk, memory-mapped) or an IDX images file")
    dhow = ds.add_mutually_exclusive_group()
    dhow.add_argument("--composite", default="epsilon_plus", help="a composite name (default %(default)s)")
    dhow.add_argument("--method", help="a method name instead of LRP (e.g. gradient)")
    ds.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    ds.add_argument("--batch-size", type=_positive_int, default=256, help="inputs per chunk (default %(default)s)")
    ds.add_argument("--scheduler", choices=["threads", "processes", "synchronous"],
                    help="a Dask scheduler (default: serial in this process)")
    ds.add_argument("--workers", type=_positive_int, help="start a local Dask cluster of this many worker processes")
    ds.add_argument("--out", help="a folder for the chunks and a manifest of the run (resumable: the same command "
                                  "computes only the missing chunks; another run into it is refused)")
    ds.add_argument("--overwrite", action="store_true", help="replace the chunks and manifest in --out, whatever "
                                                             "run made them")
    ds.add_argument("--npy", help="write all the relevance to this .npy file")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    tr = sub.add_parser("train", help="train a shipped Fashion-MNIST model again (data/make_models.py)")
    tr.add_argument("model", help="fashion_mlp, fashion_cnn_sumpool or fashion_cnn_maxpool")
    tr.add_argument("--epochs", type=_positive_int, help="default: the recipe's")
    tr.add_argument("--fashion-mnist", help="folder with the IDX files (default: Debian's dataset-fashion-mnist)")
    tr.add_argument("--out", help="folder to write the model to (default: lrpnumpy/data/, the shipped ones)")
    bench = sub.add_parser("bench", help="run a benchmark script (bench_lrp, compare_zennit, fuzz) with its "
                                         "arguments")
    bench.add_argument("script", choices=["bench_lrp", "compare_zennit", "fuzz"])
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script")
    from .spray import add_parser as _spray_parser
    _spray_parser(sub, _positive_int)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warn  # one line each (catch_warnings restores the handler)
        return _run(args)


def _run(args):
    try:
        if args.command == "demo":
            from .demo import run
            run(args.out, args.model)
            return 0
        return {"explain": _explain, "evaluate": _evaluate, "explain-dataset": _explain_dataset, "verify": _verify,
                "train": _train, "bench": _bench, "spray": _spray}[args.command](args)
    except (LRPError, OSError) as exc:
        return _error(exc)
    except ImportError as exc:  # an optional package lrpnumpy does not wrap yet, or a broken installation
        return _error(f"cannot import {exc.name or 'a package'} ({exc}); install it, e.g. pip install "
                      f"'lrpnumpy[data,dask,onnx]'")
    except MemoryError:
        print("lrpnumpy: error: not enough memory (is the model's input_shape or --batch too large?)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
