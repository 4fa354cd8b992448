r"""What has a model learned?  Activation maximization (plain, with a density expert, in a
decoder's code space), prototypes and criticisms, a surrogate decision tree, and the influence of
training points.

Activation maximization (Montavon et al., 2018, Sec. 3) finds an input the model finds typical of
a class, by gradient ascent through the model's own backward pass:

* plain: ``max_x log p(c | x) - lambda ||x||^2``;
* with an expert: ``max_x log p(c | x) + log p(x) - lambda ||x||^2``, ``p(x)`` a density fitted to
  the data (:class:`GaussianExpert`, :class:`GaussianMixtureExpert`, or any object with
  ``log_prob(x)`` and ``grad_log_prob(x)``);
* in code space: ``max_z log p(c | g(z)) - lambda ||z||^2`` through a decoder ``g``
  (:class:`PCADecoder`, :func:`train_autoencoder`'s decoder, or any object with ``forward(z)`` and
  ``backward(grad, z)``).

The prototypes alone look like data only when tied to the data; the tutorial compares all three
from the data mean and from the class means (:func:`start_points`).
"""

import numbers
from typing import NamedTuple, Optional

import numpy as np

from .errors import MissingDependencyError, NonFiniteError, RuleParameterError, ShapeError
from .explain import forward_checked, forward_finite, logit_network, onehot, sample_rows
from .layers.base import check_array, check_finite, make_rng


class AMResult(NamedTuple):
    """What :func:`activation_maximization` returns."""

    x: np.ndarray                 # the inputs found (N, ...)
    objective: np.ndarray         # (steps + 1, N): the objective at the start and after every step
    z: Optional[np.ndarray]       # the codes found (code space only)
    target: np.ndarray            # the class of each sample
    converged: Optional[np.ndarray] = None  # (N,) bool: whether each sample's ascent converged
    reason: Optional[tuple] = None          # per sample, why it stopped (or did not converge)
    step_size: Optional[np.ndarray] = None  # (N,): the step each sample ended with (lr, or lr / 2^k)


def _log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _model_term(net, x, t, objective):
    """``(value (N,), gradient w.r.t. x)`` of log p(t | x) or of the logit of t."""
    out, trace = forward_checked(net, x)
    logits = sample_rows(out)
    if objective == "logit":
        value, seed = logits[np.arange(len(x)), t], onehot(out, t)
    else:
        ls = _log_softmax(logits)
        value = ls[np.arange(len(x)), t]
        seed = (onehot(logits, t) - np.exp(ls)).reshape(out.shape)
    return value, net.backward(seed.astype(out.dtype), trace)


