"""What a forward pass leaves behind for backward passes and LRP: a :class:`Trace` of :class:`Step` s.

Layers hold only their parameters and configuration.  Everything that belongs to one call -
the input each layer received, its output, and what its backward pass needs besides (the
winners of a max pool) - lives in the trace that ``forward_trace`` returns, and is passed
explicitly to ``backward`` and to the rules.  So one network object can serve many threads,
and a method may keep two traces of the same network (DeepLIFT's reference pass and the actual
pass) side by side.

Steps refer to the steps that produced their inputs by index (``parents``; ``-1`` is the
network's input), and a step's output may feed several later steps: :meth:`Trace.reverse`
walks such a graph backward, adding up what several consumers send to one node.  A chain is
the special case ``parents == (i - 1,)``.  It is the one backward walk: :meth:`Trace.backward` (the
gradient, with any step's backward pass replaceable) runs ``Network.backward`` and every
gradient-based method, and ``explain`` walks it with the rules.
"""


_NOTHING = object()  # (no value pending for a step)


class Step:
    """One layer's part of a forward pass.

    Attributes
    ----------
    layer : Layer
        The layer that ran.
    inputs : tuple of ndarray
        What it received (one array for every layer of a chain).
    output : ndarray
        What it produced.
    state : object
        What its backward pass needs besides (None for most layers; the winners of each window
        for max pooling).
    index : int
        Position in execution order.
    parents : tuple of int
        For each input, the index of the step that produced it (``-1``: the network input).
    """

    __slots__ = ("layer", "inputs", "output", "state", "index", "parents")

    def __init__(self, layer, inputs, output, state=None, index=0, parents=(-1,)):
        self.layer, self.inputs, self.output, self.state = layer, tuple(inputs), output, state
        self.index, self.parents = index, tuple(parents)

    @property
    def input(self):
        """The single input of a one-input layer."""
        return self.inputs[0]

    def __repr__(self):
        shapes = ", ".join(str(a.shape) for a in self.inputs)
        return f"Step({self.index}: {self.layer!r}, inputs {shapes} -> {self.output.shape})"


class Trace:
    """The steps of one forward pass, in execution order.

    ``trace[i]`` is step ``i``; ``trace.input`` the network input and ``trace.output`` the
    network output.
    """

    __slots__ = ("input", "steps")

    def __init__(self, input, steps):
        self.input, self.steps = input, list(steps)

    @property
    def output(self):
        return self.steps[-1].output if self.steps else self.input

    def __len__(self):
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def __getitem__(self, i):
        return self.steps[i]

    def __repr__(self):
        return f"Trace({len(self.steps)} steps, input {self.input.shape} -> output {self.output.shape})"

    def reverse(self, seed, visit):
        """Walk the steps from the last to the first, sending values back along the edges.

        Parameters
        ----------
        seed : ndarray
            The value at the network output (a gradient, or relevance).
        visit : callable
            ``visit(step, value_at_output)`` returns the value for each of the step's inputs
            (an array for a one-input step, else a tuple).  Several consumers of one output
            send values that are summed before the producing step is visited.

        Returns
        -------
        ndarray
            What reaches the network input.
        """
        pending = {len(self.steps) - 1: seed}
        for step in reversed(self.steps):
            value = pending.pop(step.index, _NOTHING)
            if value is _NOTHING:
                continue  # feeds nothing that reaches the output
            back = visit(step, value)
            parents = step.parents
            if len(parents) == 1:  # (most steps: one value to send back)
                parent, value = parents[0], back[0] if isinstance(back, tuple) else back
                pending[parent] = value if parent not in pending else pending[parent] + value
                continue
            for parent, value in zip(parents, back if isinstance(back, tuple) else (back,)):
                pending[parent] = value if parent not in pending else pending[parent] + value
        return pending.get(-1)

    def backward(self, grad, visit=None):
        """The gradient's walk: :meth:`reverse` with each step's ``layer.backward(g, step)``.

        Parameters
        ----------
        grad : ndarray
            The gradient at the network output.
        visit : callable, optional
            ``visit(step, g)`` may replace a step's backward pass: what it returns is sent back
            instead (None keeps the layer's own).  Modified backward passes (guided backprop,
            DeconvNet, DeepLIFT, PatternNet) are such walks.

        Returns
        -------
        ndarray
            What reaches the network input (the input gradient when ``visit`` replaces nothing).
        """
        def step_back(step, g):
            back = None if visit is None else visit(step, g)
            return step.layer.backward(g, step) if back is None else back
        return self.reverse(grad, step_back)
