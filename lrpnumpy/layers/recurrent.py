r"""Recurrent layers: LSTM and GRU with PyTorch's parameters, the exact gradient through time, and LRP.

Layout (fixed; loaders and checks depend on it): input (N, T, D), batch first; parameters with
the direction as a leading axis, ``weight_ih`` (dirs, G*H, D), ``weight_hh`` (dirs, G*H, H),
``bias_ih`` and ``bias_hh`` (dirs, G*H), gates in ``torch.nn.LSTM``'s order (i, f, g, o; G = 4)
and ``torch.nn.GRU``'s (r, z, n; G = 3).

Sequences of different lengths share one batch: pass ``lengths=`` to ``forward`` /
``forward_trace``, or run a network (and any method: ``explain``, gradients, ...) inside
``with sequence_lengths(lengths):``.  Sample ``n`` then reads only its first ``lengths[n]``
steps; its later outputs are zero (as torch's packed sequences give them), the backward
direction starts at its last real step, and ``output="last"`` is its state after its own
length: everything equals running the sample alone.

LRP (Arras et al. 2017, 2019) runs through time with :meth:`_Recurrent.lrp`, which the product
rules of :mod:`lrpnumpy.rules` (:class:`~lrpnumpy.rules.SignalTakesAll`, ``HalfHalf``,
``Proportional``) call: the epsilon rule on every linear map (gate pre-activations, the cell
update), the product rule on every gate x signal product, identity through the tanh and
sigmoid of a signal.
"""

import contextlib
import contextvars
import numbers

import numpy as np

from ..errors import DTypeError, LayerParameterError, ResourceError, ShapeError
from ..stabilize import stabilize
from ..trace import Step
from .base import MAX_SIZE, Layer, as_dtype, make_rng
from .linear import _matmul  # products in fixed blocks of rows: a sample's results never depend on its batch

_LENGTHS = contextvars.ContextVar("lrpnumpy_sequence_lengths", default=None)


@contextlib.contextmanager
def sequence_lengths(lengths):
    """Run the recurrent layers of any call inside the ``with`` block on sequences of these lengths.

    ``lengths``: one int per sample of the batch, each in [1, T].  The value is per thread (a
    context variable): layers keep nothing of it.
    """
    token = _LENGTHS.set(lengths)
    try:
        yield
    finally:
        _LENGTHS.reset(token)


@contextlib.contextmanager
def tiled_lengths(copies):
    """Inside the block, the lengths set by :func:`sequence_lengths` (if any) hold for a batch of ``copies``
    copies of the batch one after the other (copy-major: sample ``n`` of copy ``k`` at ``k * N + n``), as
    methods that run altered copies of the input together (occlusion, interior gradients) make them."""
    lengths = _LENGTHS.get()
    token = _LENGTHS.set(None if lengths is None else np.tile(np.asarray(lengths), copies))
    try:
        yield
    finally:
        _LENGTHS.reset(token)


def _sigmoid(x):
    """``1 / (1 + e)`` where ``x >= 0``, else ``e / (1 + e)``, with ``e = exp(-|x|)`` (no overflow)."""
    e = np.exp(-np.abs(x))
    d = 1 + e
    out = np.divide(e, d)
    return np.divide(1, d, out=out, where=x >= 0)


def _int(value, name):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE):
        raise LayerParameterError(f"{name} must be an int in [1, {MAX_SIZE}], got {value!r}")
    return int(value)


class _State:
    """What a recurrent forward pass leaves for backward and LRP: lengths and each direction's values."""

    __slots__ = ("lengths", "mask", "orders", "dirs")

    def __init__(self, lengths, mask, orders, dirs):
        self.lengths, self.mask, self.orders, self.dirs = lengths, mask, orders, dirs


def _gather(a, order):
    """``a[n, order[n, t]]``: a sequence in a direction's reading order (and back: the order is its own
    inverse)."""
    return a[np.arange(a.shape[0])[:, None], order]


