"""The onnx wheel's light models with random weights, and an ONNX reference evaluator that follows the
operator specifications for the two operators where the evaluator shipped with onnx does not.

The light models store every weight as a ``ConstantOfShape`` of 0.02, which hides mistakes (a
transposed weight gives the same numbers), so :func:`randomized` replaces each by random values.
"""

import os

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


class BatchNormalization(OpRun):
    """Inference-mode batch normalisation as specified (the shipped opset-9 version mixes in the batch's
    own statistics whenever ``momentum`` has its default)."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=1e-5, momentum=None, spatial=None, training_mode=None):
        def v(a):
            return a.reshape((-1,) + (1,) * (x.ndim - 2))
        return ((v(scale) * (x - v(mean)) / np.sqrt(v(var) + epsilon) + v(bias)).astype(x.dtype),)


class LRN(OpRun):
    """LRN as specified: the window ``[c - floor((size-1)/2), c + ceil((size-1)/2)]`` clipped to the channels
    (the shipped version differs from the formula by about 1e-3 relative)."""

    op_domain = ""

    def _run(self, x, alpha=1e-4, beta=0.75, bias=1.0, size=None):
        c, before = x.shape[1], (size - 1) // 2
        squares = np.zeros_like(x)
        for ch in range(c):
            lo, hi = max(0, ch - before), min(c - 1, ch + size - 1 - before)
            squares[:, ch] = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        return ((x / (bias + alpha / size * squares) ** beta).astype(x.dtype),)


def evaluator(model):
    return ReferenceEvaluator(model, new_ops=[BatchNormalization, LRN])


def randomized(name, seed=0):
    """The light model ``name`` with random weights and without its final Softmax (random weights saturate
    it, so the logits are compared)."""
    model = onnx.load(os.path.join(LIGHT, f"{name}.onnx"))
    graph, rng = model.graph, np.random.default_rng(seed)
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    role = {}
    for node in graph.node:
        for k, name_in in enumerate(node.input):
            role.setdefault(name_in, (node.op_type, k))
    keep = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape":
            keep.append(node)
            continue
        shape = tuple(int(d) for d in consts[node.input[0]].ravel())
        op, k = role.get(node.output[0], ("", 0))
        if (op == "BatchNormalization" and k in (1, 4)) or op == "Mul":
            value = rng.uniform(0.5, 1.5, shape)  # scales and variances
        elif op in ("Conv", "Gemm") and k == 1:
            value = rng.normal(0, np.sqrt(2.0 / (np.prod(shape[1:]) if op == "Conv" else shape[-1])), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    if keep[-1].op_type == "Softmax":
        graph.output[0].name = keep.pop().input[0]
    del graph.node[:]
    graph.node.extend(keep)
    return model


def data_input(model):
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)
