"""A chain of layers."""

from ..errors import ShapeError
from .base import Layer, as_dtype


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    Supports ``len(net)``, ``net[i]`` (a slice gives a new Sequential sharing
    the layers) and iteration.  ``input_shape`` optionally records the shape
    of one sample (e.g. ``(1, 28, 28)``), for tools that make inputs.
    """

    def __init__(self, *layers, input_shape=None):
        self.input_shape = None if input_shape is None else tuple(input_shape)
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ShapeError(f"Sequential item {i} is {type(layer).__name__}, not an lrpnumpy Layer")
        self.layers = list(layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            keeps_input = i.start in (None, 0) and len(self.layers[i]) > 0
            return Sequential(*self.layers[i], input_shape=self.input_shape if keeps_input else None)
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        body = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({body}\n)"

    def forward(self, a):
        for layer in self.layers:
            a = layer.forward(a)
        return a

    def backward(self, grad, param_grads=True):
        for layer in reversed(self.layers):
            grad = layer.backward(grad, param_grads)
        return grad

    def lrp(self, R, rules=None):
        """Relevance at the input from relevance ``R`` at the output.

        ``rules`` is a list with one rule (or None for the layer's default)
        per layer; without it every layer uses its default rule.
        """
        rules = [None] * len(self) if rules is None else rules
        for layer, rule in zip(reversed(self.layers), reversed(rules)):
            R = layer.lrp(R, rule)
        return R

    def clear(self):
        for layer in self.layers:
            layer.clear()

    def freeze(self):
        for layer in self.layers:
            layer.freeze()
        return self

    def astype(self, dtype):
        as_dtype(dtype)
        return Sequential(*(layer.astype(dtype) for layer in self.layers), input_shape=self.input_shape)

    def copy(self):
        return Sequential(*(layer.copy() for layer in self.layers), input_shape=self.input_shape)

    @property
    def dtype(self):
        for layer in self.layers:
            if layer.dtype is not None:
                return layer.dtype
        return None