def activation_maximization(model, target, x0, l2=0.0, steps=100, lr=0.1, bounds=None, objective="log_softmax",
                            expert=None, decoder=None, z0=None, tol=1e-6):
    """Gradient ascent on ``log p(target | x)`` (or the logit), optionally tied to the data.

    Parameters
    ----------
    model : Sequential or Graph
        A trailing Softmax is skipped (the objective takes the log-softmax of the logits itself).
    target : int or sequence of int
        The class of each start point.
    x0 : ndarray (N, ...)
        Start points (ignored in code space, where ``z0`` starts).
    l2 : float
        Weight ``lambda`` of the penalty ``lambda ||x||^2`` (``||z||^2`` in code space).
    steps, lr : int, float
        Steps of gradient ascent and the largest step size (see Notes).
    bounds : (float, float), optional
        Keep ``x`` in this box (projected ascent, from ``x0`` projected into the box; inputs only).
    objective : "log_softmax" or "logit"
    expert : object, optional
        A density with ``log_prob(x)`` and ``grad_log_prob(x)``: adds ``log p(x)``.
    decoder, z0 : optional
        Code space: ``x = decoder.forward(z)``, gradients through ``decoder.backward(grad, z)``,
        starting at ``z0`` (N, k).
    tol : float
        A sample has converged when the squared norm of its gradient (projected into ``bounds``)
        is at most ``tol * (1 + |objective|)``.

    Returns
    -------
    AMResult
        ``x``, the trajectory of the ``objective``, ``z`` (code space), ``target``, and per
        sample ``converged``, the ``reason`` it stopped or did not converge, and the
        ``step_size`` it ended with.

    Notes
    -----
    Each step is a backtracking line search (Armijo's condition): a sample's step ``lr * g`` is
    taken when it raises the objective by at least ``1e-4 <g, step>``; otherwise the step is
    halved (and stays halved for the following steps) until it does.  So the objective never
    falls, and a step too large for the problem's curvature (a density expert of nearly
    singular covariance) cannot make the ascent diverge: it is shrunk to a stable one.  A sample
    for which no step of 50 halvings raises the objective stops there; it has ``converged`` if its
    (projected) gradient vanishes there, else not (the ascent ran into a kink of the network,
    where the gradient is no ascent direction), and ``reason`` says which.  Where ``lr`` is small enough, the trajectory is exactly that of plain gradient
    ascent.
    """
    if objective not in ("log_softmax", "logit"):
        raise RuleParameterError(f"objective must be 'log_softmax' or 'logit', got {objective!r}")
    for name, v, low in (("l2", l2, 0), ("lr", lr, 0), ("tol", tol, 0)):
        if not (isinstance(v, numbers.Real) and np.isfinite(v) and v >= low):
            raise RuleParameterError(f"{name} must be a finite number >= {low}, got {v!r}")
    if not (isinstance(steps, numbers.Integral) and steps >= 0):
        raise RuleParameterError(f"steps must be an int >= 0, got {steps!r}")
    if bounds is not None:
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise RuleParameterError(f"bounds must be (low, high), got {bounds!r}") from None
        if not low <= high:
            raise RuleParameterError(f"bounds must have low <= high, got {bounds!r}")
    for obj, methods, what in ((expert, ("log_prob", "grad_log_prob"), "expert"),
                               (decoder, ("forward", "backward"), "decoder")):
        if obj is not None and not all(callable(getattr(obj, m, None)) for m in methods):
            raise RuleParameterError(f"{what} must have {' and '.join(methods)} methods, got {obj!r}")
    code = decoder is not None
    v = check_finite(check_array(z0 if code else x0, "z0" if code else "x0"), "z0" if code else "x0")
    if code and v.ndim != 2:
        raise ShapeError(f"z0 must be codes of shape (N, k), got {v.shape}")
    v = v.copy() if bounds is None or code else np.clip(v, low, high)  # the ascent starts in the box
    x = decoder.forward(v) if code else v
    net = logit_network(model, x)
    t = np.asarray(target)
    t = np.full(len(v), int(t)) if t.ndim == 0 else t.astype(np.int64)
    if t.shape != (len(v),):
        raise ShapeError(f"target needs one class per start point ({len(v)}), got shape {t.shape}")
    axes = tuple(range(1, v.ndim))

    def ascent(u, who):
        """The objective at ``u`` (the points of samples ``who``) and its gradient (the ascent direction)."""
        x = decoder.forward(u) if code else u
        value, g = _model_term(net, x, t[who], objective)
        if expert is not None:
            value = value + expert.log_prob(x)
            g = g + expert.grad_log_prob(x).astype(g.dtype)
        value = value - l2 * (u ** 2).sum(axis=axes)
        g = decoder.backward(g, u) if code else g
        return value, g - u.dtype.type(2 * l2) * u

    def trial(u, who):
        """:func:`ascent` where it is finite; -inf (a step to reject) where a sample overflows."""
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                value, g = ascent(u, who)
            finite = np.isfinite(value) & np.isfinite(g).reshape(len(u), -1).all(axis=1)
            if finite.all():
                return value, g
        except NonFiniteError:
            if len(who) == 1:
                return np.full(1, -np.inf), np.zeros_like(u)
            parts = [trial(u[i:i + 1], who[i:i + 1]) for i in range(len(who))]  # which of them overflows
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return np.where(finite, value, -np.inf), np.where(finite.reshape((-1,) + (1,) * (u.ndim - 1)), g, 0)

    n = len(v)
    everyone = np.arange(n)
    value, g = ascent(v, everyone)
    if not (np.isfinite(value).all() and np.isfinite(g).all()):
        raise NonFiniteError("the objective or its gradient at the start points is not finite")
    size = np.full(n, float(lr))
    moving, rise, stuck = np.ones(n, bool), np.full(n, np.inf), np.zeros(n, bool)
    trajectory = [value.copy()]
    for _ in range(steps):
        todo, before = np.flatnonzero(moving), size.copy()
        for _halving in range(51):
            if len(todo) == 0:
                break
            step = size[todo].reshape((-1,) + (1,) * (v.ndim - 1)).astype(v.dtype) * g[todo]
            new = v[todo] + step
            if bounds is not None and not code:
                new = np.clip(new, low, high)
            new_value, new_g = trial(new, todo)
            armijo = (g[todo] * (new - v[todo])).reshape(len(todo), -1).sum(axis=1)
            moved = (new != v[todo]).reshape(len(todo), -1).any(axis=1)
            ok = np.isfinite(new_value) & (new_value >= value[todo] + 1e-4 * armijo) & moved
            done = todo[ok]
            rise[done] = new_value[ok] - value[done]
            v[done], value[done], g[done] = new[ok], new_value[ok], new_g[ok]
            todo = todo[~ok]
            size[todo] /= 2
        # 50 halvings and no rise: no step along the (projected) gradient raises the objective
        moving[todo], stuck[todo], rise[todo], size[todo] = False, True, 0.0, before[todo]
        trajectory.append(value.copy())
    # where a sample stopped: stationary if its (projected) gradient vanishes, else stuck on a kink
    if bounds is not None and not code:
        g = np.clip(v + g, low, high) - v  # the projected gradient: what a unit step could still move
    slope = (g * g).reshape(n, -1).sum(axis=1)
    flat = slope <= tol * (1 + np.abs(value))
    converged = flat
    reason = []
    for i in range(n):
        if flat[i]:
            text = f"the (projected) gradient vanished: squared norm {slope[i]:.3g} <= tol (1 + |objective|)"
        elif stuck[i] or size[i] < lr * 2.0 ** -20:
            text = (f"stuck: the gradient (squared norm {slope[i]:.3g}) does not vanish, but no step along it "
                    f"raises the objective {'any more' if stuck[i] else 'by more than rounding'}: the ascent ran "
                    f"into a kink of the network (a ReLU or max pool switching), where the gradient jumps")
        else:
            text = (f"not converged after {steps} steps: the gradient's squared norm is still {slope[i]:.3g} "
                    f"(the last step raised the objective by {rise[i]:.3g}); take more steps")
        if size[i] < lr and not text.startswith("stuck"):
            text += f" (the step was halved to {size[i]:.3g}: lr={lr!r} is too large for the objective's curvature)"
        reason.append(text)
    return AMResult(decoder.forward(v) if code else v, np.array(trajectory), v if code else None, t,
                    converged, tuple(reason), size)


