"""The Layer base class and the argument checks every layer shares."""

import numbers
import warnings

import numpy as np

from ..errors import DTypeError, LayerParameterError, NonFiniteError, ResourceError, ShapeError
from ..trace import Step

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype):
    """Return ``dtype`` as a NumPy dtype, accepting only float32 and float64."""
    try:
        with warnings.catch_warnings():  # deprecated aliases ("a") are refused below anyway
            warnings.simplefilter("ignore")
            dt = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise DTypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def make_rng(rng):
    """A ``numpy.random.Generator`` from None, a seed (int >= 0) or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0):
        return np.random.default_rng(rng)
    raise LayerParameterError(f"rng must be None, an int >= 0 or a numpy.random.Generator, got {rng!r}")


#: Largest size, stride or padding a layer takes (the kernels index with 64-bit ints; sizes past
#: this are mistakes, not networks).
MAX_SIZE = 2 ** 31 - 1


def _ints(value, name, count, minimum, what):
    """``count`` ints from an int or a sequence, each in [minimum, MAX_SIZE]; LayerParameterError otherwise."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = (value,) * count
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = ()
    ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and minimum <= v <= MAX_SIZE
             for v in values)
    if not ok:
        raise LayerParameterError(f"{name} must be {what}, each an int in [{minimum}, {MAX_SIZE}], got {value!r}")
    return tuple(int(v) for v in values)


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
    values = _ints(value, name, 2, minimum, "an int or a pair of ints")
    if len(values) != 2:
        raise LayerParameterError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values


def padding4(value):
    """Normalise padding to ``(top, bottom, left, right)``.

    Accepts an int (all sides), a pair ``(ph, pw)`` (symmetric) or a 4-tuple.
    """
    what = "an int, a pair (ph, pw) or (top, bottom, left, right)"
    values = _ints(value, "padding", 4, 0, what)
    if len(values) == 2:
        values = (values[0], values[0], values[1], values[1])
    if len(values) != 4:
        raise LayerParameterError(f"padding must be {what}, got {value!r}")
    return values


def short_padding(p):
    """``(ph, pw)`` for symmetric padding, else the 4-tuple (for reprs)."""
    return (p[0], p[2]) if p[0] == p[1] and p[2] == p[3] else p


