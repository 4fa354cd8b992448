"""The vocabulary every explanation method shares: :class:`Explanation`, :class:`ConservationReport`,
target classes and one-hot outputs, and the checked forward pass.

It sits below the rules and methods (it imports neither); :mod:`lrpnumpy.explain` re-exports every
name, so ``from lrpnumpy.explain import Explanation`` keeps working.
"""

import math
import numbers

import numpy as np

from .errors import LRPError, NonFiniteError, ShapeError, TargetError
from .layers import Graph, Network, Softmax
from .layers.base import check_array, check_finite


def sample_rows(a):
    """``a`` as one row per sample, shape (N, features); an empty batch gives (0, features)."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def layer_index(net, layer):
    """The execution-order index of ``layer``: an int (negative counts from the end) or a node name."""
    if isinstance(layer, str):
        if layer not in net.names:
            raise ShapeError(f"no layer named {layer!r}; the network's layers are {list(net.names)}")
        return list(net.names).index(layer)
    if isinstance(layer, numbers.Integral) and not isinstance(layer, bool) and -len(net) <= layer < len(net):
        return int(layer) % len(net)
    raise ShapeError(f"layer must be a node name or an index in [-{len(net)}, {len(net)}), got {layer!r}")


def forward_checked(net, x):
    """``net.forward_trace(x)``, raising NonFiniteError (naming the layer) if the output is not finite."""
    output, trace = net.forward_trace(x)
    if not np.isfinite(output).all():
        bad = next(s for s in trace if not np.isfinite(s.output).all())
        raise NonFiniteError(f"the forward pass overflowed at layer {bad.index} ({bad.layer!r}): its output holds "
                             f"NaN or infinity for finite input; the input or the weights are too large for "
                             f"{x.dtype}")
    return output, trace


def forward_finite(net, x):
    """``net.forward(x)`` (no trace kept), raising NonFiniteError as :func:`forward_checked` does."""
    output = net.forward(x)
    if not np.isfinite(output).all():
        forward_checked(net, x)  # names the layer
    return output


def logit_network(model, x):
    """Check ``model`` and ``x``; return the network without a trailing Softmax."""
    if not isinstance(model, Network) or len(model) == 0:
        raise ShapeError(f"model must be a non-empty lrpnumpy Sequential or Graph, got {type(model).__name__}")
    check_finite(check_array(x, "x"), "x")
    if x.ndim < 2:
        raise ShapeError(f"x must be a batch with a leading sample axis, got shape {x.shape}")
    return without_softmax(model)


def without_softmax(model):
    """``model`` without a trailing Softmax (unless that is all it has)."""
    if not isinstance(model[-1], Softmax) or len(model) == 1:
        return model
    if isinstance(model, Graph):
        before = model.inputs[model.output][0]
        return model if before == model.input_name else model.up_to(before)
    return model[:-1]


def target_classes(output, target):
    """The target class of each sample as an int array of shape (N,) (None: the argmax of ``output``)."""
    if output.ndim < 2 or any(d != 1 for d in output.shape[2:]):
        raise ShapeError(f"a target class needs an output of shape (N, classes) (or (N, classes, 1, 1)), got "
                         f"{output.shape}; pass relevance_out instead")
    output = output.reshape(output.shape[:2])
    n, k = output.shape
    if target is None:
        return output.argmax(axis=1)
    t = np.asarray(target)
    if t.dtype == bool or not np.issubdtype(t.dtype, np.integer):
        raise TargetError(f"target must be an int or ints, got {target!r}")
    if t.ndim == 0:
        t = np.full(n, int(t))
    if t.shape != (n,):
        raise TargetError(f"target needs one class per sample ({n}), got shape {t.shape}")
    if (t < 0).any() or (t >= k).any():
        raise TargetError(f"target {target!r} out of range: the model has {k} classes (0..{k - 1})")
    return t.astype(np.int64)


def onehot(output, classes):
    """One-hot array of the output's shape and dtype marking ``classes`` (one per sample)."""
    out = np.zeros_like(output)
    out.reshape(out.shape[:2])[np.arange(len(classes)), classes] = 1  # (N, K, 1, 1) outputs too
    return out


def target_onehot(output, target):
    """One-hot array of the output's shape marking the target class of each sample (None: the argmax)."""
    return onehot(output, target_classes(output, target))


