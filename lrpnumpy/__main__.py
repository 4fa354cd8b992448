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

def _builtin_help():
    """The built-in model names, for every subcommand's --help: trained ones, then the random-weight ones."""
    from .zoo import MODELS, TEXT_TRAINED, TRAINED
    return (f"a model file (.npz, .onnx, .txt, .prototxt) or a built-in name: trained on Fashion-MNIST "
            f"{', '.join(TRAINED)}; on text (--text) {', '.join(TEXT_TRAINED)}; RANDOM WEIGHTS (untrained "
            f"architectures, for tests and timing; their predictions mean nothing): {', '.join(MODELS)}")


#: What a subcommand's model argument takes besides a file or a built-in name.
_MODEL_HELP = {"verify": "; or your own torch module FILE.py:NAME (NAME: a module, a Module class, or a function "
                         "making one that loads its weights; needs --input): converted with lrpnumpy.io.from_torch "
                         "and compared on the module itself, canonized for Zennit (BatchNorm merged, + made Zennit's "
                         "Sum); random-weight built-ins are fine here (any weights compare implementations)"}


def _load_model(name, warn=True):
    """A model file or a built-in name: a shipped trained model, or a random-weight architecture (with a
    one-line warning saying so, unless ``warn`` is False: verify compares implementations, for which any
    weights do)."""
    from .zoo import MODELS, TEXT_TRAINED, TRAINED, trained
    if name in TRAINED + TEXT_TRAINED:
        return trained(name)
    if name in MODELS:
        if warn:
            _warn_random(name)
        return MODELS[name]()
    from .io import load_model
    return load_model(name)


def _warn_random(name):
    """The one-line warning that a built-in model has random weights (nothing for other models)."""
    from .zoo import MODELS, TRAINED
    if name in MODELS:
        warnings.warn(f"{name} has random weights (an untrained architecture for tests and timing): its "
                      f"predictions and explanations mean nothing; the trained built-in models are "
                      f"{', '.join(TRAINED)}", stacklevel=2)


def _verify(args):
    from . import verify
    from .composites import get
    from .explain import explain
    module = _user_torch_module(args.model) if _is_torch_spec(args.model) else None
    if module is not None:  # the user's own torch module: converted with from_torch, the references run on it
        from .io import from_torch
        if not args.input:
            raise ShapeError(f"{args.model}: a torch module needs --input X.npy (an example batch it accepts)")
        x = _read_input(args.input)
        if x.dtype.kind != "f":
            raise DTypeError(f"{args.input}: holds {x.dtype} values; a torch module's example input must be floats")
        x = x.astype(np.float64)
        net = from_torch(module, x)
    else:
        net = _load_model(args.model, warn=False)
        if args.input:
            x = _fits(args.input, _read_input(args.input), net, args.model)
        elif (getattr(net, "meta", None) or {}).get("text"):  # a text model: the shipped test quotations
            from .text import fortunes, text_model
            x = text_model(net).inputs(fortunes().texts[:args.batch])[0]
        elif getattr(net, "input_shape", None):
            x = np.random.default_rng(args.seed).random((args.batch,) + tuple(net.input_shape))
        else:
            raise ShapeError(f"{args.model}: the model does not record its input shape; pass --input X.npy")
    def progress(row):
        diff = f"max rel diff {row['max_rel']:.2e} " if row["max_rel"] is not None else ""
        print(f"  {row['method']} against {row['against']}: {diff}{verify._result(row)}", file=sys.stderr,
              flush=True)
    rows = verify.compare(net, x, target=args.target, against=args.against, methods=args.rules, rtol=args.rtol,
                          chunk=args.chunk, progress=progress, torch_module=module)
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
            print(f"\nper-layer conservation, lrpnumpy {method}:\n{report}")
    if args.plot and report:
        from .viz import plot_conservation
        plot_conservation(report, title=f"{args.model}: {method}").savefig(args.plot, dpi=120)
    return verify.exit_status(rows)


def _is_torch_spec(text):
    path, sep, name = str(text).rpartition(":")
    return bool(sep and name and path.endswith(".py"))


