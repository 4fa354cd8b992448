"""A chain of layers, and what every network shares."""

from ..errors import ShapeError
from ..trace import Step, Trace
from .activation import ReLU
from .base import Layer, as_dtype, check_array
from .pool import MaxPool2d


class Network:
    """What Sequential and Graph share: layers in execution order, traces, parameters."""

    layers = ()

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def backward(self, grad, trace, param_grads=False):
        """Gradient with respect to the input, given ``grad`` at the output and the ``trace`` of the pass.

        With ``param_grads=True``, returns ``(input_gradient, grads)``: ``grads[i]`` is the dict
        of parameter gradients of step ``i`` (empty for parameter-free layers).
        """
        self.check_trace(trace)
        if not param_grads:
            return trace.backward(grad)
        grads = [None] * len(trace)

        def visit(step, g):  # records the parameter gradients; the layer's backward runs as usual
            grads[step.index] = step.layer.param_grads(g, step)
        return trace.backward(grad, visit), grads

    def check_trace(self, trace):
        """Raise ShapeError unless ``trace`` came from this network's ``forward_trace``."""
        if not isinstance(trace, Trace) or len(trace) != len(self.layers) or any(
                s.layer is not layer for s, layer in zip(trace, self.layers)):
            raise ShapeError("backward needs the trace that this network's forward_trace returned, got "
                             f"{type(trace).__name__}")
        return trace

    def clear(self):
        """Drop the weights rules derived from frozen parameters."""
        for layer in self.layers:
            layer.clear()

    def freeze(self):
        """Make every parameter read-only (see :meth:`Layer.freeze`); returns the network."""
        for layer in self.layers:
            layer.freeze()
        return self

    def astype(self, dtype):
        """A copy with every parameter converted to ``dtype`` (float32 or float64)."""
        as_dtype(dtype)
        return self._map(lambda layer: layer.astype(dtype))

    def copy(self):
        """A copy with copied parameters (a layer used twice stays one layer used twice)."""
        return self._map(lambda layer: layer.copy())

    def _mapped(self, fn):
        done = {}
        for layer in self.layers:
            if id(layer) not in done:
                done[id(layer)] = fn(layer)
        return [done[id(layer)] for layer in self.layers]

    @property
    def dtype(self):
        """The dtype of the parameters (of the first layer that has any)."""
        for layer in self.layers:
            if layer.dtype is not None:
                return layer.dtype
        return None


class Sequential(Network):
    """Layers applied in order; ``backward`` runs them in reverse.

    Supports ``len(net)``, ``net[i]`` (a slice gives a new Sequential sharing the layers) and
    iteration; a Sequential given as an item is spliced in.  ``input_shape`` optionally
    records the shape of one sample (e.g. ``(1, 28, 28)``), for tools that make inputs, and
    ``meta`` what else they need (class names, the input range).

    The network holds layers only: :meth:`forward_trace` returns what one call computed, so
    one network can serve several threads at once.
    """

    def __init__(self, *layers, input_shape=None, meta=None):
        self.input_shape = None if input_shape is None else tuple(input_shape)
        #: What a tool needs to use the model on its own (JSON-able; kept by the native format):
        #: e.g. ``classes`` (class names) and ``input_range`` ([low, high] of the inputs).
        self.meta = dict(meta or {})
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        flat = []
        for i, layer in enumerate(layers):
            if isinstance(layer, Sequential):
                flat.extend(layer.layers)
            elif isinstance(layer, Layer):
                flat.append(layer)
            else:
                raise ShapeError(f"Sequential item {i} is {type(layer).__name__}, not an lrpnumpy Layer")
        self.layers = flat

    def __getitem__(self, i):
        if isinstance(i, slice):
            keeps_input = i.start in (None, 0) and len(self.layers[i]) > 0
            return Sequential(*self.layers[i], input_shape=self.input_shape if keeps_input else None,
                              meta=self.meta if keeps_input else None)
        return self.layers[i]

    def __repr__(self):
        body = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({body}\n)"

    def forward(self, x):
        """The network's output for the input batch ``x``.

        A ReLU followed by max pooling runs after it: ``max(relu(a), relu(b)) = relu(max(a, b))``
        exactly, and the ReLU then sees a quarter of the values (2 x 2 pools)."""
        layers, i = self.layers, 0
        while i < len(layers):
            if type(layers[i]) is ReLU and i + 1 < len(layers) and type(layers[i + 1]) is MaxPool2d:
                x = layers[i].forward(layers[i + 1].forward(x))
                i += 2
            else:
                x = layers[i].forward(x)
                i += 1
        return x

    def forward_trace(self, x):
        """``(output, trace)``: the output and the :class:`~lrpnumpy.trace.Trace` of every layer's step."""
        check_array(x, "network input")
        steps, a = [], x
        for i, layer in enumerate(self.layers):
            y, state = layer.apply(a)
            steps.append(Step(layer, (a,), y, state, index=i, parents=(i - 1,)))
            a = y
        trace = Trace(x, steps)
        return trace.output, trace

    def output_shape(self, input_shape):
        """The output shape for an input of ``input_shape`` (batch axis included), without running."""
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    input_name = "input"

    @property
    def names(self):
        """Node names, in execution order: the layer indices as strings."""
        return [str(i) for i in range(len(self.layers))]

    def inputs_of(self, i):
        """The input names of the i-th layer (``("input",)`` for the first)."""
        return (self.input_name,) if i == 0 else (str(i - 1),)

    def _map(self, fn):
        return Sequential(*self._mapped(fn), input_shape=self.input_shape, meta=self.meta)