def start_points(data, labels=None, classes=None):
    """The tutorial's start points: the data mean (``labels`` None), or the mean of each class."""
    data = check_array(np.asarray(data), "data")
    if labels is None:
        return data.mean(axis=0, keepdims=True)
    labels = np.asarray(labels)
    classes = np.unique(labels) if classes is None else classes
    return np.stack([data[labels == c].mean(axis=0) for c in classes])


# ----- density experts -----

def _fitted(obj, attribute):
    if not hasattr(obj, attribute):
        raise RuleParameterError(f"{type(obj).__name__} is not fitted yet: call .fit(data) first")


def _flat(x):
    x = np.asarray(x, dtype=np.float64)
    return sample_rows(x)


class GaussianExpert:
    """A Gaussian density ``N(mu, Sigma + reg I)`` fitted to data (full covariance)."""

    def __init__(self, reg=1e-2):
        if not (isinstance(reg, numbers.Real) and np.isfinite(reg) and reg > 0):
            raise RuleParameterError(f"reg must be a number > 0, got {reg!r}")
        self.reg = float(reg)

    def fit(self, data):
        d = _flat(check_array(np.asarray(data), "data"))
        self.mean = d.mean(axis=0)
        cov = np.cov(d, rowvar=False).reshape(d.shape[1], d.shape[1]) + self.reg * np.eye(d.shape[1])
        self.precision = np.linalg.inv(cov)
        self._logdet = np.linalg.slogdet(cov)[1]
        return self

    def log_prob(self, x):
        _fitted(self, "precision")
        diff = _flat(x) - self.mean
        maha = np.einsum("ni,ij,nj->n", diff, self.precision, diff)
        return -0.5 * (maha + self._logdet + diff.shape[1] * np.log(2 * np.pi))

    def grad_log_prob(self, x):
        _fitted(self, "precision")
        x = np.asarray(x)
        return (-(_flat(x) - self.mean) @ self.precision).reshape(x.shape).astype(x.dtype)