def _user_torch_module(spec):
    """The torch module ``FILE.py:NAME`` names: NAME is a module instance, a torch.nn.Module class or a function
    made without arguments (loading its own weights).  The file is the user's own code, and is run."""
    import importlib.util
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: no such file (a torch module is given as FILE.py:NAME)")
    try:
        import torch
        loader = importlib.util.spec_from_file_location(f"_lrpnumpy_user_{os.path.basename(path)[:-3]}", path)
        code = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(code)
        obj = getattr(code, name)
        module = obj if isinstance(obj, torch.nn.Module) else obj()
    except ImportError:
        raise
    except AttributeError:
        raise ModelFormatError(f"{path} has no {name!r}") from None
    except Exception as exc:  # the user's code can raise anything: one line naming it
        raise ModelFormatError(f"{spec}: making the module raised {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelFormatError(f"{spec} gave {type(module).__name__}, not a torch.nn.Module")
    return module


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


#: Parameters the command line gives itself, or that take arrays (baselines, noise), callables or rule maps: not
#: options.
_NOT_OPTIONS = {"model", "x", "target", "rule", "composite", "relevance_out", "mask", "patterns", "alphas", "noise",
                "baseline", "method", "data", "bounds"}


def _option_names(factory):
    """The keyword options ``NAME:key=value`` may set: ``factory``'s named parameters (introspected)."""
    import inspect
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in _NOT_OPTIONS]