class Explanation:
    """What every explanation method returns.

    Attributes
    ----------
    relevance : ndarray
        Relevance (attribution) of each input feature, shape of ``x``.
    output : ndarray
        The model's output for ``x`` (logits when a trailing Softmax was skipped).
    target : ndarray of int, shape (N,), or None
        The class explained for each sample (None when the output relevance was given).
    method : str
        The method that produced it (``"lrp"``, ``"gradient"``, ...).
    params : dict
        The method's parameters (rule or composite, steps, noise level, ...).
    layers : list of ndarray or None
        LRP only: relevance at the input of every explained layer, in order, then the
        output relevance last (``len(network) + 1`` arrays).  A several-input layer's entry
        is a tuple, one array per input.
    network : Sequential, Graph or None
        LRP only: the layers explained.
    rules : list of Rule or None
        LRP only: the rule each layer used.
    """

    def __init__(self, relevance, output, target=None, method="lrp", params=None, layers=None, network=None,
                 rules=None, ledgers=None):
        self.relevance, self.output, self.target = relevance, output, target
        self.method, self.params = method, dict(params or {})
        self.layers, self.network, self.rules, self._ledgers = layers, network, rules, ledgers

    def __repr__(self):
        extra = ""
        if self.layers is not None:
            extra = (f", {len(self.network)} layers, sum R in/out = {self.relevance.sum():.6g}/"
                     f"{self.layers[-1].sum():.6g}")
        return f"Explanation({self.method}, relevance shape {self.relevance.shape}{extra})"

    def conservation(self):
        """Per-layer conservation table (LRP only); see :class:`ConservationReport`.

        Its rows hold one value per sample; printing it (``str``) sums every column over the batch,
        and ``to_text(sample=i)`` or ``to_dict(sample=i)`` show one sample.
        """
        if self._ledgers is None:
            raise LRPError(f"a {self.method} explanation has no per-layer conservation report; it is LRP's")
        if any(callable(ledger) for ledger in self._ledgers):  # explain leaves a rule's arithmetic on its sums until now
            self._ledgers = [ledger() if callable(ledger) else ledger for ledger in self._ledgers]
        net = self.network
        return ConservationReport([
            dict(index=i, name=name, layer=repr(layer), rule=repr(rule), inputs=list(net.inputs_of(i)),
                 parts=ledger.get("parts"), **_full(ledger), **({"steps": ledger["steps"]} if "steps" in ledger else {}))
            for i, (name, layer, rule, ledger) in enumerate(zip(net.names, net, self.rules, self._ledgers))])


def _shorten(text, n):
    """``text`` cut to ``n`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= n else text[:n - 3] + "..."


def _full(ledger):
    """The ledger with every column (zeros for what the rule did not report)."""
    n = ledger["relevance_out"].shape
    return {k: ledger.get(k, np.zeros(n))
            for k in ("relevance_out", "relevance_in", "bias", "stabilizer", "dropped", "softmax")}


def _steps(steps, sample):
    """A recurrent layer's per-step account as lists (dirs x T), summed over the batch or for one sample."""
    return {k: (np.sum(v, axis=0) if sample is None else v[sample]).tolist() for k, v in steps.items()}