class GaussianMixtureExpert:
    """A mixture of ``k`` full-covariance Gaussians fitted by scikit-learn's GaussianMixture; the
    gradient of ``log p(x)`` in closed form: ``sum_k r_k(x) Sigma_k^-1 (mu_k - x)``."""

    def __init__(self, k=3, reg=1e-2, seed=0):
        if not (isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1):
            raise RuleParameterError(f"k must be an int >= 1, got {k!r}")
        if not (isinstance(reg, numbers.Real) and np.isfinite(reg) and reg > 0):
            raise RuleParameterError(f"reg must be a finite number > 0, got {reg!r}")
        if not (seed is None or isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0):
            raise RuleParameterError(f"seed must be None or an int >= 0, got {seed!r}")
        self.k, self.reg, self.seed = int(k), float(reg), seed

    def fit(self, data):
        try:
            from sklearn.mixture import GaussianMixture
        except ImportError as exc:
            raise MissingDependencyError("GaussianMixtureExpert needs scikit-learn: pip install "
                                         "'lrpnumpy[data]'") from exc
        gm = GaussianMixture(self.k, covariance_type="full", reg_covar=self.reg, random_state=self.seed)
        gm.fit(_flat(check_array(np.asarray(data), "data")))
        self.weights, self.means = gm.weights_, gm.means_
        self.precisions = np.linalg.inv(gm.covariances_)
        self._logdets = np.array([np.linalg.slogdet(c)[1] for c in gm.covariances_])
        return self

    def _components(self, x):
        """``(log w_k N(x; mu_k, Sigma_k)`` (N, k), ``x - mu_k`` (N, k, D))."""
        _fitted(self, "precisions")
        d = _flat(x)
        diff = d[:, None, :] - self.means[None]
        maha = np.einsum("nki,kij,nkj->nk", diff, self.precisions, diff)
        log = np.log(self.weights)[None] - 0.5 * (maha + self._logdets[None] + d.shape[1] * np.log(2 * np.pi))
        return log, diff

    def log_prob(self, x):
        log, _ = self._components(x)
        top = log.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(log - top).sum(axis=1, keepdims=True)))[:, 0]

    def grad_log_prob(self, x):
        x = np.asarray(x)
        log, diff = self._components(x)
        r = np.exp(log - log.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        g = -np.einsum("nk,kij,nkj->ni", r, self.precisions, diff)
        return g.reshape(x.shape).astype(x.dtype)


# ----- decoders -----

class PCADecoder:
    """A linear decoder: ``g(z) = mean + z V`` with the ``k`` principal directions ``V`` of the data."""

    def __init__(self, k):
        if not (isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1):
            raise RuleParameterError(f"k must be an int >= 1, got {k!r}")
        self.k = int(k)

    def fit(self, data):
        data = check_array(np.asarray(data), "data")
        self.shape, self.dtype = data.shape[1:], data.dtype
        d = _flat(data)
        self.mean = d.mean(axis=0)
        _, _, vt = np.linalg.svd(d - self.mean, full_matrices=False)
        if self.k > len(vt):
            raise ShapeError(f"PCADecoder k={self.k} exceeds the data's rank bound {len(vt)}")
        self.components = vt[:self.k]
        return self

    def forward(self, z):
        _fitted(self, "components")
        return (self.mean + np.asarray(z, np.float64) @ self.components).reshape((len(z),) + self.shape) \
            .astype(self.dtype)

    def backward(self, grad, z=None):
        """The gradient with respect to the code: ``grad V^T`` (the same at every ``z``)."""
        _fitted(self, "components")
        return (_flat(grad) @ self.components.T).astype(self.dtype)

    def encode(self, x):
        _fitted(self, "components")
        return ((_flat(x) - self.mean) @ self.components.T).astype(self.dtype)


class NetworkDecoder:
    """An lrpnumpy network as a decoder (e.g. the decoder half of :func:`train_autoencoder`)."""

    def __init__(self, net, shape):
        self.net, self.shape = net, tuple(shape)

    def forward(self, z):
        return self.net.forward(z).reshape((len(z),) + self.shape)

    def backward(self, grad, z):
        out, trace = self.net.forward_trace(z)
        return self.net.backward(grad.reshape(out.shape).astype(out.dtype), trace)


def train_autoencoder(data, code=16, hidden=128, epochs=20, batch_size=64, lr=1e-3, seed=0):
    """An MLP autoencoder (``D - hidden - code - hidden - D``, ReLU, a linear code) trained with
    lrpnumpy's layers, their ``backward`` and :class:`~lrpnumpy.train.Adam` on the squared error.

    Returns
    -------
    (encoder, decoder, losses)
        Two Sequentials and the mean loss of each epoch; ``NetworkDecoder(decoder, shape)`` makes
        the decoder usable by :func:`activation_maximization`.
    """
    from .layers import Flatten, Linear, ReLU, Sequential
    from .train import Adam
    data = check_array(np.asarray(data), "data")
    flat = sample_rows(data)
    dim, dt, rng = flat.shape[1], data.dtype, make_rng(seed)
    encoder = Sequential(Flatten(), Linear(dim, hidden, rng=rng, dtype=dt), ReLU(), Linear(hidden, code, rng=rng,
                                                                                          dtype=dt))
    decoder = Sequential(Linear(code, hidden, rng=rng, dtype=dt), ReLU(), Linear(hidden, dim, rng=rng, dtype=dt))
    opt, losses = Adam(lr), []
    for _ in range(epochs):
        order, total = rng.permutation(len(flat)), 0.0
        for i in range(0, len(flat), batch_size):
            xb = data[order[i:i + batch_size]]
            zb, etrace = encoder.forward_trace(xb)
            yb, dtrace = decoder.forward_trace(zb)
            diff = yb - flat[order[i:i + batch_size]]
            total += float((diff ** 2).sum())
            grad = (2 * diff / dt.type(len(xb))).astype(dt)
            gz, dgrads = decoder.backward(grad, dtrace, param_grads=True)
            _, egrads = encoder.backward(gz, etrace, param_grads=True)
            opt.step([(getattr(layer, name), g[name]) for net, grads in ((decoder, dgrads), (encoder, egrads))
                      for layer, g in zip(net, grads) for name in g if g[name] is not None])
        losses.append(total / len(flat))
        if not np.isfinite(losses[-1]):
            raise RuleParameterError(f"train_autoencoder diverged in epoch {len(losses)} (loss {losses[-1]}); lower "
                                     f"lr (now {lr!r})")
    return encoder, decoder, losses


# ----- example-based: prototypes and criticisms -----

def _rbf(a, b, gamma):
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.exp(-gamma * np.maximum(sq, 0))


def mmd_critic(features, n_prototypes, n_criticisms=0, gamma=None):
    r"""Prototypes and criticisms by MMD-critic (Kim, Khanna, Koyejo, 2016).

    Prototypes are chosen greedily to minimise the maximum mean discrepancy between them and the
    data under the RBF kernel ``k(a, b) = exp(-gamma ||a - b||^2)``; criticisms are the points where
    the witness function ``|mean_i k(x, x_i) - mean_j k(x, p_j)|`` is largest (the data the
    prototypes explain worst), chosen greedily with Kim et al.'s log-determinant regulariser so
    that they differ from each other.

    Parameters
    ----------
    features : ndarray (N, ...)
        Any representation (pixels, a layer's activations); flattened per sample.
    gamma : float, optional
        The kernel width; default ``1 / D`` (``D`` the number of features).

    Returns
    -------
    (ndarray of int, ndarray of int)
        The indices of the prototypes and of the criticisms, in the order chosen.
    """
    x = _flat(check_finite(check_array(np.asarray(features), "features"), "features"))
    n = len(x)
    for name, v in (("n_prototypes", n_prototypes), ("n_criticisms", n_criticisms)):
        if not (isinstance(v, numbers.Integral) and 0 <= v <= n):
            raise RuleParameterError(f"{name} must be an int in [0, {n}], got {v!r}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    if not (isinstance(gamma, numbers.Real) and gamma > 0):
        raise RuleParameterError(f"gamma must be a number > 0, got {gamma!r}")
    K = _rbf(x, x, gamma)
    col = K.mean(axis=0)  # mean similarity of each point to the data
    chosen = []
    for _ in range(n_prototypes):
        # J(S) = 2/|S| sum_{j in S} col_j - 1/|S|^2 sum_{i,j in S} K_ij: the MMD^2 reduction, for S + {c}
        size = len(chosen) + 1
        cross = col[chosen].sum() + col
        inner = K[np.ix_(chosen, chosen)].sum() + 2 * K[chosen].sum(axis=0) + np.diag(K)
        gain = 2 * cross / size - inner / size ** 2
        gain[chosen] = -np.inf
        chosen.append(int(np.argmax(gain)))
    prototypes = np.array(chosen, dtype=np.int64)
    witness = np.abs(col - (K[:, prototypes].mean(axis=1) if len(prototypes) else 0))
    critics = []
    for _ in range(n_criticisms):
        score = witness.copy()
        if critics:  # log det of the kernel matrix of the criticisms with the candidate
            for c in range(n):
                idx = critics + [c]
                score[c] += np.linalg.slogdet(K[np.ix_(idx, idx)])[1]
        score[list(prototypes) + critics] = -np.inf
        critics.append(int(np.argmax(score)))
    return prototypes, np.array(critics, dtype=np.int64)


# ----- surrogate model -----

def surrogate_tree(model, x, x_test, max_depth=3, seed=0):
    """A decision tree (scikit-learn) fitted to the network's predictions on ``x``.

    Returns ``(tree, fidelity)``: the fitted ``DecisionTreeClassifier`` on the flattened inputs, and
    its agreement with the network's predictions on ``x_test``.
    """
    try:
        from sklearn.tree import DecisionTreeClassifier
    except ImportError as exc:
        raise MissingDependencyError("surrogate_tree needs scikit-learn: pip install 'lrpnumpy[data]'") from exc
    net = logit_network(model, x)
    y = sample_rows(forward_finite(net, x)).argmax(axis=1)
    tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed).fit(_flat(x), y)
    y_test = sample_rows(forward_finite(net, x_test)).argmax(axis=1)
    return tree, float(np.mean(tree.predict(_flat(x_test)) == y_test))


# ----- influence of training points (Koh & Liang, 2017), last layer -----

def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _augment(h):
    return np.hstack([h, np.ones((len(h), 1))])  # the bias as a weight on a constant feature


def last_layer_hessian(W, h, l2):
    """The exact Hessian of ``mean_i CE(W h_i, y_i) + l2/2 ||W||^2`` with respect to ``W`` (K, D),
    flattened row-major: ``mean_i (diag(p_i) - p_i p_i^T) kron h_i h_i^T + l2 I``."""
    p = _softmax(h @ W.T)
    k, d = W.shape
    H = np.zeros((k * d, k * d))
    for pi, hi in zip(p, h):
        H += np.kron(np.diag(pi) - np.outer(pi, pi), np.outer(hi, hi))
    return H / len(h) + l2 * np.eye(k * d)


def _grads(W, h, y):
    """Per-sample gradients of CE(W h_i, y_i), flattened: (N, K*D)."""
    p = _softmax(h @ W.T)
    p[np.arange(len(y)), y] -= 1
    return sample_rows(p[:, :, None] * h[:, None, :])


def _last_layer_loss(W, h, y, l2):
    """``mean_i CE(W h_i, y_i) + l2/2 ||W||^2``."""
    z = h @ W.T
    top = z.max(axis=1, keepdims=True)
    log_p = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean() + 0.5 * l2 * (W ** 2).sum()


def fit_last_layer(h, y, classes, l2=1e-2, W0=None, iterations=50, exclude=None):
    """Train a softmax layer (with bias) on features ``h`` to convergence by Newton's method (the loss
    is strictly convex with ``l2 > 0``); ``exclude`` leaves one training point out.

    Each Newton step is damped by a backtracking line search (halved until the loss falls by
    Armijo's condition), so the iteration cannot overshoot and diverge where the loss is flat; a
    fit that has not converged after ``iterations`` steps is an error, not a result.
    """
    ha = _augment(np.asarray(h, np.float64))
    keep = np.ones(len(ha), bool)
    if exclude is not None:
        keep[exclude] = False
    ha, y = ha[keep], np.asarray(y)[keep]
    W = np.zeros((classes, ha.shape[1])) if W0 is None else W0.copy()
    loss, step = _last_layer_loss(W, ha, y, l2), np.inf
    for _ in range(iterations):
        g = _grads(W, ha, y).mean(axis=0) + l2 * W.ravel()
        step = np.linalg.solve(last_layer_hessian(W, ha, l2), g)
        for _halving in range(50):
            new = W - step.reshape(W.shape)
            new_loss = _last_layer_loss(new, ha, y, l2)
            if np.isfinite(new_loss) and new_loss <= loss - 1e-4 * float(g @ step):
                break
            step = step / 2
        W, loss = new, new_loss
        if np.abs(step).max() < 1e-12:
            break
    if not (np.isfinite(W).all() and np.abs(step).max() <= 1e-6 * (1 + np.abs(W).max())):
        raise RuleParameterError(f"fit_last_layer did not converge in {iterations} Newton steps (the last step "
                                 f"moved a weight by {np.abs(step).max():.3g}); raise iterations or l2")
    return W


def influence(h_train, y_train, h_test, y_test, classes, l2=1e-2, W=None):
    r"""The influence of each training point on the test loss (Koh & Liang, 2017), for a softmax
    last layer on fixed features ``h`` (e.g. the penultimate activations):
    ``I(z_i, z_test) = -grad L(z_test)^T H^-1 grad L(z_i)``, with the exact Hessian of the
    regularised training loss.  Removing point ``i`` changes the test loss by about
    ``-I / n``: a positive influence means that up-weighting the point raises the test loss.

    Returns
    -------
    (ndarray (N_train,), ndarray)
        The influence of every training point on the summed loss of the test points, and the
        last layer's weights (K, D + 1: bias last) it was computed at.
    """
    W = fit_last_layer(h_train, y_train, classes, l2) if W is None else W
    htr, hte = _augment(np.asarray(h_train, np.float64)), _augment(np.asarray(h_test, np.float64))
    H = last_layer_hessian(W, htr, l2)
    g_test = _grads(W, hte, np.asarray(y_test)).sum(axis=0)
    g_train = _grads(W, htr, np.asarray(y_train))
    return -(g_train @ np.linalg.solve(H, g_test)), W