def check_array(x, what="input"):
    """Check that ``x`` is a float32/float64 ndarray; return it."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{what} must be a numpy ndarray, got {type(x).__name__}")
    if isinstance(x, np.ma.MaskedArray):  # every computation here would ignore the mask
        raise DTypeError(f"{what} is a masked array (numpy.ma), whose mask lrpnumpy would ignore; pass a plain "
                         f"array, e.g. x.filled(0.0) or np.asarray(x) if the mask does not matter")
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
    """Base class: a layer holds its parameters and configuration, nothing of the last call.

    Subclasses implement :meth:`output_shape` (which also validates an input shape),
    ``_forward(a)`` and ``_backward(grad, step)``; layers whose backward pass needs more
    than the input and output (max pooling's winners) override ``_apply`` to return that
    state with the output.  Parametric layers list their parameter names in ``params`` and
    implement ``_configure``, :meth:`param_shapes` and ``_init_params``.

    Per-call values travel in the :class:`~lrpnumpy.trace.Step` that :meth:`forward_trace`
    returns; :meth:`backward` and the LRP rules read what they need from it.
    """

    #: Parameter names (``weight``, ``bias``, ...), for copies, dtype changes and saving.
    params = ()
    #: Parameters that may be absent (None).
    optional = ("bias",)
    #: Constructor arguments that make up :meth:`config`, read from attributes of the same name.
    config_keys = ()
    #: Every concrete layer class by name (filled in as classes are defined), for loaders.
    registry = {}

    # ----- capabilities: what a layer declares about itself (docs/extending.rst) -----
    # Rules, composites, methods, graphs, verify and the incremental engine read these, never a
    # list of layer types.  Defaults describe a one-input layer that is none of the kinds below.

    #: How many inputs ``forward``/``apply`` take: 1, a fixed number, or None for "one or more"
    #: (Add, Concat).  Several-input layers return one gradient (and one relevance) per input.
    n_inputs = 1
    #: An affine map ``A(x; weight) + bias`` given the step (max pooling: given its winners): the
    #: layer implements ``forward_with``/``backward_with``/``bias_view`` (see :class:`AffineLayer`)
    #: and the affine rules (Epsilon, ZPlus, Gamma, ...) run on it.
    affine = False
    #: The output is a linear map of the input plus a constant for a fixed step, so the gradient is
    #: the map's adjoint (DeepLIFT's multipliers pass through it as the gradient does).
    linear = False
    #: ``y[i] = f(x[i])`` entry by entry, any shape: the layer may be run on any subset of entries
    #: (the incremental engine does) and gets DeepLIFT's Rescale rule.
    elementwise = False
    #: Only moves values (reshape, permutation, split, join, selection: each output entry is one
    #: input entry, none taken twice): its backward pass is relevance's
    #: too (the Pass rule uses it).
    rearranges = False
    #: Several inputs multiplied together (an elementwise or a matrix product of two activations):
    #: not linear in them jointly; the product rules (AttnLRP's Uniform, CP-LRP's HoldConstant)
    #: apply.
    products = False
    #: Divides by statistics of its own input (LayerNorm, RMSNorm, LRN, Softmax): not linear in
    #: the input even where it is piecewise so; rules treat the statistics as constants or pass.
    normalises = False
    #: Runs a loop over time with products of gates and signals inside (LSTM, GRU): implements
    #: ``lrp(step, R, rule, epsilon, bias_factor)``, which the product rules call.
    recurrent = False
    #: ``"max"`` or ``"sum"``: each output of an (N, C, H, W) input is the maximum, or the sum times
    #: ``scale``, of its window's taps, channel by channel; the layer implements :meth:`window`
    #: (the incremental engine recomputes such a layer at the windows a change reaches).
    pool = None

    def window(self, h, w):
        """``(kh, kw, sh, sw, (top, bottom, left, right), dh, dw)``: kernel, stride, padding and
        dilation of the windows a layer with windows (a convolution, a pooling) slides over an
        ``h x w`` input."""
        raise NotImplementedError(f"{type(self).__name__} has no windows")

    def __setattr__(self, name, value):
        if name in self.params:
            value = self._checked_param(name, value)
        object.__setattr__(self, name, value)

    def _checked_param(self, name, value):
        """A parameter about to be assigned: a finite float32/float64 array of the expected shape."""
        if value is None:
            if name not in self.optional:
                raise ShapeError(f"{name} of {self._label()} cannot be None")
            return None
        check_array(value, f"{name} of {self._label()}")
        expected = self.param_shapes().get(name)
        if expected is not None and value.shape != tuple(expected):
            raise ShapeError(f"{name} has shape {value.shape}, expected {tuple(expected)} for {self._label()}")
        return check_finite(value, f"{name} of {self._label()}")

    def _label(self):
        try:
            return repr(self)
        except Exception:  # noqa: BLE001 - during construction not every attribute exists yet
            return type(self).__name__

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_") and not cls.__dict__.get("abstract", False):
            Layer.registry[cls.__name__] = cls

    # ----- forward -----

    def output_shape(self, input_shape):
        """The output shape for an input of ``input_shape`` (batch axis included), without running.

        Raises
        ------
        ShapeError
            If the layer cannot take an input of that shape.
        """
        raise NotImplementedError

    def apply(self, a):
        """Check ``a`` and run the layer: ``(output, state)``, the state being what backward needs
        besides the input and output (None for most layers)."""
        return self._run(self._apply, a)

    def _run(self, compute, a):
        """``compute(a)`` after checking ``a``; running out of memory is a ResourceError naming the sizes."""
        a = self.check_input(a)
        try:
            return compute(a)
        except MemoryError:
            raise ResourceError(f"{self!r}: not enough memory for an input of shape {a.shape} (output "
                                f"{self.output_shape(a.shape)})") from None

    def _apply(self, a):
        return self._forward(a), None

    def _forward(self, a):
        raise NotImplementedError

    def forward(self, a):
        """The layer's output for the input batch ``a`` (without what a backward pass would need)."""
        return self._run(self._forward, a)

    def forward_trace(self, a):
        """``(output, step)``: the output and the :class:`~lrpnumpy.trace.Step` that backward and LRP read."""
        y, state = self.apply(a)
        return y, Step(self, (a,), y, state)

    def check_input(self, a):
        """Check that ``a`` is a float array of a shape and dtype the layer takes; return it."""
        if not isinstance(a, np.ndarray) or a.dtype not in FLOAT_DTYPES or isinstance(a, np.ma.MaskedArray):
            check_array(a, f"input of {self!r}")  # raises, naming the layer (formatted only then)
        self.output_shape(a.shape)
        dtypes = [v.dtype for v in [getattr(self, p) for p in self.params] if v is not None]  # each read once
        dt = (dtypes[0] if dtypes else None) if type(self).dtype is Layer.dtype else self.dtype
        if any(d != dt for d in dtypes):
            raise DTypeError(f"the parameters of {self!r} have mixed dtypes "
                             f"{sorted({str(getattr(self, p).dtype) for p in self.params if getattr(self, p) is not None})}; "
                             f"convert the layer with astype(...)")
        if dt is not None and a.dtype != dt:
            raise DTypeError(f"input of {self!r} is {a.dtype} but its parameters are {dt}; "
                             f"convert one of them explicitly (net.astype({str(a.dtype)!r}) or "
                             f"x.astype({str(dt)!r}))")
        return a

    # ----- backward -----

    def backward(self, grad, step):
        """Gradient with respect to the input, given the gradient ``grad`` at the output.

        ``step`` is what :meth:`forward_trace` (or a network's ``forward_trace``) returned for
        this layer; ``grad`` has the shape and dtype of its output.
        """
        self.check_grad(grad, step)
        try:
            return self._backward(grad, step)
        except MemoryError:
            raise ResourceError(f"{self!r}: not enough memory for the gradient of an input of shape "
                                f"{step.input.shape}") from None

    def _backward(self, grad, step):
        raise NotImplementedError

    def param_grads(self, grad, step):
        """Gradients of the parameters (dict by name; None for an absent bias), given ``grad`` at the output."""
        self.check_grad(grad, step)
        return {}

    def check_grad(self, grad, step, what="gradient"):
        """Check that ``step`` belongs to this layer and ``grad`` matches its output; return ``grad``."""
        if not isinstance(step, Step) or step.layer is not self:
            raise ShapeError(f"{self!r}: backward and LRP need the Step that forward_trace returned for this "
                             f"layer, got {type(step).__name__}")
        if not isinstance(grad, np.ndarray) or grad.dtype not in FLOAT_DTYPES:
            check_array(grad, f"{what} at the output of {self!r}")  # raises
        if grad.shape != step.output.shape:
            raise ShapeError(f"{what} at the output of {self!r} has shape {grad.shape}, expected the output's "
                             f"shape {step.output.shape}")
        if grad.dtype != step.output.dtype:
            raise DTypeError(f"{what} at the output of {self!r} is {grad.dtype}, expected {step.output.dtype}")
        return grad

    # ----- parameters -----

    def param_shapes(self):
        """Expected shape of each parameter, by name."""
        return {}

    def _initialise(self, rng, dtype):
        """``_init_params``, with a MemoryError turned into ResourceError naming the sizes."""
        try:
            self._init_params(rng, dtype)
        except MemoryError:
            raise ResourceError(f"{type(self).__name__}: not enough memory for parameters of shapes "
                                f"{self.param_shapes()}") from None

    def config(self):
        """The layer's configuration as a plain dict (JSON-able); ``from_config`` rebuilds the layer."""
        return {k: _plain(getattr(self, k)) for k in self.config_keys}

    @classmethod
    def from_config(cls, config, params=None):
        """A layer from :meth:`config`'s dict and, for parametric layers, its parameter arrays.

        Parameters given are checked against the configuration (shape, float32/float64,
        finite) before they are used; without them parameters are initialised as by the
        constructor (float64).
        """
        if not cls.params:
            return cls(**config)
        layer = cls.__new__(cls)
        layer._configure(**config)
        if params is None:
            layer._initialise(None, np.dtype(np.float64))
            return layer
        unknown = set(params) - set(cls.params)
        if unknown:
            raise ShapeError(f"{layer._label()} has no parameters {sorted(unknown)}; it has {list(cls.params)}")
        for name in cls.params:
            value = params.get(name)
            if value is None and getattr(layer, name, None) is not None:
                raise ShapeError(f"parameter {name!r} of {layer._label()} is missing")
            setattr(layer, name, value)
        return layer

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

    def clear(self):
        """Drop the weights that rules derived from a frozen layer's parameters (see :meth:`derived`)."""
        self.__dict__.pop("_derived", None)

    def __getstate__(self):
        """Pickled without the derived weights: unpickled parameters are writeable copies that no cache
        matches, and the cache can be several times the parameters' size (a network sent to workers)."""
        state = dict(self.__dict__)
        state.pop("_derived", None)
        return state

    def derived(self, key, compute, inputs=None):
        """``compute()``, cached on the layer while ``inputs`` are read-only and the same objects.

        ``inputs`` defaults to the layer's parameters: rules cache W+, W + gamma W+, ... this way
        between calls on a frozen network (see :meth:`freeze`); on an unfrozen one they are
        recomputed each time, so in-place changes of the weights are always seen and nothing
        is written to the layer.  What is cached depends on the parameters only, never on a
        call's input.
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
                largest = float(np.abs(value).max()) if value.size else 0.0
                if largest > float(np.finfo(dt).max):
                    raise DTypeError(f"{name} of {self!r} holds values up to {largest:.4g}, beyond the largest "
                                     f"{dt} ({np.finfo(dt).max:.4g}); it cannot be converted")
                setattr(new, name, value.astype(dt))
        return new

    def copy(self):
        """A copy with copied parameters (and no derived weights)."""
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

    def _check_rank(self, shape, ndim, channels=None, what="channels"):
        """Raise ShapeError unless ``shape`` has rank ``ndim`` (and ``channels`` on axis 1)."""
        if len(shape) != ndim:
            layout = {2: "(N, features)", 4: "(N, C, H, W)"}[ndim]
            raise ShapeError(f"{self!r} expects a {ndim}-D input {layout}, got shape {tuple(shape)}")
        if channels is not None and shape[1] != channels:
            raise ShapeError(f"{self!r} expects {channels} {what} on axis 1, got shape {tuple(shape)}")


def _plain(v):
    """A configuration value as JSON has it (tuples become lists)."""
    return list(v) if isinstance(v, tuple) else v


#: Weights whose stacked copy would exceed this many bytes run as separate passes (the copy would
#: cost more memory than the one larger GEMM saves time).
STACK_LIMIT = 256 << 20


def stackable(weights):
    """Whether ``weights`` are small enough to run as one stacked pass (see :data:`STACK_LIMIT`)."""
    return sum(w.nbytes for w in weights) <= STACK_LIMIT


def per_sample_sum(R):
    """Sum over every axis but the first: one number per sample (``np.add.reduce``, what ``sum`` calls,
    without its Python wrapper: the ledger takes this sum at every layer)."""
    return np.add.reduce(R.reshape(R.shape[0], -1), axis=1)


class AffineLayer(Layer):
    """A layer computing an affine map ``x -> A(x; weight) + bias``.

    Rules run on these through :meth:`forward_with` and :meth:`backward_with`, which evaluate
    the map, and its adjoint, with any (rule-modified) parameters; the layer's own forward and
    backward are those same calls with its own parameters.  ``step`` (the layer's step of the
    traced forward pass) gives the input shape and, for max pooling, the winners that make it
    a linear map.
    """

    abstract = True  # not a layer of its own (kept out of Layer.registry)
    weight = None
    bias = None
    affine = True
    linear = True

    def forward_with(self, x, weight, bias=None, step=None):
        raise NotImplementedError

    def backward_with(self, grad, weight, step):
        raise NotImplementedError

    def bias_view(self, bias, ndim=None):
        """``bias`` reshaped to broadcast against the layer's output (of rank ``ndim``, when the layer
        takes inputs of several ranks)."""
        raise NotImplementedError

    def joint_input(self, step):
        """The input the rules see: the step's input (several-input layers stack theirs)."""
        return step.input

    def split(self, R):
        """Relevance at :meth:`joint_input` as the layer's inputs take it (a tuple for several)."""
        return R

    def forward_with_many(self, x, weights, step, biases=None):
        """``[forward_with(x, w, b, step) for w, b in zip(weights, biases)]`` (biases None: none):
        the map with several sets of weights on one input; layers may do it in one pass."""
        return [self.forward_with(x, w, b, step) for w, b in zip(weights, biases or [None] * len(weights))]

    def backward_with_many(self, pairs, step):
        """``sum(backward_with(s, w, step) for s, w in pairs)``; layers may do it in one pass."""
        total = self.backward_with(*pairs[0], step)  # not sum(): 0 + array would copy it
        for s, w in pairs[1:]:
            total = total + self.backward_with(s, w, step)
        return total

    #: Deprecated names of :meth:`forward_with_many` and :meth:`backward_with_many` ("many" meant
    #: many weights, which read like the several inputs of Add or Concat); a subclass that
    #: overrides either name overrides both (see ``__init_subclass__``).
    forward_many = forward_with_many
    backward_many = backward_with_many

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        for new, old in (("forward_with_many", "forward_many"), ("backward_with_many", "backward_many")):
            if old in own and new not in own:
                setattr(cls, new, own[old])
            elif new in own and old not in own:
                setattr(cls, old, own[new])

    def _forward(self, a):
        return self.forward_with(a, self.weight, self.bias)

    def _backward(self, grad, step):
        return self.backward_with(grad, self.weight, step)
