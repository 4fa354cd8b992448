"""The Layer base class and the argument checks every layer shares."""

import numbers

import numpy as np

from ..errors import DTypeError, NonFiniteError, RuleParameterError, ShapeError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype):
    """Return ``dtype`` as a NumPy dtype, accepting only float32 and float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise DTypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def make_rng(rng):
    """A ``numpy.random.Generator`` from None, a seed or a Generator."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def he_normal(rng, shape, fan_in, dtype):
    """He-normal weights ``N(0, 2 / fan_in)`` of ``dtype``, drawn in float64 chunk by chunk.

    The values are the same for float32 and float64 (and as one ``standard_normal(shape)``
    call), without a float64 copy of the whole array: vgg16's first fully connected layer
    alone would need 800 MB for it.
    """
    gen, out = make_rng(rng), np.empty(shape, dtype)
    flat, std, chunk = out.reshape(-1), np.sqrt(2.0 / fan_in), 1 << 20
    for start in range(0, flat.size, chunk):
        part = gen.standard_normal(min(chunk, flat.size - start))
        flat[start:start + part.size] = part * std
    return out


def pair(value, name, minimum=1):
    """Normalise an int or a pair of ints to a tuple ``(a, b)``, each ``>= minimum``."""
    values = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, numbers.Integral) and v >= minimum for v in values):
        raise RuleParameterError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(values[0]), int(values[1])


def padding4(value):
    """Normalise padding to ``(top, bottom, left, right)``.

    Accepts an int (all sides), a pair ``(ph, pw)`` (symmetric) or a 4-tuple.
    """
    if isinstance(value, numbers.Integral):
        values = (value,) * 4
    else:
        values = tuple(value)
        if len(values) == 2:
            values = (values[0], values[0], values[1], values[1])
    if len(values) != 4 or not all(isinstance(v, numbers.Integral) and v >= 0 for v in values):
        raise RuleParameterError(
            f"padding must be an int >= 0, a pair (ph, pw) or (top, bottom, left, right), got {value!r}")
    return tuple(int(v) for v in values)


def short_padding(p):
    """``(ph, pw)`` for symmetric padding, else the 4-tuple (for reprs)."""
    return (p[0], p[2]) if p[0] == p[1] and p[2] == p[3] else p


def check_array(x, what="input"):
    """Check that ``x`` is a float32/float64 ndarray; return it."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{what} must be a numpy ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{what} must be float32 or float64, got {x.dtype}; convert explicitly, "
                         f"e.g. x.astype(np.float64)")
    return x


def check_finite(x, what="input"):
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or infinity."""
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise NonFiniteError(f"{what} holds NaN or infinity (first at index {tuple(int(i) for i in bad)}); "
                             f"finite values are required")
    return x