def _value(text):
    """An option's value: an int, a float, true/false, none, or else the text itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _spec(kind, text, registry, numbers_only=False):
    """``(name, options)`` from ``NAME`` or ``NAME:key=value,key=value`` (the syntax of --rule, --composite and
    --method alike): an unknown name is refused with the known ones, an unknown option with the accepted ones
    (read from the signature of what the name builds)."""
    name, _, rest = str(text).partition(":")
    name = name.strip()
    if name not in registry:
        raise RuleParameterError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    accepted = _option_names(registry[name])
    options = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = (t.strip() for t in part.partition("="))
        if not eq or not key:
            raise RuleParameterError(f"{kind} {text!r}: options are key=value, got {part!r}")
        if key not in accepted:
            raise RuleParameterError(f"{kind} {name!r} has no option {key!r}; accepted: "
                                     f"{', '.join(accepted) if accepted else 'none'}")
        options[key] = _value(value)
        if numbers_only and not isinstance(options[key], bool):
            if not isinstance(options[key], (int, float)):
                raise RuleParameterError(f"{kind} {text!r}: {key} must be a number, got {value!r}")
            options[key] = float(options[key])
    return name, options


def _rule(text):
    from .rules import REGISTRY
    name, options = _spec("rule", text, REGISTRY, numbers_only=True)
    try:
        return REGISTRY[name](**options)
    except TypeError as exc:  # a required option missing (zbox's low and high)
        raise RuleParameterError(f"rule {text!r}: {exc}; accepted options: "
                                 f"{', '.join(_option_names(REGISTRY[name]))}") from None


def _composite(text, x):
    from . import composites
    name, options = _spec("composite", text, composites.REGISTRY, numbers_only=True)
    return composites.get(name, data=x, **options)


#: Methods that need more than the command line gives (patterns fitted on training data).
_NEEDS_PATTERNS = ("pattern_net", "pattern_attribution")


def _usable_methods():
    from . import methods
    return {k: v for k, v in methods.REGISTRY.items() if k not in _NEEDS_PATTERNS}


def _method_spec(text):
    """``(function, name, options)`` from ``NAME[:key=value,...]``; Grad-CAM's map is drawn at the input's size
    unless its upsample option says otherwise."""
    usable = _usable_methods()
    name = str(text).partition(":")[0].strip()
    if name in _NEEDS_PATTERNS:
        raise RuleParameterError(f"method {name!r} needs patterns fitted on training data "
                                 f"(lrpnumpy.methods.fit_patterns), which the command line does not do")
    name, options = _spec("method", text, usable)
    if name == "grad_cam":
        options.setdefault("upsample", "bilinear")
    return usable[name], name, options


def _method(text):
    """``method(model, x, target) -> Explanation`` from ``NAME[:key=value,...]``."""
    function, _, options = _method_spec(text)
    return lambda model, x, target=None: function(model, x, target, **options)


def _dataset_how(args, data):
    """The keywords of ``parallel.explain_dataset`` (explain-dataset, spray) from ``--composite``, ``--rule`` or
    ``--method``, each ``NAME[:key=value,...]`` as for explain.  A method with options is a ``functools.partial``
    of the registry's function: picklable for Dask's workers, and its options recorded in the manifest."""
    import functools
    if args.method:
        function, name, options = _method_spec(args.method)
        return {"method": functools.partial(function, **options) if options else name}
    if args.rule:
        return {"rule": _rule(args.rule)}
    return {"composite": _composite(args.composite, np.asarray(data))}


def _trained():
    from .zoo import TRAINED
    return TRAINED


def _methods_help():
    from .methods import REGISTRY
    return ", ".join(name for name in REGISTRY if name not in _NEEDS_PATTERNS)


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
    from . import viz
    from .explain import explain
    net = _load_model(args.model, warn=False)
    if args.text is not None or not args.inputs:
        return _explain_text(args, net)
    x = _read_inputs(args.inputs, net, args.input_range)
    _warn_random(args.model)  # once the inputs fit: a refused input stays the command's one line
    if not (args.method or args.rule or args.composite):
        args.composite = str(net.meta.get("composite", "epsilon_plus"))
    if args.method:
        e = _method(args.method)(net, x, args.target)
    elif args.rule:
        e = explain(net, x, args.target, rule=_rule(args.rule))
    else:
        e = explain(net, x, args.target, composite=_composite(args.composite, x))
    classes = net.meta.get("classes")
    rows = []
    for i in range(len(x)):
        pred, t = int(e.output[i].argmax()), int(e.target[i])
        row = dict(input=i, predicted=pred, target=t, logit=float(e.output[i, t]),
                   relevance_sum=float(e.relevance[i].sum()))
        if classes:
            row.update(predicted_class=classes[pred], target_class=classes[t])
        if e.layers is not None:  # where the explained logit went: the parts add up to it (rounding aside)
            ledger = e.conservation().to_dict(sample=i)
            for key, column in (("absorbed_by_biases", "bias"), ("absorbed_by_stabilizer", "stabilizer"),
                                ("dropped", "dropped")):
                row[key] = float(sum(r[column] for r in ledger))
            softmax = float(sum(r["softmax"] for r in ledger))
            if softmax:  # AttnLRP's softmax rule does not pass everything on, by design
                row["absorbed_by_softmax"] = softmax
            row["explained"] = float(e.layers[-1][i].sum())
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
            print(f"input {r['input']}: predicted {r['predicted']}{label}, target {r['target']}, " + _balance(r))
        _wrote(args.out, args.npy)
    return 0


def _explain_text(args, net):
    """``explain MODEL --text "..."``: the words with their relevance, the predicted class, the picture."""
    from . import viz
    from .text import text_model
    if args.text is None:
        raise ShapeError("explain needs inputs (.npy arrays or images) or --text \"...\" for a text model")
    if args.inputs:
        raise ShapeError("explain takes either inputs (.npy arrays or images) or --text, not both")
    tm = text_model(net)
    if args.method:
        _, ids, lengths = tm.inputs([args.text])
        name, options = _spec("method", args.method, _usable_methods())
        from . import methods
        e, per = tm.attribute(ids, lengths, methods.REGISTRY[name], args.target, **options)
    else:
        kwargs = {"rule": _rule(args.rule)} if args.rule else \
            {"composite": _composite(args.composite, None)} if args.composite else {}
        e, ids, lengths, per = tm.explain([args.text], args.target, **kwargs)
    from .text import UNK_ID, tokenize
    tokens = tokenize(args.text)[:int(lengths[0])]  # as written: a word outside the vocabulary is read as <unk>
    unknown = ids[0, :len(tokens)] == UNK_ID
    rel = [float(v) for v in per[0, :len(tokens)]]
    pred, t = int(e.output[0].argmax()), int(e.target[0])
    def name(k):
        return tm.classes[k] if k < len(tm.classes) else str(k)
    if args.npy:
        args.npy = _npy_path(args.npy)
        np.save(args.npy, np.array(rel))
    if args.out:
        viz.text(tokens, rel, title=f"{args.model}: relevance for {name(t)!r} (predicted {name(pred)!r})").save(args.out)
    if args.json:
        print(json.dumps({"tokens": tokens, "relevance": rel, "predicted": pred, "predicted_class": name(pred),
                          "unknown": unknown.tolist(), "target": t, "target_class": name(t),
                          "logit": float(e.output[0, t]),
                          "out": args.out, "npy": args.npy}, indent=2))
        return 0
    print(f"predicted {pred} ({name(pred)!r}), target {t} ({name(t)!r}), logit {float(e.output[0, t]):.4f}, "
          f"sum of relevance {sum(rel):.4f}")
    width = max(map(len, tokens))
    for tok, r, unk in zip(tokens, rel, unknown):
        print(f"  {tok:<{width}}  {r:+.4f}" + ("  (not in the vocabulary: read as <unk>)" if unk else ""))
    _wrote(args.out, args.npy)
    return 0


def _balance(row):
    """The per-image account: for LRP, the explained logit as the sum of the relevance that reached the
    input and what biases, stabilizers and the rules' dropped relevance took on the way (a rounding term
    only when it shows at the printed precision); for other methods, the logit and the sum of relevance."""
    if "explained" not in row:
        return f"logit {row['logit']:.4f}, sum of relevance {row['relevance_sum']:.4f}"
    parts = [("relevance at the input", row["relevance_sum"]), ("biases", row["absorbed_by_biases"]),
             ("stabilizer", row["absorbed_by_stabilizer"]), ("dropped", row["dropped"])]
    if "absorbed_by_softmax" in row:
        parts.append(("softmax", row["absorbed_by_softmax"]))
    rest = row["explained"] - sum(v for _, v in parts)
    if abs(rest) >= 5e-5:
        parts.append(("rounding", rest))
    text = f"{parts[0][0]} {parts[0][1]:.4f}" + "".join(
        f" {'-' if v < 0 else '+'} {name} {abs(v):.4f}" for name, v in parts[1:])
    what = "logit" if abs(row["explained"] - row["logit"]) <= 1e-6 * max(1.0, abs(row["logit"])) else \
        "explained output"
    return f"{what} {row['explained']:.4f} = {text}"


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
    if args.out:
        os.makedirs(args.out, exist_ok=True)
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
    """A method for evaluate, each ``NAME[:key=value,...]`` as explain takes it: a composite (LRP), a rule
    (LRP with that rule on every Linear/Conv2d layer), a method, or "random" (the baseline)."""
    from . import composites, evaluate, methods, rules
    from .explain import explain
    base = str(name).partition(":")[0].strip()
    if name == "random":
        return evaluate.random_relevance
    if base in composites.REGISTRY:
        composite = _composite(name, x)
        return lambda model, v, t: explain(model, v, t, composite=composite)
    if base in rules.REGISTRY:
        rule = _rule(name)
        return lambda model, v, t: explain(model, v, t, rule=rule)
    if base in methods.REGISTRY:
        return _method(name)
    raise RuleParameterError(f"unknown method {base!r} for evaluate: use a composite "
                             f"({', '.join(composites.REGISTRY)}), a rule ({', '.join(rules.REGISTRY)}), a method "
                             f"({_methods_help()}) or random")


#: Which way is better, per column of evaluate's table: perturbation curves remove the most relevant
#: features first, so a faithful explanation makes the score fall fast (a large AOPC, a small area under
#: the curve); continuity is a largest change of relevance per change of input (small: smooth); class
#: sensitivity is 1 - the similarity of different classes' explanations (large: class-specific);
#: randomization is the similarity to the explanation once every layer is random (near 0: it depends on
#: what the model learned).
_BETTER = {"aopc": "higher", "auc": "lower", "continuity": "lower", "class_sensitivity": "higher",
           "randomization": "nearer 0"}


def _better(column):
    return _BETTER.get(column, _BETTER.get(column.rpartition("_")[2], "?"))


def _notes(names, metrics):
    """What a reader of evaluate's table should not misread."""
    notes = []
    if "random" in names and "continuity" in metrics:
        notes.append("random's continuity is 0 because its (seeded) noise ignores the input, not because it is a "
                     "smooth explanation: it is the baseline of the perturbation metrics, not of continuity")
    if "random" in names and "randomization" in metrics:
        notes.append("random's randomization similarity is 1 because its noise ignores the model: the worst value")
    return notes


