"""An adversarial harness: random small networks, hostile inputs, random rules, and the promises they must keep.

Used by ``tests/test_adversarial.py`` (a few hundred examples in CI) and by
``benchmarks/fuzz.py`` (many thousands, with counts by category).  The promises:

* only lrpnumpy's own errors (``LRPError``) escape;
* nothing non-finite is returned from finite input and parameters;
* the NumPy and numba kernel backends agree (same outcome, same numbers up to rounding);
* neither the input nor the weights are changed.
"""

import numpy as np
from hypothesis import strategies as st

import lrpnumpy as L
from lrpnumpy import composites, kernels, methods as M
from lrpnumpy.errors import LRPError

SPATIAL = ["conv", "relu", "tanh", "maxpool", "sumpool", "avgpool", "gap", "bn", "lrn", "dropout", "softmax"]
FLAT = ["linear", "relu", "tanh", "dropout", "softmax"]


@st.composite
def layer_specs(draw, spatial):
    """(kind, keyword arguments) of one layer; the arguments may be invalid on purpose (rarely)."""
    kind = draw(st.sampled_from(SPATIAL if spatial else FLAT))
    small = st.integers(1, 3)
    kw = {}
    if kind in ("conv", "maxpool", "sumpool", "avgpool"):
        kw = dict(kernel_size=draw(st.one_of(small, st.tuples(small, small))),
                  stride=draw(st.one_of(small, st.tuples(small, small))),
                  padding=draw(st.one_of(st.integers(0, 3), st.tuples(*[st.integers(0, 2)] * 4))),
                  dilation=draw(st.one_of(st.just(1), st.tuples(small, small))))
        if kind != "conv":
            kw["ceil_mode"] = draw(st.booleans())
        if kind == "avgpool":
            kw["count_include_pad"] = draw(st.booleans())
        if kind == "conv":
            kw["groups"] = draw(st.sampled_from([1, 1, 2]))
            kw["out"] = draw(st.integers(1, 4)) * kw["groups"]
            kw["bias"] = draw(st.booleans())
    elif kind == "linear":
        kw = dict(out=draw(st.integers(1, 6)), bias=draw(st.booleans()))
    elif kind == "lrn":
        kw = dict(size=draw(st.integers(1, 4)))
    elif kind == "softmax":
        kw = dict(axis=draw(st.sampled_from([1, -1])))
    return kind, kw


def build_layer(kind, kw, channels, rng):
    """The layer, or None when the arguments do not fit (they raise LRPError, which is allowed)."""
    kw = dict(kw)
    try:
        if kind == "conv":
            groups = kw.pop("groups")
            if channels % groups:
                groups = 1
            return L.Conv2d(channels, kw.pop("out"), kw.pop("kernel_size"), groups=groups, rng=rng, **kw)
        if kind == "linear":
            return L.Linear(channels, kw.pop("out"), rng=rng, **kw)
        if kind == "maxpool":
            return L.MaxPool2d(**kw)
        if kind == "sumpool":
            return L.SumPool2d(**kw)
        if kind == "avgpool":
            return L.AvgPool2d(**kw)
        if kind == "bn":
            bn = L.BatchNorm2d(channels)
            bn.weight, bn.bias = rng.normal(size=channels), rng.normal(size=channels)
            bn.running_mean, bn.running_var = rng.normal(size=channels), rng.random(channels) + 0.1
            return bn
        return {"relu": L.ReLU, "tanh": L.Tanh, "gap": L.GlobalAvgPool2d, "dropout": L.Dropout,
                "lrn": lambda: L.LRN(kw["size"]), "softmax": lambda: L.Softmax(axis=kw["axis"])}[kind]()
    except LRPError:
        return None


MAGNITUDES = [0.0, 1e-300, 1e-30, 1e-3, 1.0, 1e3, 1e30, 1e200]


