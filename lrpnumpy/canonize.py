"""Model rewrites that keep the function and make LRP better defined."""

from .layers import WEIGHTED, BatchNorm2d, Graph, Sequential


def _fold(prev, bn):
    """A copy of ``prev`` with ``bn`` folded into it."""
    prev = prev.copy()
    scale, shift = bn.scale_shift()
    bias = prev.bias if prev.bias is not None else 0
    prev.bias = (bias * scale + shift).astype(prev.weight.dtype)
    prev.weight = prev.weight * scale.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
    return prev


def _foldable(prev, bn):
    return isinstance(bn, BatchNorm2d) and isinstance(prev, WEIGHTED) \
        and prev.weight.shape[0] == bn.num_features


def fold_batchnorm(net):
    """An equivalent network with each BatchNorm2d folded into the Conv2d/Linear before it.

    ``BN(W x + b) = (s W) x + (s (b - mean) + beta)`` with
    ``s = weight / sqrt(var + eps)``, so the folded layer gets weight
    ``s[:, None, ...] * W`` and a bias (added if the layer had none).  A
    BatchNorm2d that does not follow a Conv2d/Linear is kept as it is; in a
    :class:`~lrpnumpy.layers.Graph`, so is one whose Conv2d/Linear also feeds
    other nodes (folding would change what they read).  Nodes that read a folded
    BatchNorm read the layer it was folded into.  The input network is not
    modified; the layers that do not change are shared with it (layers keep
    nothing of a call, so sharing is safe), so a large model is not copied.
    Outputs agree up to rounding.
    """
    if isinstance(net, Graph):
        return _fold_graph(net)
    layers = []
    for layer in net:
        prev = layers[-1] if layers else None
        if _foldable(prev, layer):
            layers[-1] = _fold(prev, layer)
        else:
            layers.append(layer)
    return Sequential(*layers, input_shape=getattr(net, "input_shape", None), meta=getattr(net, "meta", None))


def _fold_graph(graph):
    renamed, nodes, position = {}, [], {}
    readers = {n: len(graph.consumers(n)) for n in graph.names}  # of each output, as wired now
    for name, layer, inputs in graph.nodes():
        inputs = tuple(renamed.get(n, n) for n in inputs)
        if len(inputs) == 1 and inputs[0] in position and readers[inputs[0]] == 1:
            i = position[inputs[0]]
            if _foldable(nodes[i][1], layer):
                nodes[i] = (nodes[i][0], _fold(nodes[i][1], layer), nodes[i][2])
                renamed[name], readers[inputs[0]] = inputs[0], readers[name]
                continue
        position[name] = len(nodes)
        nodes.append((name, layer, inputs))
    return Graph(nodes, output=renamed.get(graph.output, graph.output), input_name=graph.input_name,
                 input_shape=graph.input_shape, meta=graph.meta)