def _table_text(table, notes):
    """evaluate's table with a row saying which way is better for each column, then the notes."""
    columns = list(table.rows[0])
    better = {c: "(better)" if c == "method" else _better(c) for c in columns}
    cells = [{c: (f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in columns} for r in table.rows]
    width = {c: max(len(c), len(better[c]), *(len(r[c]) for r in cells)) for c in columns}

    def line(row):
        return "  ".join(f"{row[c]:<{width[c]}}" if c == "method" else f"{row[c]:>{width[c]}}" for c in columns)
    head = line({c: c for c in columns})
    return "\n".join([head, line(better), "-" * len(head)] + [line(r) for r in cells] +
                     [f"note: {n}" for n in notes])


def _plot_metrics(table, metrics, title):
    """One panel per metric asked for: the mean perturbation curves, or one bar per method for the others."""
    from .viz import _plt
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        if metric in ("pixel_flipping", "region_perturbation", "selectivity"):
            table.plot(metric, ax=ax)
            ax.set_title(f"{metric.replace('_', ' ')} (faster fall: better)", fontsize="medium")
        else:
            names = [r["method"] for r in table.rows]
            ax.barh(names, [r[metric] for r in table.rows])
            ax.invert_yaxis()
            ax.set_xlabel(metric.replace("_", " "))
            ax.set_title(f"{metric.replace('_', ' ')} ({_better(metric)} is better)", fontsize="medium")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _evaluate(args):
    from . import evaluate
    from .progress import bar
    net = _load_model(args.model, warn=False)
    x = _read_inputs(args.inputs, net, args.input_range)
    _warn_random(args.model)  # once the inputs fit: a refused input stays the command's one line
    methods = {name: _method_by_name(name, x) for name in args.methods}
    metrics = list(dict.fromkeys(args.metrics))
    options = {"pixel_flipping": dict(features_per_step=args.features_per_step, steps=args.steps),
               "region_perturbation": dict(patch=args.patch, steps=args.steps),
               "selectivity": dict(steps=args.steps)}
    rows, per_sample, curves = [], {}, {}
    progress = bar(len(methods), None, unit="method")
    try:
        for name, method in methods.items():  # one method at a time, so the progress bar can say which
            if progress is not None:
                progress.set_description(name)
            part = evaluate.compare(net, x, {name: method}, metrics=metrics, target=args.target, options=options)
            rows += part.rows
            per_sample.update(part.per_sample)
            curves.update(part.curves)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    table = evaluate.Comparison(rows, per_sample, curves)
    notes = _notes(methods, metrics)
    if args.json:
        print(json.dumps({"rows": table.rows, "better": {c: _better(c) for c in table.rows[0] if c != "method"},
                          "notes": notes}, indent=2))
    else:
        print(_table_text(table, notes))
    if args.csv:
        table.to_csv(args.csv)
    if args.plot:
        from . import viz
        viz.save(_plot_metrics(table, metrics, f"{args.model}: {len(x)} input{'s' * (len(x) != 1)}"), args.plot)
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
    if isinstance(data, np.memmap):  # a worker reads its own chunks of the file: tasks carry its path, not data
        from .sources import ArraySource, NpySource
        data = ArraySource(NpySource(path))  # (fingerprinted by content, as the memory map was)
    return data if data.dtype == dtype else _Converted(data, path, net, input_range)


def _local_cluster(workers, stack, dashboard=False):
    """A Client of a local cluster of ``workers`` processes, closed (then the cluster) when ``stack`` exits;
    distributed's log lines are held back meanwhile: a failure is the command's one error line.  No
    dashboard unless ``dashboard`` (then on a free port, its address printed)."""
    import logging
    from .parallel import cluster_options
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
                                                   host="127.0.0.1", **cluster_options(dashboard)))
        client = stack.enter_context(Client(cluster))
        if dashboard:
            print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        return client
    except Exception as exc:  # (distributed raises RuntimeError, OSError, TimeoutError, ...)
        raise WorkerError(f"--workers {workers}: a local Dask cluster cannot start ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None


def _explain_dataset(args):
    from . import parallel
    net = _load_model(args.model)
    data = _read_dataset(args.data, net)
    kwargs = _dataset_how(args, data[:args.batch_size or 256])
    with contextlib.ExitStack() as stack:
        if args.dashboard and not args.workers:
            raise RuleParameterError("--dashboard shows a local Dask cluster's dashboard: give --workers N too")
        scheduler = _local_cluster(args.workers, stack, args.dashboard) if args.workers else args.scheduler
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
    return cli(args, _load_model, _dataset_how)


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
                      help=f"a shipped trained model: {', '.join(_trained())} (default %(default)s)")
    exp = sub.add_parser("explain", help="explain a model's predictions for images, .npy inputs or a text")
    exp.add_argument("model", help="a model file (.npz, .onnx, .txt, .prototxt) or a built-in name")
    exp.add_argument("inputs", nargs="*", help=".npy arrays (a batch or one sample) or PNG/JPEG images "
                                               "(converted, resized and scaled to the model's input range)")
    exp.add_argument("--text", help="a text to explain instead of inputs (a text model: fortunes_bow, fortunes_cnn, "
                                    "fortunes_lstm, or a model with meta['text']): prints each word's relevance; "
                                    "--out writes the word heatmap (.html: HTML, else PNG/PDF)")
    how = exp.add_mutually_exclusive_group()
    how.add_argument("--composite", help="a composite: NAME[:key=value,...], e.g. epsilon_plus:epsilon=0.1 "
                                         "(default: the model's metadata 'composite', e.g. attnlrp for fashion_vit, "
                                         "else epsilon_plus; lrp_all for a text model with an LSTM or GRU)")
    how.add_argument("--rule", help="one rule on every Linear/Conv2d layer: NAME[:key=value,...], e.g. "
                                    "epsilon:epsilon=0.25")
    how.add_argument("--method", help="another explanation method instead of LRP's composites: NAME[:key=value,"
                                      "...], e.g. integrated_gradients:n=64, smoothgrad:n=50,noise_level=0.2 "
                                      f"(options: the method's parameters); {_methods_help()}")
    exp.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    exp.add_argument("--input-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                     help="image pixels 0..255 are scaled to [LOW, HIGH] (default: the model's metadata, else 0 1)")
    exp.add_argument("--out", help="write the heatmaps to this PNG/PDF")
    exp.add_argument("--npy", help="write the relevance to this .npy file")
    exp.add_argument("--json", action="store_true", help="print JSON")
    ver = sub.add_parser("verify", help="compare lrpnumpy's relevance with Zennit and Captum (needs the "
                                        "'reference' extra; lenet5 takes seconds, vgg16 about 7 minutes and "
                                        "4.4 GB of memory in float64, one sample at a time)")
    ver.add_argument("model")  # its help: _builtin_help() and _MODEL_HELP["verify"]
    ver.add_argument("--input", help=".npy batch of inputs (default: random inputs of the model's shape; needed "
                                     "with FILE.py:NAME)")
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
                    help="what explain takes, each NAME[:key=value,...]: composites (LRP), rules (LRP with one rule), "
                         "methods, or random (the baseline) (default: %(default)s)")
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
    ev.add_argument("--plot", help="write a figure of every metric asked for (the perturbation curves, bars for "
                                   "the others) to this PNG/PDF")
    ds = sub.add_parser("explain-dataset", help="explain a whole data set in chunks, serially or on Dask (threads, "
                                                "processes, or --workers N local worker processes)")
    ds.add_argument("model", help="a model file (.npz, .onnx, .txt, .prototxt) or a built-in name")
    ds.add_argument("data", help="a .npy array (read chunk by chunk, memory-mapped) or an IDX images file")
    dhow = ds.add_mutually_exclusive_group()
    dhow.add_argument("--composite", default="epsilon_plus", help="a composite: NAME[:key=value,...], as for explain "
                                                                  "(default %(default)s)")
    dhow.add_argument("--rule", help="one rule on every Linear/Conv2d layer: NAME[:key=value,...], as for explain")
    dhow.add_argument("--method", help="a method instead of LRP: NAME[:key=value,...], as for explain (e.g. "
                                       "integrated_gradients:n=64)")
    ds.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    ds.add_argument("--batch-size", type=_positive_int, help="inputs per chunk (default: chosen from the measured cost "
                                                             "per input, or the one --out's run records)")
    ds.add_argument("--scheduler", choices=["threads", "processes", "synchronous"],
                    help="a Dask scheduler (default: serial in this process)")
    ds.add_argument("--workers", type=_positive_int, help="start a local Dask cluster of this many worker processes")
    ds.add_argument("--dashboard", action="store_true", help="with --workers: serve Dask's dashboard on a free "
                                                             "port (its address is printed); off by default")
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
    tr.add_argument("--out", help="folder to write the model to, created if missing (default: lrpnumpy/data/, the "
                                  "shipped ones)")
    bench = sub.add_parser("bench", help="run a benchmark script (bench_lrp, compare_zennit, fuzz) with its "
                                         "arguments")
    bench.add_argument("script", choices=["bench_lrp", "compare_zennit", "fuzz"])
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script")
    from .spray import add_parser as _spray_parser
    _spray_parser(sub, _positive_int)
    for name, command in sub.choices.items():  # every subcommand that loads a model lists the built-in names
        for action in command._actions:
            if action.dest == "model" and not action.option_strings:
                action.help = _builtin_help() + _MODEL_HELP.get(name, "")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warn  # one line each (catch_warnings restores the handler)
        return _run(args)


def _run(args):
    try:
        if args.command == "demo":
            from .demo import run
            from .zoo import MODELS
            if args.model in MODELS:
                raise RuleParameterError(f"{args.model} has random weights (an untrained architecture); the demo "
                                         f"shows a trained model's explanations: --model one of {', '.join(_trained())} "
                                         f"(explain {args.model} ... runs, with a warning)")
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