class Layer:
    """Base class: ``forward``, exact-gradient ``backward`` and ``lrp``.

    ``forward`` caches the layer's input in ``self.input`` (all that backward
    and LRP need); :meth:`clear` drops it.
    """

    #: The rule used by :meth:`lrp` (and by ``explain``) when none is given.
    default_rule = None
    #: Parameter names (``weight``, ``bias``, ...), for copies and dtype changes.
    params = ()

    input = None
    ledger = None

    def forward(self, a):
        raise NotImplementedError

    def backward(self, grad, param_grads=True):
        """Gradient with respect to the input, given the gradient ``grad`` at the output.

        Parametric layers also store ``grad_weight`` / ``grad_bias`` (for training) unless
        ``param_grads`` is False, which saves their cost when only the input gradient is
        wanted (as in explanation methods).
        """
        raise NotImplementedError

    def lrp(self, R, rule=None):
        """Relevance at the layer's input, from relevance ``R`` at its output.

        Uses the input cached by the last :meth:`forward`.  ``rule`` defaults
        to ``self.default_rule``.  What the rule lost to biases, stabilizers
        and zero denominators is kept for :meth:`conservation`.
        """
        if self.input is None:
            raise ShapeError(f"{self!r}: call forward before lrp (no input is cached)")
        rule = self.default_rule if rule is None else rule
        ledger = {}
        R_in = rule.relevance(self, self.input, R, ledger)
        self.ledger = dict(ledger, relevance_in=per_sample_sum(R_in), relevance_out=per_sample_sum(R))
        return R_in

    def conservation(self):
        """Per-sample relevance sums of the last :meth:`lrp` call.

        Returns
        -------
        dict of str to ndarray of shape (N,)
            ``relevance_out`` (sum of R at the output), ``relevance_in`` (at the
            input), and what was absorbed: ``bias``, ``stabilizer`` and
            ``dropped`` (relevance of neurons with a zero denominator or
            outside every rule branch).  Each absorbed part is computed on its
            own, so ``relevance_in + bias + stabilizer + dropped`` equals
            ``relevance_out`` up to rounding; this is a check, not a definition.
        """
        if self.ledger is None:
            raise ShapeError(f"{self!r}: no lrp call has been made yet")
        n = self.ledger["relevance_out"].shape
        out = {k: self.ledger.get(k, np.zeros(n)) for k in ("relevance_out", "relevance_in", "bias",
                                                              "stabilizer", "dropped")}
        return out

    def clear(self):
        """Drop the cached input (and output), the LRP ledger and cached derived weights."""
        self.input = None
        self.ledger = None
        if "output" in self.__dict__:
            self.output = None
        self.__dict__.pop("_derived", None)

    def freeze(self):
        """Make the parameters read-only, so that rules may cache what they derive from them.

        Frozen parameters cannot be changed in place; assign new arrays instead (which also
        discards what was derived from the old ones).  Returns the layer.
        """
        for name in self.params:
            value = getattr(self, name)
            if value is not None:
                value.flags.writeable = False
        return self

    def derived(self, key, compute, inputs=None):
        """``compute()``, cached on the layer while ``inputs`` are read-only and the same objects.

        ``inputs`` defaults to the layer's parameters: rules cache W+, W + gamma W+, ... this way
        between calls on a frozen network (see :meth:`freeze`); on an unfrozen one they are
        recomputed each time, so in-place changes of the weights are always seen.
        """
        inputs = tuple(getattr(self, n) for n in self.params) if inputs is None else tuple(inputs)
        if not inputs or any(v is not None and v.flags.writeable for v in inputs):
            return compute()
        cache = self.__dict__.setdefault("_derived", {})
        hit = cache.get(key)
        if hit is not None and len(hit[0]) == len(inputs) and all(a is b for a, b in zip(hit[0], inputs)):
            return hit[1]
        value = compute()
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        cache[key] = (inputs, value)  # holding the inputs keeps their identity meaningful
        return value

    def astype(self, dtype):
        """A copy of the layer with every parameter converted to ``dtype``."""
        dt = as_dtype(dtype)
        new = self.copy()
        for name in self.params:
            value = getattr(self, name)
            if value is not None:
                setattr(new, name, value.astype(dt))
        return new

    def copy(self):
        """A copy with copied parameters and an empty cache."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for name in self.params:
            value = getattr(self, name)
            setattr(new, name, None if value is None else value.copy())
        new.clear()
        return new

    @property
    def dtype(self):
        """The dtype of the layer's parameters (None for parameter-free layers)."""
        for name in self.params:
            value = getattr(self, name)
            if value is not None:
                return value.dtype
        return None

    def _check_input(self, a, ndim, channels=None, what="channels"):
        check_array(a, f"input of {self!r}")
        if a.ndim != ndim:
            layout = {2: "(N, features)", 4: "(N, C, H, W)"}[ndim]
            raise ShapeError(f"{self!r} expects a {ndim}-D input {layout}, got shape {a.shape}")
        if channels is not None and a.shape[1] != channels:
            raise ShapeError(f"{self!r} expects {channels} {what} on axis 1, got shape {a.shape}")
        dt = self.dtype
        if dt is not None and a.dtype != dt:
            raise DTypeError(f"input of {self!r} is {a.dtype} but its parameters are {dt}; "
                             f"convert one of them explicitly (net.astype({str(a.dtype)!r}) or "
                             f"x.astype({str(dt)!r}))")
        return a


def per_sample_sum(R):
    """Sum over every axis but the first: one number per sample."""
    return R.reshape(R.shape[0], -1).sum(axis=1)


class AffineLayer(Layer):
    """A layer computing an affine map ``x -> A(x; weight) + bias``.

    Rules run on these through :meth:`forward_with` and :meth:`backward_with`,
    which evaluate the map, and its adjoint, with any (rule-modified)
    parameters; :meth:`forward` and :meth:`backward` are those same calls
    with the layer's own parameters.
    """

    weight = None
    bias = None
    #: The output of the last :meth:`forward` (the array the next layer receives, so keeping
    #: it costs no memory in a network); rules that need ``z = W a + b`` reuse it.
    output = None

    def forward_with(self, x, weight, bias=None):
        raise NotImplementedError

    def backward_with(self, grad, weight, input_shape):
        raise NotImplementedError

    def bias_view(self, bias):
        """``bias`` reshaped to broadcast against the layer's output."""
        raise NotImplementedError

    def forward_many(self, x, weights):
        """``[forward_with(x, w) for w in weights]`` (no bias); layers may do it in one pass."""
        return [self.forward_with(x, w) for w in weights]

    def backward_many(self, pairs, input_shape):
        """``sum(backward_with(s, w) for s, w in pairs)``; layers may do it in one pass."""
        return sum(self.backward_with(s, w, input_shape) for s, w in pairs)