@st.composite
def networks(draw):
    """(network, sample shape): random small chains of every layer kind, ending in a Linear to classes."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    flat = draw(st.booleans()) and draw(st.booleans())
    shape = (draw(st.integers(1, 9)),) if flat else (draw(st.integers(1, 3)), draw(st.integers(1, 8)),
                                                     draw(st.integers(1, 8)))
    layers, current = [], shape
    for _ in range(draw(st.integers(0, 5))):
        kind, kw = draw(layer_specs(len(current) == 3))
        layer = build_layer(kind, kw, current[0], rng)
        if layer is None:
            continue
        try:
            current = layer.output_shape((1,) + current)[1:]
        except LRPError:
            continue  # a window larger than the map, ...: skip it
        layers.append(layer)
    if len(current) > 1:
        layers.append(L.Flatten())
    layers.append(L.Linear(int(np.prod(current)), draw(st.integers(1, 4)), rng=rng))
    scale = draw(st.sampled_from(MAGNITUDES[2:]))
    with np.errstate(all="ignore"):
        net, shape = _scaled(layers, scale, rng, shape, draw(st.sampled_from([np.float64, np.float32])))
    net.fuzz_moderate = scale <= 1e3  # weights of ordinary size: overflow is not an excuse
    return net, shape


def _scaled(layers, scale, rng, shape, dtype):
    for layer in layers:
        for p in ("weight", "bias"):
            if p in layer.params and getattr(layer, p) is not None:
                setattr(layer, p, getattr(layer, p) * scale + (0 if p == "weight" else rng.normal(
                    size=getattr(layer, p).shape) * scale))
    net = L.Sequential(*layers, input_shape=shape)
    try:
        net = net.astype(dtype)
    except LRPError:
        pass  # weights of 1e200 do not fit in float32: building the network says so
    return net, shape


@st.composite
def inputs(draw, shape, dtype):
    """A batch for ``shape``: zeros, denormals, huge and mixed magnitudes, -0, odd layouts; sometimes malformed."""
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    kind = draw(st.sampled_from(["normal", "zeros", "negzero", "denormal", "huge", "mixed", "uniform"]))
    full = (n,) + tuple(shape)
    x = {"normal": lambda: rng.normal(size=full), "zeros": lambda: np.zeros(full),
         "negzero": lambda: -np.zeros(full), "uniform": lambda: rng.random(full),
         "denormal": lambda: rng.normal(size=full) * 1e-310,
         "huge": lambda: rng.normal(size=full) * 1e300,
         "mixed": lambda: rng.normal(size=full) * 10.0 ** rng.integers(-300, 300, size=full)}[kind]()
    with np.errstate(over="ignore", under="ignore"):
        x = x.astype(dtype)
    moderate = kind in ("normal", "zeros", "negzero", "uniform")
    layout = draw(st.sampled_from(["c", "c", "fortran", "strided", "readonly"]))
    if layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "strided":
        big = np.zeros(full[:-1] + (2 * full[-1],), x.dtype)
        big[..., ::2] = x
        x = big[..., ::2]
    elif layout == "readonly":
        x.flags.writeable = False
    bad = draw(st.sampled_from([None] * 12 + ["rank", "int", "float16", "list", "other_dtype", "empty"]))
    with np.errstate(all="ignore"):
        return _malformed(x, bad), f"{kind}/{layout}/{bad or 'ok'}", moderate


def _malformed(x, bad):
    if bad == "rank":
        x = x[0]
    elif bad == "int":
        x = x.astype(np.int64)
    elif bad == "float16":
        x = x.astype(np.float16)
    elif bad == "list":
        x = x.tolist()
    elif bad == "other_dtype":
        x = x.astype(np.float32 if x.dtype == np.float64 else np.float64)
    elif bad == "empty":
        x = x[:0]
    return x


EPSILONS = [0.0, 1e-320, 1e-50, 1e-9, 1e-6, 0.25, 1e39]  # the tiny and huge ones: Epsilon only


@st.composite
def methods(draw, x):
    """(name, callable(net, x)) of an explanation: a rule, a composite or a gradient method."""
    target = draw(st.sampled_from([None, 0, 1, -1, 99, [0]]))
    kind = draw(st.sampled_from(["rule", "composite", "gradient"]))
    if kind == "rule":
        eps = draw(st.sampled_from(EPSILONS))
        if eps in (1e-320, 1e-50, 1e39):
            return f"rule/Epsilon({eps})", lambda net, x: L.explain(net, x, target=target, rule=L.Epsilon(eps))
        rule = draw(st.sampled_from([
            lambda: L.Epsilon(eps), lambda: L.ZPlus(eps), lambda: L.AlphaBeta(2, 1, eps), lambda: L.Gamma(draw(st.sampled_from([0.0, 0.25])), eps),
            lambda: L.ZBox(-1, 2, eps), lambda: L.Flat(eps), lambda: L.WSquare(eps), lambda: L.LRP0(),
            lambda: L.Rho("gamma", bias="raw", epsilon=eps)]))
        try:
            rule = rule()
        except LRPError:
            rule = L.Epsilon()
        return f"rule/{type(rule).__name__}", lambda net, x: L.explain(net, x, target=target, rule=rule)
    if kind == "composite":
        name = draw(st.sampled_from(sorted(composites.REGISTRY)))
        return f"composite/{name}", lambda net, x: L.explain(net, x, target=target,
                                                             composite=composites.get(name, bounds=(-1.0, 2.0)))
    name = draw(st.sampled_from(["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "sensitivity",
                                 "interior_gradients", "simple_taylor", "deconvnet", "guided_backprop", "deeplift",
                                 "occlusion"]))
    kwargs = {"integrated_gradients": dict(n=2), "smoothgrad": dict(n=2, rng=0), "simple_taylor": dict(steps=8),
              "interior_gradients": dict(alpha=[0.5, 1.0]), "occlusion": dict(window=2, stride=2)}.get(name, {})
    return f"method/{name}", lambda net, x: getattr(M, name)(net, x, target, **kwargs)


def _copy(x):
    return np.array(x, copy=True) if isinstance(x, np.ndarray) else x


def _weights(net):
    return [getattr(layer, p).copy() for layer in net for p in layer.params if getattr(layer, p) is not None]


def check(net, x, run, moderate=False):
    """Run ``run(net, x)`` on both kernel backends; return ``(outcome, violations)``.

    ``outcome`` is "ok" or the name of the LRPError raised; ``violations`` lists broken promises.
    With ``moderate`` (input and weights of ordinary size), a NonFiniteError is a violation too:
    only real overflow may be reported that way.
    """
    violations, outcomes, results = [], [], []
    x_before, w_before = _copy(x), _weights(net)
    backends = ["numpy"] + (["numba"] if _has_numba() else [])
    for backend in backends:
        previous = kernels.set_backend(backend)
        try:
            with np.errstate(all="ignore"):
                e = run(net, x)
            outcomes.append("ok")
            results.append(e)
        except LRPError as exc:
            outcomes.append(type(exc).__name__)
            results.append(None)
        except Exception as exc:  # noqa: BLE001 - exactly what the harness looks for
            outcomes.append(f"foreign {type(exc).__name__}")
            results.append(None)
            violations.append(f"foreign exception on {backend}: {type(exc).__name__}: {exc}")
        finally:
            kernels.set_backend(previous)
    if moderate and "NonFiniteError" in outcomes:
        violations.append("NonFiniteError for input and weights of ordinary size")
    if len(set(outcomes)) > 1:
        violations.append(f"backends disagree: {dict(zip(backends, outcomes))}")
    finite_params = all(np.isfinite(w).all() for w in w_before)
    for backend, e in zip(backends, results):
        if e is not None and finite_params and not (np.isfinite(e.relevance).all() and np.isfinite(e.output).all()):
            violations.append(f"non-finite result from finite input on {backend}")
    if len(results) == 2 and all(r is not None for r in results) and results[0].relevance.size:
        a, b = results[0].relevance, results[1].relevance
        scale = max(float(np.abs(a).max()), float(np.abs(b).max()), np.finfo(a.dtype).tiny)
        tol = 1e-9 if a.dtype == np.float64 else 2e-3
        if a.shape != b.shape or a.dtype != b.dtype or float(np.abs(a - b).max()) > tol * scale:
            violations.append(f"backends differ by {float(np.abs(a - b).max()) / scale:.3g} relative")
    if isinstance(x, np.ndarray) and not np.array_equal(x, x_before, equal_nan=True):
        violations.append("the input was changed")
    if any(not np.array_equal(w, v) for w, v in zip(w_before, _weights(net))):
        violations.append("the weights were changed")
    if outcomes[0] == "ok" and len(x):
        violations += check_empty(net, x, run, backends)
    return outcomes[0], violations


def check_empty(net, x, run, backends):
    """The same network and method on an empty batch ``x[:0]``: on every backend, an empty explanation
    of the right shapes and dtype (relevance (0,) + sample shape, output (0,) + an output's shape)."""
    violations = []
    for backend in backends:
        previous = kernels.set_backend(backend)
        try:
            with np.errstate(all="ignore"):
                e = run(net, x[:0])
            r = e.relevance  # (0,) + a sample's shape; (len(alpha), 0, ...) for interior gradients at several scales
            if r.shape[r.ndim - x.ndim:] != (0,) + x.shape[1:] or r.dtype != x.dtype or e.output.shape[:1] != (0,):
                violations.append(f"empty batch on {backend}: relevance {e.relevance.shape} {e.relevance.dtype}, "
                                  f"output {e.output.shape}")
        except L.errors.TargetError:
            pass  # a target per sample ([0]) does not fit an empty batch
        except LRPError as exc:
            violations.append(f"empty batch on {backend}: refused ({type(exc).__name__}: {exc})")
        except Exception as exc:  # noqa: BLE001 - what the harness looks for
            violations.append(f"empty batch on {backend}: foreign {type(exc).__name__}: {exc}")
        finally:
            kernels.set_backend(previous)
    return violations


def _has_numba():
    try:
        from lrpnumpy.kernels import numba_kernels  # noqa: F401
        return True
    except ImportError:
        return False


def _sample_pair(alone, inside, i):
    """The sample of a method's result alone and at position ``i`` of a batch: on the axis where the two
    results' shapes differ (the batch axis; a method with several settings, e.g. interior gradients with
    several alphas, puts an axis of its own before it)."""
    alone, inside = np.asarray(alone), np.asarray(inside)
    if alone.ndim != inside.ndim:
        return alone, inside  # shapes differ: reported as a violation
    axis = next((k for k, (p, q) in enumerate(zip(alone.shape, inside.shape)) if p != q), 0)
    return (np.ascontiguousarray(np.take(alone, 0, axis=axis)),
            np.ascontiguousarray(np.take(inside, i, axis=axis)))


def batch_invariance(net, x, name, run, seed):
    """Violations of batch invariance: the first sample of ``x`` explained alone and at a random
    position of a random batch of 2-9 (the others random normals) must give the same output and
    relevance bit for bit, on both backends.  Invalid inputs and methods that raise are left to
    :func:`check`; SmoothGrad draws its noise for the whole batch, so it is not compared."""
    if (not isinstance(x, np.ndarray) or x.ndim < 2 or len(x) == 0 or x.dtype != net.dtype
            or "smoothgrad" in name):
        return []
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 10))
    pos = int(rng.integers(0, n))
    sample = np.ascontiguousarray(x[:1])
    others = rng.normal(size=(n - 1,) + x.shape[1:]).astype(x.dtype)
    batch = np.concatenate([others[:pos], sample, others[pos:]])
    violations = []
    for backend in ["numpy"] + (["numba"] if _has_numba() else []):
        previous = kernels.set_backend(backend)
        try:
            with np.errstate(all="ignore"):
                alone, inside = run(net, sample), run(net, batch)
        except Exception:  # noqa: BLE001 - errors are check()'s business
            continue
        finally:
            kernels.set_backend(previous)
        for what in ("output", "relevance"):
            a, b = _sample_pair(getattr(alone, what), getattr(inside, what), pos)
            # equal bits, the signs of zeros included (issue 25: the fast path leaves out vanishing
            # terms sample by sample, so a zero's sign no longer depends on the other samples)
            if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
                with np.errstate(all="ignore"):
                    gap = float(np.abs(a - b).max()) if a.shape == b.shape else float("nan")
                violations.append(f"batch invariance broken on {backend}: the {what} of a sample alone and at "
                                  f"position {pos} of {n} differ by up to {gap:.3g}")
    return violations