def eps_linear(inputs, bias, z, R, epsilon, bias_factor, ledger):
    r"""The epsilon rule on ``z = sum_k x_k W_k^T + bias`` (an input with ``W_k`` None maps element-wise).

    With ``bias_factor`` the bias and the stabilizer terms are shared equally among the map's
    ``n = sum_k dim(x_k)`` input units, as in Arras et al.'s code (its ``bias_nb_units``; for an
    element-wise map such as the cell update that spreads them over all units):
    ``bias_factor = 1`` conserves relevance exactly.  What is
    not passed on is added to ``ledger`` (per sample: ``bias``, ``stabilizer``, ``dropped``).
    Returns one relevance per input.
    """
    zs = stabilize(z, epsilon)                                        # step 1: z (stabilized)
    s = R / zs                                                         # step 2: s = R / z
    c = [s if W is None else _matmul(s, W) for _, W in inputs]                 # step 3: c = backward(s)
    R_in = [x * c_k for (x, _), c_k in zip(inputs, c)]                 # step 4: R = a * c
    finite = np.isfinite(zs)
    absorbed_b = s * (0 if bias is None else bias)
    absorbed_e = np.where(finite, s * (zs - z), 0)
    if bias_factor:  # the bias and stabilizer terms, shared equally among the n input units
        n = sum(x.shape[-1] for x, _ in inputs)
        share = (absorbed_b + absorbed_e).sum(axis=-1, keepdims=True) * (bias_factor / n)
        R_in = [r + share for r in R_in]
    keep = 1 - bias_factor
    _add(ledger, "bias", keep * _per_sample(absorbed_b))
    _add(ledger, "stabilizer", keep * _per_sample(absorbed_e))
    if not finite.all():
        _add(ledger, "dropped", _per_sample(np.where(finite, 0, R)))
    return R_in


def _per_sample(v):
    return np.asarray(v).reshape(v.shape[0], -1).sum(axis=1) if np.ndim(v) else v


def _add(ledger, key, value):
    ledger[key] = ledger.get(key, 0) + value


