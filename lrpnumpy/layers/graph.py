"""Networks that branch and merge: named nodes run in topological order."""

from ..errors import ShapeError
from ..trace import Step, Trace
from .base import Layer, check_array
from .sequential import Network, Sequential

#: The name by which nodes refer to the network's input (unless ``Graph(input_name=...)``).
INPUT = "input"


class Graph(Network):
    """Named nodes, each a layer applied to the outputs of earlier nodes (or the network input).

    Parameters
    ----------
    nodes : sequence of (name, layer, inputs)
        ``inputs`` is a node name or a list of them; ``input_name`` (default ``"input"``)
        is the network input.  An output may feed several nodes (fan-out); several-input
        layers (:class:`Add`, :class:`Concat`) take several names.  Nodes may be listed in any
        order that has no cycle; they run in a topological order that keeps the given order
        where it can.
    output : str, optional
        The node whose output is the network's (default: the last node in execution order).
    input_shape, meta : as for :class:`Sequential`.

    Iterating gives the layers in execution order, ``graph[i]`` the i-th of them,
    ``graph["name"]`` a node's layer; ``names`` and ``inputs`` (name -> tuple of input names)
    describe the wiring.  Every node must contribute to the output.

    Examples
    --------
    A residual block::

        Graph([("conv1", Conv2d(8, 8, 3, padding=1), "input"),
               ("relu1", ReLU(), "conv1"),
               ("conv2", Conv2d(8, 8, 3, padding=1), "relu1"),
               ("add", Add(), ["conv2", "input"]),
               ("relu2", ReLU(), "add")])
    """

    def __init__(self, nodes, output=None, input_name=INPUT, input_shape=None, meta=None):
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.meta = dict(meta or {})
        self.input_name = str(input_name)
        given = []
        for i, node in enumerate(nodes):
            try:
                name, layer, inputs = node
            except (TypeError, ValueError):
                raise ShapeError(f"Graph node {i} must be (name, layer, inputs), got {node!r}") from None
            inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
            if not isinstance(name, str) or not name or name == self.input_name:
                raise ShapeError(f"Graph node {i}: the name must be a non-empty string other than "
                                 f"{self.input_name!r}, got {name!r}")
            if isinstance(layer, Sequential) and len(layer) == 1:
                layer = layer[0]
            if not isinstance(layer, Layer):
                raise ShapeError(f"Graph node {name!r}: {type(layer).__name__} is not an lrpnumpy Layer")
            if not inputs or not all(isinstance(n, str) for n in inputs):
                raise ShapeError(f"Graph node {name!r}: inputs must be node names, got {inputs!r}")
            if layer.n_inputs is not None and len(inputs) != layer.n_inputs:
                raise ShapeError(f"Graph node {name!r}: {layer!r} takes {_inputs(layer.n_inputs)}, got "
                                 f"{list(inputs)}")
            given.append((name, layer, inputs))
        names = [n for n, _, _ in given]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ShapeError(f"Graph node names must be unique; repeated: {dup}")
        if not given:
            raise ShapeError("a Graph needs at least one node")
        known = set(names) | {self.input_name}
        for name, _, inputs in given:
            missing = [n for n in inputs if n not in known]
            if missing:
                raise ShapeError(f"Graph node {name!r} reads {missing}, which are neither nodes nor the input "
                                 f"{self.input_name!r}")
        order = _topological(given, self.input_name)
        self.names = [given[i][0] for i in order]
        self.layers = [given[i][1] for i in order]
        self.inputs = {given[i][0]: given[i][2] for i in order}
        self.output = self.names[-1] if output is None else str(output)
        if self.output not in self.inputs:
            raise ShapeError(f"Graph output {output!r} is not a node; nodes: {self.names}")
        dead = sorted(set(self.names) - _ancestors(self.inputs, self.output))
        if dead:
            raise ShapeError(f"Graph nodes {dead} do not contribute to the output {self.output!r}; remove them "
                             f"or choose another output")
        index = {n: i for i, n in enumerate(self.names)}
        index[self.input_name] = -1
        self._parents = [tuple(index[p] for p in self.inputs[n]) for n in self.names]

    # ----- structure -----

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self.layers[self.names.index(key)]
            except ValueError:
                raise KeyError(f"no node {key!r} in the Graph; nodes: {self.names}") from None
        if isinstance(key, slice):
            raise TypeError("a Graph cannot be sliced; use graph.up_to(name)")
        return self.layers[key]

    def nodes(self):
        """``[(name, layer, inputs), ...]`` in execution order."""
        return [(n, layer, self.inputs[n]) for n, layer in zip(self.names, self.layers)]

    def inputs_of(self, i):
        """The input names of the i-th node in execution order."""
        return self.inputs[self.names[i]]

    def consumers(self, name):
        """The nodes that read ``name``'s output."""
        return [n for n in self.names if name in self.inputs[n]]

    def up_to(self, name):
        """The sub-network that computes node ``name`` (its output becomes the network's)."""
        if name not in self.inputs:
            raise KeyError(f"no node {name!r} in the Graph; nodes: {self.names}")
        keep = _ancestors(self.inputs, name)
        return Graph([node for node in self.nodes() if node[0] in keep], output=name, input_name=self.input_name,
                     input_shape=self.input_shape, meta=self.meta)

    def __repr__(self):
        body = "".join(f"\n  {n}: {layer!r} <- {', '.join(self.inputs[n])}" for n, layer in zip(self.names, self.layers))
        return f"Graph({body}\n)"

    # ----- running -----

    def forward(self, x):
        """The network's output for the input batch ``x`` (no trace: each node's output is dropped
        after its last reader has run)."""
        check_array(x, "network input")
        last_use = {p: i for i, parents in enumerate(self._parents) for p in parents}
        outputs = {}
        for i, (layer, parents) in enumerate(zip(self.layers, self._parents)):
            y = layer.forward(*(x if p < 0 else outputs[p] for p in parents))
            for p in parents:
                if last_use[p] == i:
                    outputs.pop(p, None)
            outputs[i] = y
        return outputs[len(self.layers) - 1]

    def forward_trace(self, x):
        """``(output, trace)``; each step's ``parents`` are the indices of the steps it read (-1: the input)."""
        check_array(x, "network input")
        outputs, steps = [], []
        for i, (layer, parents) in enumerate(zip(self.layers, self._parents)):
            args = tuple(x if p < 0 else outputs[p] for p in parents)
            y, state = layer.apply(*args)
            steps.append(Step(layer, args, y, state, index=i, parents=parents))
            outputs.append(y)
        trace = Trace(x, steps)
        return trace.output, trace

    def output_shape(self, input_shape):
        """The output shape for an input of ``input_shape`` (batch axis included), without running."""
        shapes = []
        for layer, parents in zip(self.layers, self._parents):
            try:
                shapes.append(layer.output_shape(*(tuple(input_shape) if p < 0 else shapes[p] for p in parents)))
            except ShapeError as exc:
                raise ShapeError(f"node {self.names[len(shapes)]!r}: {exc}") from None
        return shapes[-1]

    def _map(self, fn):
        layers = self._mapped(fn)
        return Graph([(n, layer, self.inputs[n]) for n, layer in zip(self.names, layers)], output=self.output,
                     input_name=self.input_name, input_shape=self.input_shape, meta=self.meta)


def _inputs(n):
    return "one input" if n == 1 else f"{n} inputs"


def _topological(nodes, input_name):
    """Indices of ``nodes`` in an order where every node follows its inputs (the given order where possible)."""
    done, order, pending = {input_name}, [], list(range(len(nodes)))
    while pending:
        ready = next((i for i in pending if all(n in done for n in nodes[i][2])), None)
        if ready is None:
            stuck = [nodes[i][0] for i in pending]
            raise ShapeError(f"the Graph has a cycle among the nodes {stuck}")
        pending.remove(ready)
        done.add(nodes[ready][0])
        order.append(ready)
    return order


def _ancestors(inputs, name):
    """``name`` and every node it depends on."""
    seen, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n in seen or n not in inputs:
            continue
        seen.add(n)
        todo.extend(inputs[n])
    return seen
