"""Fully connected layer."""

import numpy as np

from .base import AffineLayer, as_dtype, he_normal, pair


class Linear(AffineLayer):
    """``y = x W^T + b`` with ``W`` of shape (out_features, in_features).

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

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float64):
        self.in_features, self.out_features = pair((in_features, out_features), "(in_features, out_features)")
        dt = as_dtype(dtype)
        self.weight = he_normal(rng, (self.out_features, self.in_features), self.in_features, dt)
        self.bias = np.zeros(self.out_features, dtype=dt) if bias else None

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"

    def forward_with(self, x, weight, bias=None):
        y = x @ weight.T
        return y if bias is None else y + bias

    def backward_with(self, grad, weight, input_shape):
        return grad @ weight

    def bias_view(self, bias):
        return bias

    def forward_many(self, x, weights):
        if len(weights) == 1:
            return [x @ weights[0].T]
        y = x @ self.derived(("stack", len(weights)), lambda: np.concatenate(weights), inputs=weights).T
        return np.split(y, len(weights), axis=1)

    def backward_many(self, pairs, input_shape):
        if len(pairs) == 1:
            return pairs[0][0] @ pairs[0][1]
        weights = [w for _, w in pairs]
        stacked = self.derived(("stack", len(weights)), lambda: np.concatenate(weights), inputs=weights)
        return np.concatenate([s for s, _ in pairs], axis=1) @ stacked

    def forward(self, a):
        self.input = self._check_input(a, 2, self.in_features, "features")
        self.output = self.forward_with(a, self.weight, self.bias)
        return self.output

    def backward(self, grad, param_grads=True):
        if param_grads:
            self.grad_weight = grad.T @ self.input
            self.grad_bias = None if self.bias is None else grad.sum(axis=0)
        return self.backward_with(grad, self.weight, self.input.shape)