class _Recurrent(Layer):
    """Shared parts of :class:`LSTM` and :class:`GRU`."""

    abstract = True
    params = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    optional = ()
    config_keys = ("input_size", "hidden_size", "bidirectional", "output")
    recurrent = True
    G = 1

    def __init__(self, input_size, hidden_size, bidirectional=False, output="sequence", rng=None,
                 dtype=np.float64):
        self._configure(input_size, hidden_size, bidirectional, output)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, input_size, hidden_size, bidirectional=False, output="sequence"):
        self.input_size, self.hidden_size = _int(input_size, "input_size"), _int(hidden_size, "hidden_size")
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise LayerParameterError(f"bidirectional must be True or False, got {bidirectional!r}")
        if output not in ("sequence", "last"):
            raise LayerParameterError(f"output must be 'sequence' or 'last', got {output!r}")
        self.bidirectional, self.output = bool(bidirectional), output

    @property
    def dirs(self):
        return 2 if self.bidirectional else 1

    def _init_params(self, rng, dtype):  # U(-1/sqrt(H), 1/sqrt(H)), as torch
        gen, k = make_rng(rng), 1 / np.sqrt(self.hidden_size)
        for name, shape in self.param_shapes().items():
            setattr(self, name, gen.uniform(-k, k, shape).astype(dtype))

    def param_shapes(self):
        d, gh = self.dirs, self.G * self.hidden_size
        return {"weight_ih": (d, gh, self.input_size), "weight_hh": (d, gh, self.hidden_size),
                "bias_ih": (d, gh), "bias_hh": (d, gh)}

    def __repr__(self):
        extra = ", bidirectional=True" if self.bidirectional else ""
        extra += ", output='last'" if self.output == "last" else ""
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"{self!r} expects a 3-D input (N, T, {self.input_size}), batch first, got shape "
                             f"{tuple(input_shape)}")
        n, t, d = input_shape
        if t < 1:
            raise ShapeError(f"{self!r}: empty sequences (T = 0) have nothing to read")
        if d != self.input_size:
            raise ShapeError(f"{self!r} expects {self.input_size} features on axis 2, got shape {tuple(input_shape)}")
        h = self.dirs * self.hidden_size
        return (n, t, h) if self.output == "sequence" else (n, h)

    # ----- forward -----

    def _lengths(self, a, lengths):
        n, t = a.shape[:2]
        if lengths is None:
            return None
        values = np.asarray(lengths)
        if values.dtype == bool or not (np.issubdtype(values.dtype, np.integer)
                                        or np.issubdtype(values.dtype, np.floating)):
            raise DTypeError(f"lengths for {self!r} must be integers, got {values.dtype}")
        if values.shape != (n,):
            raise ShapeError(f"lengths for {self!r} must hold one length per sample, shape ({n},), got shape "
                             f"{values.shape}")
        if np.issubdtype(values.dtype, np.floating) and not (np.isfinite(values) & (values == np.round(values))).all():
            raise DTypeError(f"lengths for {self!r} must be whole numbers, got {values!r}")
        if (values < 1).any() or (values > t).any():
            raise ShapeError(f"lengths for {self!r} must be in [1, T = {t}] (no empty sequences, none longer than "
                             f"the input), got {values.tolist()}")
        return values.astype(np.intp)

    def apply(self, a, lengths=None):
        """``(output, state)`` for input ``a`` of shape (N, T, D); ``lengths`` as in the module docstring."""
        a = self.check_input(a)
        lengths = self._lengths(a, _LENGTHS.get() if lengths is None else lengths)
        try:
            return self._run_all(a, lengths)
        except MemoryError:
            raise ResourceError(f"{self!r}: not enough memory for an input of shape {a.shape}") from None

    def forward(self, a, lengths=None):
        """The layer's output for ``a`` (N, T, D)."""
        return self.apply(a, lengths)[0]

    def forward_trace(self, a, lengths=None):
        y, state = self.apply(a, lengths)
        return y, Step(self, (a,), y, state)

    def _run_all(self, a, lengths):
        n, t = a.shape[:2]
        steps = np.arange(t)
        full = np.broadcast_to(steps, (n, t))
        L = np.full(n, t, np.intp) if lengths is None else lengths
        mask = (steps[None, :] < L[:, None])[:, :, None]
        orders, dirs, outs, lasts = [], [], [], []
        for k in range(self.dirs):
            order = full if k == 0 else np.where(mask[:, :, 0], L[:, None] - 1 - steps[None, :], steps[None, :])
            cache, y, last = self._run(k, _gather(a, order), mask)
            orders.append(order)
            dirs.append(cache)
            outs.append(_gather(y, order))
            lasts.append(last)
        y = np.concatenate(outs, axis=2) if self.output == "sequence" else np.concatenate(lasts, axis=1)
        return y, _State(lengths, mask, orders, dirs)

    def _weights(self, k):
        return self.weight_ih[k], self.weight_hh[k], self.bias_ih[k], self.bias_hh[k]

    # ----- backward -----

    def _split_grad(self, grad, state, k):
        """``(grad at direction k's outputs in its reading order, grad at its final state)``."""
        H = self.hidden_size
        if self.output == "sequence":
            return _gather(grad[:, :, k * H:(k + 1) * H], state.orders[k]), 0
        return 0, grad[:, k * H:(k + 1) * H]

    def _backward(self, grad, step):
        state, dx = step.state, 0
        for k in range(self.dirs):
            dy, dlast = self._split_grad(grad, state, k)
            dx = dx + _gather(self._back(k, state.dirs[k], dy, dlast, state.mask), state.orders[k])
        return dx

    def param_grads(self, grad, step):
        """Gradients of ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (shapes as the parameters)."""
        self.check_grad(grad, step)
        state = step.state
        grads = {name: np.zeros(shape, grad.dtype) for name, shape in self.param_shapes().items()}
        for k in range(self.dirs):
            dy, dlast = self._split_grad(grad, state, k)
            self._back(k, state.dirs[k], dy, dlast, state.mask, grads)
        return grads

    # ----- LRP -----

    def lrp(self, step, R, product, epsilon=0.0, bias_factor=0.0):
        """Relevance at the input and the ledger: LRP through time (see the module docstring).

        ``product`` splits the relevance of a gate x signal product: ``product.split(gate, signal, R,
        ledger) -> (R_gate, R_signal)`` (R_gate None: the gate gets nothing).

        The ledger's ``steps`` entry is the account of every time step: a dict of arrays of shape
        (N, dirs, T), by the input's time positions, ``relevance_out`` (what reaches the step's
        state and output from above and from the later steps), ``relevance_in`` (what goes to the
        input at that position), ``passed`` (what goes on to the state before the step: the
        previous step's, in the direction's reading order, or the initial zero state, dropped) and
        ``bias``, ``stabilizer``, ``dropped`` (what the step's rules absorbed), with
        ``relevance_out = relevance_in + passed + bias + stabilizer + dropped`` at every step.
        """
        self.check_grad(R, step, "relevance")
        state, R_in, ledger = step.state, 0, {}
        steps = {key: [] for key in _StepLedger.keys}
        for k in range(self.dirs):
            r_seq, r_last = self._split_grad(R, state, k)
            account = _StepLedger(*R.shape[:1], state.mask.shape[1])
            r_x, left = self._lrp(k, state.dirs[k], r_seq, r_last, state.mask, product, epsilon, bias_factor, ledger,
                                  account)
            R_in = R_in + _gather(r_x, state.orders[k])
            _add(ledger, "dropped", left)  # relevance that reached the initial (zero) state
            for key, values in account.values.items():
                steps[key].append(_gather(values, state.orders[k]))
        ledger["steps"] = {key: np.stack(v, axis=1) for key, v in steps.items()}
        return R_in, ledger

    @staticmethod
    def _at(r, t):
        return r[:, t] if np.ndim(r) else 0

    def _padded(self, R_seq, t, m, ledger):
        """Relevance at output step t; what sits past a sample's length (a constant 0 output) is dropped."""
        r = self._at(R_seq, t)
        if np.ndim(r) and not m.all():
            _add(ledger, "dropped", _per_sample(np.where(m, 0, r)))
            r = np.where(m, r, 0)
        return r