class ConservationReport:
    """Sum of relevance at every layer and what biases and stabilizers absorbed.

    ``rows`` holds one dict per layer with ``index``, ``layer``, ``rule`` and
    per-sample arrays (shape (N,)) ``relevance_in``, ``relevance_out``,
    ``bias``, ``stabilizer``, ``dropped`` and ``softmax`` (what AttnLRP's softmax rule does not
    pass on, by design; zero elsewhere); for each layer
    ``relevance_in + bias + stabilizer + dropped + softmax == relevance_out`` up to
    rounding: ``relevance_out`` is the relevance the layer receives at its output (from the layer
    above), ``relevance_in`` what its rule passes on to its input.  ``str(report)`` prints the table
    summed over the batch (its title says so); :meth:`to_text` can show one sample.

    A recurrent layer's row also has ``steps``, its account per time step: arrays of shape
    (N, dirs, T) ``relevance_out``, ``relevance_in``, ``passed``, ``bias``, ``stabilizer`` and
    ``dropped`` with ``relevance_out = relevance_in + passed + bias + stabilizer + dropped`` at
    every step (``passed``: on to the state before the step; see
    :meth:`lrpnumpy.layers.LSTM.lrp`); :meth:`step_residual` checks it.
    """

    columns = ("relevance_in", "relevance_out", "bias", "stabilizer", "dropped", "softmax")

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def residual(self):
        """Per layer and sample: ``relevance_out - relevance_in - bias - stabilizer - dropped``."""
        return np.array([r["relevance_out"] - r["relevance_in"] - r["bias"] - r["stabilizer"] - r["dropped"]
                         - r.get("softmax", 0) for r in self.rows])

    def step_residual(self):
        """Per recurrent layer (by row index): ``relevance_out - relevance_in - passed - bias - stabilizer -
        dropped`` of every sample, direction and time step, shape (N, dirs, T)."""
        return {r["index"]: r["steps"]["relevance_out"] - sum(r["steps"][k] for k in ("relevance_in", "passed", "bias",
                                                                                      "stabilizer", "dropped"))
                for r in self.rows if r.get("steps") is not None}

    def to_dict(self, sample=None):
        """Rows with plain floats (summed over the batch, or for one ``sample``), for JSON."""
        pick = (lambda v: float(np.sum(v))) if sample is None else (lambda v: float(v[sample]))
        return [{k: (pick(v) if k in self.columns else [pick(p) for p in v] if k == "parts" and v is not None
                     else _steps(v, sample) if k == "steps" else v) for k, v in row.items()} for row in self.rows]

    def split(self, name, sample=None):
        """How node ``name``'s input relevance divides among its inputs: ``{input name: sum R}``.

        For an :class:`~lrpnumpy.layers.Add` at a residual connection, what the skip path and the
        residual branch each receive (summed over the batch, or for one ``sample``).
        """
        row = next((r for r in self.to_dict(sample) if r.get("name") == name), None)
        if row is None:
            raise KeyError(f"no node {name!r} in the report")
        parts = row["parts"] if row["parts"] is not None else [row["relevance_in"]]
        return dict(zip(row["inputs"], parts))

    def to_text(self, sample=None, full=False):
        """The table as text; sums over the batch, or for one ``sample`` (the title line says which).

        Each row reads ``R at output = R at input + bias + stabilizer + dropped``: the relevance the
        layer receives from above, then what its rule passes down to the layer's input and what
        biases, the stabilizer and the rule dropped.  Layer descriptions are shortened to fit about
        120 columns unless ``full``; rule descriptions are never cut (they say which rule ran).
        """
        rows = self.to_dict(sample)
        softmax = any(r.get("softmax", 0.0) != 0 for r in rows)  # AttnLRP's softmax rule: its own column
        n = len(self.rows[0]["relevance_out"]) if self.rows else 0
        which = f"sample {sample}" if sample is not None else f"summed over the batch of {n} sample{'s' * (n != 1)}"
        short = (lambda text, n: text) if full else _shorten
        named = any(r.get("name") != str(r["index"]) for r in rows)
        layers = [short((f"{r['name']}: " if named else "") + r["layer"], 30 + 14 * named) for r in rows]
        rules = [r["rule"] for r in rows]
        width, rwidth = max(len(x) for x in layers), max(len(x) for x in rules)
        head = (f"{'#':>3}  {'layer':<{width}}  {'rule':<{rwidth}}  {'R at output':>11}  {'R at input':>11}  "
                f"{'bias':>10}  {'stabilizer':>10}  {'dropped':>10}" + (f"  {'softmax':>10}" if softmax else ""))
        lines = [f"relevance per layer, {which}: R at output (received from above) = R at input (passed down) "
                 f"+ bias + stabilizer + dropped" + (" + softmax" if softmax else ""), head, "-" * len(head)]
        for r, layer, rule in zip(rows, layers, rules):
            lines.append(f"{r['index']:>3}  {layer:<{width}}  {rule:<{rwidth}}  "
                         f"{r['relevance_out']:>11.5g}  {r['relevance_in']:>11.5g}  {r['bias']:>10.3g}  "
                         f"{r['stabilizer']:>10.3g}  {r['dropped']:>10.3g}"
                         + (f"  {r.get('softmax', 0.0):>10.3g}" if softmax else ""))
            if r.get("parts") is not None:
                split = ", ".join(f"{short(n, 24)} {p:.5g}" for n, p in zip(r["inputs"], r["parts"]))
                lines.append(f"{'':>3}  {'':<{width}}  {'split to inputs:':<{rwidth}}  {split}")
        return "\n".join(lines)

    def __str__(self):
        return self.to_text()
