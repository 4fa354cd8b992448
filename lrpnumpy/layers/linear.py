"""Fully connected layer."""

import math

import numpy as np

from ..errors import ShapeError
from ..kernels import matmul_rows
from ..kernels.convolution import SMALL_GEMM
from ..kernels.reference import BLOCK_ROWS
from .base import AffineLayer, as_dtype, he_normal, pair, stackable


def _matmul(x, w):
    """``x @ w`` on the last axis of ``x`` (N, ..., K), so that a sample's result never depends on its
    batch, for inputs of any rank.

    A sample of at least :data:`~lrpnumpy.kernels.reference.BLOCK_ROWS` rows (tokens (N, T, K) with
    T >= 32) is one product of its own, ``x_n @ w`` written into its part of the output: the same
    call in every batch.  Blocks of 32 rows re-packed the weights for every block (a ViT-B/16 product
    3-5 times slower than whole).  The transposed form ``(w^T x_n^T)^T``, used before, measured again
    on a ViT-B/16's ten products (197 tokens; K, M from 768 to 3072; each product's forward and backward
    weight layout): with one BLAS thread ``x_n @ w`` took 4 % less time in total in float32 (at most 3 %
    more on one product), 13 % less in float64, at batch 1 and 16; with two threads on an idle machine
    up to 13 % less.  But while other processes kept the cores busy, its two OpenBLAS threads waited on
    each other longer than the transposed form's (up to 2-3 times on one product, a whole ViT-B/16
    explanation at batch 16 a quarter longer; both forms were then several times slower than on an idle
    machine).  Fewer rows per sample: fixed blocks of rows (kernels.matmul_rows)."""
    rows = math.prod(x.shape[1:-1])
    if x.ndim < 3 or rows < BLOCK_ROWS or not len(x):
        return matmul_rows(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (w.shape[1],))
    out = np.empty(x.shape[:-1] + (w.shape[1],), np.result_type(x, w))  # new, not a view: _times reuses it
    a, o = x.reshape(len(x), rows, x.shape[-1]), out.reshape(len(x), rows, w.shape[1])
    for n in range(len(x)):
        np.matmul(a[n], w, out=o[n])
    return out


def _small_token_product(x, out_features):
    """True when ``x``'s tokens (N, T, ..., K) go to :func:`~lrpnumpy.kernels.matmul_rows` (fewer than
    :data:`BLOCK_ROWS` rows a sample) in products that OpenBLAS runs in its small-matrix kernels (up to
    ``SMALL_GEMM`` multiply-adds a block).  Those kernels read a transposed operand slowly: the shipped
    ViT's forward products, ``x @ W^T`` through the view ``W.T``, took 1.6-1.8x as long as through a
    contiguous copy of ``W^T`` (17 x 64 x 192: 17.5 against 10.6 us; 272 rows, in 9 blocks: 139 against
    78 us), with the same bits on its shapes (K = 64, 256; both dtypes).  Chosen by a sample's shape and
    the weight's, never the batch."""
    return (x.ndim >= 3 and math.prod(x.shape[1:-1]) < BLOCK_ROWS
            and BLOCK_ROWS * x.shape[-1] * out_features <= SMALL_GEMM)


class Linear(AffineLayer):
    """``y = x W^T + b`` with ``W`` of shape (out_features, in_features), on the last axis.

    Inputs may have any rank >= 2, ``(N, in_features)`` or ``(N, T, in_features)`` (tokens), as in
    PyTorch; the leading axes are kept.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, optional
        Whether the layer has a bias (initialised to zero).
    rng : None, int or numpy.random.Generator, optional
        Source of the He-normal initial weights, ``N(0, 2 / in_features)``.
    dtype : float32 or float64, optional
    """

    params = ("weight", "bias")
    config_keys = ("in_features", "out_features", "bias")

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float64):
        self._configure(in_features, out_features, bias)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, in_features, out_features, bias=True):
        self.in_features, self.out_features = pair((in_features, out_features), "(in_features, out_features)")
        object.__setattr__(self, "bias", True if bias else None)  # the array replaces it in _init_params

    def _init_params(self, rng, dtype):
        self.weight = he_normal(rng, (self.out_features, self.in_features), self.in_features, dtype)
        self.bias = None if self.bias is None else np.zeros(self.out_features, dtype=dtype)

    def param_shapes(self):
        return {"weight": (self.out_features, self.in_features),
                "bias": (self.out_features,)}

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"

    def output_shape(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] != self.in_features:
            raise ShapeError(f"{self!r} expects {self.in_features} features on the last axis of an input "
                             f"(N, ..., {self.in_features}), got shape {tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.out_features,)

    def _transposed(self, weight, x):
        """``weight.T`` for the forward product: a contiguous copy (cached on a frozen layer) where
        :func:`_small_token_product` says so, else the view."""
        if not _small_token_product(x, weight.shape[0]):
            return weight.T
        return self.derived(("transposed", id(weight)), lambda: np.ascontiguousarray(weight.T), inputs=(weight,))

    def forward_with(self, x, weight, bias=None, step=None):
        y = _matmul(x, self._transposed(weight, x))  # in fixed blocks of rows: a sample's output never depends on its batch
        if bias is not None:  # in place: the product is a new array
            y += bias
        return y

    def backward_with(self, grad, weight, step):
        return _matmul(grad, weight)

    def bias_view(self, bias, ndim=None):
        return bias

    def forward_with_many(self, x, weights, step, biases=None):
        if len(weights) == 1 or not stackable(weights):
            return super().forward_with_many(x, weights, step, biases)
        y = _matmul(x, self._transposed(self.derived(("stack", len(weights)), lambda: np.concatenate(weights),
                                                     inputs=weights), x))
        ys = np.split(y, len(weights), axis=-1)
        for part, b in zip(ys, biases or ()):
            if b is not None:  # views of one new array: in place
                part += b
        return ys

    def backward_with_many(self, pairs, step):
        if len(pairs) == 1:
            return _matmul(*pairs[0])
        if not stackable([w for _, w in pairs]):
            return sum(_matmul(s, w) for s, w in pairs)
        weights = [w for _, w in pairs]
        stacked = self.derived(("stack", len(weights)), lambda: np.concatenate(weights), inputs=weights)
        return _matmul(np.concatenate([s for s, _ in pairs], axis=-1), stacked)

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        g2, x2 = grad.reshape(-1, grad.shape[-1]), step.input.reshape(-1, step.input.shape[-1])
        return {"weight": g2.T @ x2, "bias": None if self.bias is None else g2.sum(axis=0)}