class _StepLedger:
    """The per-time-step account of one direction's LRP (see :meth:`_Recurrent.lrp`), in reading order."""

    keys = ("relevance_out", "relevance_in", "passed", "bias", "stabilizer", "dropped")

    def __init__(self, n, T):
        self.values = {key: np.zeros((n, T)) for key in self.keys}

    def start(self, t, ledger, incoming):
        """Step t begins: ``incoming`` (per sample) reaches it; the ledger's totals so far."""
        self.values["relevance_out"][:, t] = incoming
        self.before = {key: np.array(ledger.get(key, 0.0), dtype=np.float64) for key in ("bias", "stabilizer",
                                                                                          "dropped")}

    def end(self, t, ledger, to_input, passed):
        self.values["relevance_in"][:, t] = to_input
        self.values["passed"][:, t] = passed
        for key, before in self.before.items():
            self.values[key][:, t] = np.asarray(ledger.get(key, 0.0), dtype=np.float64) - before


class LSTM(_Recurrent):
    """Long short-term memory, ``torch.nn.LSTM(batch_first=True)`` with one layer.

    ``i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of x W_ih^T + b_ih + h W_hh^T + b_hh``,
    ``c' = f * c + i * g``, ``h' = o * tanh(c')``, from ``h = c = 0``.

    Parameters
    ----------
    input_size, hidden_size : int
    bidirectional : bool
    output : {"sequence", "last"}
        ``"sequence"``: (N, T, dirs*H), torch's output; ``"last"``: (N, dirs*H), torch's ``h_n``
        (the forward direction's final state, then the backward direction's).
    rng, dtype
        Initial weights U(-1/sqrt(H), 1/sqrt(H)), as torch's.
    """

    G = 4

    def _run(self, k, x, mask):
        W_ih, W_hh, b_ih, b_hh = self._weights(k)
        n, T = x.shape[:2]
        H = self.hidden_size
        pre_x = _matmul(x, W_ih.T) + b_ih
        W_hhT = np.ascontiguousarray(W_hh.T)  # the same products, read faster than through a transposed view
        h = np.zeros((n, H), x.dtype)
        c = np.zeros((n, H), x.dtype)
        hp, cp, gates, pre, cn, y = (np.empty((n, T, m), x.dtype) for m in (H, H, 4 * H, 4 * H, H, H))
        reading = mask[:, :, 0].all(axis=0)  # steps every sample of the batch reads
        for t in range(T):
            hp[:, t], cp[:, t] = h, c
            z, gt = pre[:, t], gates[:, t]
            np.add(pre_x[:, t], _matmul(h, W_hhT), out=z)
            z += b_hh
            gt[:, :2 * H] = _sigmoid(z[:, :2 * H])  # element-wise: the values of each gate computed alone
            gt[:, 2 * H:3 * H] = np.tanh(z[:, 2 * H:3 * H])
            gt[:, 3 * H:] = _sigmoid(z[:, 3 * H:])
            i, f, g, o = gt[:, :H], gt[:, H:2 * H], gt[:, 2 * H:3 * H], gt[:, 3 * H:]
            cn[:, t] = c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            if reading[t]:
                h, c = h_new, c_new
                y[:, t] = h_new
                continue
            m = mask[:, t]
            h, c = np.where(m, h_new, h), np.where(m, c_new, c)
            y[:, t] = np.where(m, h_new, 0)
        return {"x": x, "hp": hp, "cp": cp, "gates": gates, "pre": pre, "cn": cn}, y, h

    def _back(self, k, v, dy, dlast, mask, grads=None):
        W_ih, W_hh = self.weight_ih[k], self.weight_hh[k]
        H, (n, T) = self.hidden_size, v["x"].shape[:2]
        dh = np.zeros((n, H), v["x"].dtype) + dlast
        dc = np.zeros_like(dh)
        dx = np.empty_like(v["x"])
        dpres = np.empty_like(v["pre"]) if grads is not None else None
        for t in reversed(range(T)):
            m = mask[:, t]
            dh = dh + np.where(m, self._at(dy, t), 0)  # outputs past a sample's length are constant 0
            i, f, g, o = np.split(v["gates"][:, t], 4, axis=1)
            tc = np.tanh(v["cn"][:, t])
            dhn, dcn = np.where(m, dh, 0), np.where(m, dc, 0)
            dcn = dcn + dhn * o * (1 - tc ** 2)
            dpre = np.concatenate([dcn * g * i * (1 - i), dcn * v["cp"][:, t] * f * (1 - f), dcn * i * (1 - g ** 2),
                                   dhn * tc * o * (1 - o)], axis=1)
            dx[:, t] = _matmul(dpre, W_ih)
            dh = np.where(m, 0, dh) + _matmul(dpre, W_hh)
            dc = np.where(m, 0, dc) + dcn * f
            if dpres is not None:
                dpres[:, t] = dpre
        if dpres is not None:
            _param_grads(grads, k, dpres, dpres, v["x"], v["hp"])
        return dx

    def _lrp(self, k, v, R_seq, R_last, mask, product, eps, bf, ledger, account):
        W_ih, W_hh, b_ih, b_hh = self._weights(k)
        H, (n, T) = self.hidden_size, v["x"].shape[:2]
        Rh = np.zeros((n, H), v["x"].dtype) + R_last
        Rc = np.zeros_like(Rh)
        R_x = np.zeros_like(v["x"])
        for t in reversed(range(T)):
            m = mask[:, t]
            account.start(t, ledger, _per_sample(Rh) + _per_sample(Rc) + _per_sample(self._at(R_seq, t)))
            Rh = Rh + self._padded(R_seq, t, m, ledger)
            Rh_new, Rc_new = np.where(m, Rh, 0), np.where(m, Rc, 0)   # past a sample's length: passed back as is
            Rh, Rc = np.where(m, 0, Rh), np.where(m, 0, Rc)
            i, f, g, o = np.split(v["gates"][:, t], 4, axis=1)
            x, h_prev, c_prev, c_new = v["x"][:, t], v["hp"][:, t], v["cp"][:, t], v["cn"][:, t]
            # h = o * tanh(c): a product; the signal's share passes tanh unchanged
            R_o, R_tanh = product.split(o, np.tanh(c_new), Rh_new, ledger)
            Rc_new = Rc_new + R_tanh
            # c = f * c_prev + i * g: the epsilon rule on a sum of two products
            R_fc, R_ig = eps_linear([(f * c_prev, None), (i * g, None)], None, c_new, Rc_new, eps, bf, ledger)
            R_f, R_cprev = product.split(f, c_prev, R_fc, ledger)
            R_i, R_g = product.split(i, g, R_ig, ledger)
            Rc = Rc + R_cprev
            # each gate's pre-activation x W_ih^T + h_prev W_hh^T + b: the epsilon rule
            for q, R_q in enumerate((R_i, R_f, R_g, R_o)):
                if R_q is None or not R_q.any():
                    continue
                rows = slice(q * H, (q + 1) * H)
                r_x, r_h = eps_linear([(x, W_ih[rows]), (h_prev, W_hh[rows])], b_ih[rows] + b_hh[rows],
                                      v["pre"][:, t, rows], R_q, eps, bf, ledger)
                R_x[:, t] += r_x
                Rh = Rh + r_h
            account.end(t, ledger, _per_sample(R_x[:, t]), _per_sample(Rh) + _per_sample(Rc))
        return R_x, _per_sample(Rh) + _per_sample(Rc)


class GRU(_Recurrent):
    """Gated recurrent unit, ``torch.nn.GRU(batch_first=True)`` with one layer.

    ``r, z = sigmoid(x W_i^T + b_i + h W_h^T + b_h)`` for their rows,
    ``n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Parameters as for :class:`LSTM`.
    """

    G = 3

    def _run(self, k, x, mask):
        W_ih, W_hh, b_ih, b_hh = self._weights(k)
        n, T = x.shape[:2]
        H = self.hidden_size
        pre_x = _matmul(x, W_ih.T) + b_ih
        h = np.zeros((n, H), x.dtype)
        hp, gates, pre, q_all, hn, y = (np.empty((n, T, m), x.dtype) for m in (H, 3 * H, 3 * H, H, H, H))
        for t in range(T):
            hp[:, t] = h
            zh = _matmul(h, W_hh.T) + b_hh
            r = _sigmoid(pre_x[:, t, :H] + zh[:, :H])
            z = _sigmoid(pre_x[:, t, H:2 * H] + zh[:, H:2 * H])
            q = zh[:, 2 * H:]
            a_n = pre_x[:, t, 2 * H:] + r * q
            nn = np.tanh(a_n)
            pre[:, t] = np.concatenate([pre_x[:, t, :2 * H] + zh[:, :2 * H], a_n], axis=1)
            gates[:, t] = np.concatenate([r, z, nn], axis=1)
            q_all[:, t] = q
            hn[:, t] = h_new = (1 - z) * nn + z * h
            m = mask[:, t]
            h = np.where(m, h_new, h)
            y[:, t] = np.where(m, h_new, 0)
        return {"x": x, "hp": hp, "gates": gates, "pre": pre, "q": q_all, "hn": hn, "px": pre_x}, y, h

    def _back(self, k, v, dy, dlast, mask, grads=None):
        W_ih, W_hh = self.weight_ih[k], self.weight_hh[k]
        H, (n, T) = self.hidden_size, v["x"].shape[:2]
        dh = np.zeros((n, H), v["x"].dtype) + dlast
        dx = np.empty_like(v["x"])
        d_i, d_h = (np.empty_like(v["pre"]), np.empty_like(v["pre"])) if grads is not None else (None, None)
        for t in reversed(range(T)):
            m = mask[:, t]
            dh = dh + np.where(m, self._at(dy, t), 0)  # outputs past a sample's length are constant 0
            r, z, nn = np.split(v["gates"][:, t], 3, axis=1)
            dhn = np.where(m, dh, 0)
            dan = dhn * (1 - z) * (1 - nn ** 2)
            dar = dan * v["q"][:, t] * r * (1 - r)
            daz = dhn * (v["hp"][:, t] - nn) * z * (1 - z)
            di, dhh = np.concatenate([dar, daz, dan], axis=1), np.concatenate([dar, daz, dan * r], axis=1)
            dx[:, t] = _matmul(di, W_ih)
            dh = np.where(m, dh, 0) * z + np.where(m, 0, dh) + _matmul(dhh, W_hh)
            if d_i is not None:
                d_i[:, t], d_h[:, t] = di, dhh
        if d_i is not None:
            _param_grads(grads, k, d_i, d_h, v["x"], v["hp"])
        return dx

    def _lrp(self, k, v, R_seq, R_last, mask, product, eps, bf, ledger, account):
        W_ih, W_hh, b_ih, b_hh = self._weights(k)
        H, (n, T) = self.hidden_size, v["x"].shape[:2]
        Rh = np.zeros((n, H), v["x"].dtype) + R_last
        R_x = np.zeros_like(v["x"])
        for t in reversed(range(T)):
            m = mask[:, t]
            account.start(t, ledger, _per_sample(Rh) + _per_sample(self._at(R_seq, t)))
            Rh = Rh + self._padded(R_seq, t, m, ledger)
            Rh_new = np.where(m, Rh, 0)
            Rh = np.where(m, 0, Rh)
            r, z, nn = np.split(v["gates"][:, t], 3, axis=1)
            x, h_prev, q = v["x"][:, t], v["hp"][:, t], v["q"][:, t]
            # h = (1 - z) * n + z * h_prev: the epsilon rule on a sum of two products
            R_zn, R_zh = eps_linear([((1 - z) * nn, None), (z * h_prev, None)], None, v["hn"][:, t], Rh_new,
                                    eps, bf, ledger)
            R_z1, R_n = product.split(1 - z, nn, R_zn, ledger)
            R_z2, R_hp = product.split(z, h_prev, R_zh, ledger)
            Rh = Rh + R_hp
            # n = tanh(x W_in^T + b_in + r * q): the signal's share passes tanh; the epsilon rule on the sum
            rows = slice(2 * H, 3 * H)
            r_x, R_rq = eps_linear([(x, W_ih[rows]), (r * q, None)], b_ih[rows], v["pre"][:, t, rows], R_n,
                                   eps, bf, ledger)
            R_x[:, t] += r_x
            # r * q with q = h_prev W_hn^T + b_hn: a product, then the epsilon rule on q
            R_r, R_q = product.split(r, q, R_rq, ledger)
            if R_q.any():
                Rh = Rh + eps_linear([(h_prev, W_hh[rows])], b_hh[rows], q, R_q, eps, bf, ledger)[0]
            # the gates r and z (what the product rule gave them): the epsilon rule on their pre-activations
            R_z = _sum_or_none(R_z1, R_z2)
            for gi, R_g in ((0, R_r), (1, R_z)):
                if R_g is None or not R_g.any():
                    continue
                rows = slice(gi * H, (gi + 1) * H)
                r_x, r_h = eps_linear([(x, W_ih[rows]), (h_prev, W_hh[rows])], b_ih[rows] + b_hh[rows],
                                      v["pre"][:, t, rows], R_g, eps, bf, ledger)
                R_x[:, t] += r_x
                Rh = Rh + r_h
            account.end(t, ledger, _per_sample(R_x[:, t]), _per_sample(Rh))
        return R_x, _per_sample(Rh)


def _param_grads(grads, k, d_ih, d_hh, x, h_prev):
    """Direction k's parameter gradients from the pre-activation gradients of every step (N, T, G*H)."""
    grads["weight_ih"][k] = np.einsum("ntg,ntd->gd", d_ih, x)
    grads["weight_hh"][k] = np.einsum("ntg,nth->gh", d_hh, h_prev)
    grads["bias_ih"][k] = d_ih.sum(axis=(0, 1))
    grads["bias_hh"][k] = d_hh.sum(axis=(0, 1))


def _sum_or_none(a, b):
    if a is None:
        return b
    return a if b is None else a + b


__all__ = ["LSTM", "GRU", "sequence_lengths", "tiled_lengths", "eps_linear"]
