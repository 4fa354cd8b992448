"""Transformers: layer normalisation, GELU and torch's attention block.

``LayerNormalization`` (opset 17) and ``Gelu`` (opset 20) map one node to one layer (:data:`HANDLERS`); their
decomposed forms (what torch exports before those opsets: ReduceMean, Sub, Pow, ... Div; Div, Erf, Add, Mul,
Mul) and torch's export of ``nn.MultiheadAttention`` (about 80 nodes, causal mask included) are patterns
matched from their first node, whose inner nodes are then skipped by the graph walk.
"""

import math

import numpy as np

from ... import layers as Lyr
from .._common import brief
from .reading import _finite_attr, _Node, _shape_values, _weight

def _layer_normalization(n, consts, prev, shape, opset, dtype, n_in):
    """``LayerNormalization`` (opset 17) over the last axis, with constant scale and bias."""
    axis = int(n.get("axis", -1))
    if shape is None or axis not in (-1, len(shape)):
        raise n.unsupported(f"axis={axis}: only normalising the last axis (of a static shape) is supported")
    if n.get("stash_type", 1) != 1 and dtype == np.float32:
        raise n.unsupported("stash_type other than float32")
    scale, bias = _weight(n, consts, 1, dtype, "Scale"), _weight(n, consts, 2, dtype, "B")
    d = shape[-1]
    if scale is None or scale.size != d or (bias is not None and bias.size != d):
        raise n.unsupported(f"Scale and B must hold one value per feature ({d})")
    layer = Lyr.LayerNorm(d, eps=float(n.get("epsilon", 1e-5)), dtype=dtype)
    layer.weight = scale.reshape(d)
    layer.bias = np.zeros(d, dtype) if bias is None else bias.reshape(d)
    return [layer]


def _gelu(n, consts, prev, shape, opset, dtype, n_in):
    approximate = n.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise n.unsupported(f"approximate={approximate!r}")
    return [Lyr.GELU(approximate)]


#: ONNX operator -> the layer one node becomes (the graph walk's handler signature, as :mod:`.cnn`'s).
HANDLERS = {"LayerNormalization": _layer_normalization, "Gelu": _gelu}


def _const_of(node, consts, data_name):
    """The constant input of a two-input ``node`` whose other input is ``data_name`` (None if it has none)."""
    if node is None or len(node.input) != 2 or data_name not in node.input:
        return None
    other = node.input[1] if node.input[0] == data_name else node.input[0]
    return None if other not in consts else np.asarray(consts[other])


def _last_axis(n, consts, node, rank):
    axes = [list(a.ints) for a in node.attribute if a.name == "axes"]
    if not axes and len(node.input) > 1 and node.input[1] in consts:
        axes = [_shape_values(n, consts[node.input[1]], "its axes input")]
    keep = [a.i for a in node.attribute if a.name == "keepdims"]
    return bool(axes) and [a % rank for a in axes[0]] == [rank - 1] and (not keep or keep[0] == 1)


def _decomposed_layernorm(n, consts, data, src, in_shapes, region, dtype):
    """``ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div[, Mul weight][, Add bias]`` over the last axis (what
    torch exports a LayerNorm as before opset 17) as one LayerNorm; None when the nodes do not match."""
    x, shape = data[0], in_shapes[0]
    if shape is None or not _last_axis(n, consts, n.node, len(shape) + 1):
        return None
    rank, mean = len(shape) + 1, n.node.output[0]
    sub = region.one_reader(mean, "Sub")
    if sub is None or list(sub.input) != [x, mean]:
        return None
    readers = region.readers.get(sub.output[0], [])
    pow_ = next((r for r in readers if r.op_type == "Pow"), None)
    div = next((r for r in readers if r.op_type == "Div"), None)
    if len(readers) != 2 or pow_ is None or div is None or pow_.input[0] != sub.output[0] or \
            not np.array_equal(_const_of(pow_, consts, sub.output[0]), 2):
        return None
    var = region.one_reader(pow_.output[0], "ReduceMean")
    if var is None or not _last_axis(n, consts, var, rank):
        return None
    add = region.one_reader(var.output[0], "Add")
    eps = _const_of(add, consts, var.output[0])
    sqrt = add is not None and region.one_reader(add.output[0], "Sqrt")
    if eps is None or eps.size != 1 or not sqrt or region.one_reader(sqrt.output[0], "Div") is not div or \
            list(div.input) != [sub.output[0], sqrt.output[0]] or not 0 < float(eps.reshape(-1)[0]) < 1:
        return None
    taken, last, d = [n.node, sub, pow_, var, add, sqrt, div], div, shape[-1]
    weight = bias = None
    mul = region.one_reader(div.output[0], "Mul")
    w = _const_of(mul, consts, div.output[0])
    if w is not None and w.size == d and w.dtype.kind == "f":
        weight, last = w, mul
        taken.append(mul)
    plus = region.one_reader(last.output[0], "Add")
    b = _const_of(plus, consts, last.output[0])
    if b is not None and b.size == d and b.dtype.kind == "f":
        bias, last = b, plus
        taken.append(plus)
    for node in taken[1:]:  # nothing else reads the pattern's inner values
        if node is not last and any(r not in taken for o in node.output for r in region.readers.get(o, [])):
            return None
    layer = Lyr.LayerNorm(d, eps=float(eps.reshape(-1)[0]), dtype=dtype)
    n.limits.take(n.label, "the layer norm's weight and bias", [2 * d])
    layer.weight = np.ones(d, dtype) if weight is None else weight.reshape(d).astype(dtype)
    layer.bias = np.zeros(d, dtype) if bias is None else bias.reshape(d).astype(dtype)
    region.skip.update(id(node) for node in taken[1:])
    return [(last.output[0], layer, src, None)]


def _erf_gelu(n, consts, data, src, in_shapes, region, dtype):
    """``x * (erf(x / sqrt 2) + 1) * 0.5`` (the factors in any order; what torch exports a GELU as before opset 20)
    as one GELU; None when the nodes do not match."""
    x = data[0] if len(data) == 1 else None
    c = _const_of(n.node, consts, x) if x is not None and n.node.input[0] == x else None
    if c is None or c.size != 1 or not abs(float(c.reshape(-1)[0]) - math.sqrt(2)) < 1e-6:
        return None
    erf = region.one_reader(n.node.output[0], "Erf")
    add = erf is not None and region.one_reader(erf.output[0], "Add")
    one = _const_of(add, consts, erf.output[0]) if add else None
    if one is None or one.size != 1 or float(one.reshape(-1)[0]) != 1:
        return None
    m1 = region.one_reader(add.output[0], "Mul")
    if m1 is None:
        return None
    m2 = region.one_reader(m1.output[0], "Mul")
    if m2 is None:
        return None
    halves = [_const_of(m, consts, i) for m, i in ((m1, add.output[0]), (m2, m1.output[0]))]
    # x * (1 + erf) then * 0.5, or (1 + erf) * 0.5 then * x
    if set(m1.input) == {x, add.output[0]} and halves[1] is not None and halves[1].size == 1 and \
            float(halves[1].reshape(-1)[0]) == 0.5:
        pass
    elif halves[0] is not None and halves[0].size == 1 and float(halves[0].reshape(-1)[0]) == 0.5 and \
            set(m2.input) == {x, m1.output[0]}:
        pass
    else:
        return None
    if len(region.readers.get(x, [])) != 2:  # x feeds the Div and one Mul, nothing else of the pattern's
        return None
    region.skip.update(id(node) for node in (erf, add, m1, m2))
    return [(m2.output[0], Lyr.GELU(), src, None)]


#: Most nodes one attention block may span (torch's export of nn.MultiheadAttention has about 80).
MAX_BLOCK_NODES = 400


def _attention_block(n, consts, src, shape, region, dtype):
    """torch's export of ``nn.MultiheadAttention`` (self-attention, batch first) as lrpnumpy's MultiheadAttention.

    The block starts at the input projection ``MatMul`` (tokens transposed to (T, N, E), weight (E, 3E)) and ends
    at the ``Transpose (1, 0, 2)`` after the output projection (``Gemm``, weight (E, E), reshaped back to
    (T, N, E)); what lies between (the q/k/v split, the heads' reshapes and transposes, the scaling by
    ``head_dim ** -1/4`` on each side, the scores' MatMul, an optional causal mask, Softmax, the context's
    MatMul) must read nothing from outside but constants.  The number of heads is read from the constant
    target shape (N, H, T, head_dim) the exporter reshapes to."""
    w = _weight(n, consts, 1, dtype, "the input projection")
    if w is None or w.ndim != 2 or w.shape[1] != 3 * w.shape[0] or shape is None or shape[-1] != w.shape[0]:
        raise n.unsupported("a MatMul on tokens transposed to (T, N, E): only torch's attention block (an input "
                            "projection of shape (E, 3E)) is supported")
    e = w.shape[0]
    inside, end, todo = [], None, [n.node.output[0]]
    seen = set()
    while todo:
        name = todo.pop()
        for node in region.readers.get(name, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            inside.append(node)
            if len(inside) > MAX_BLOCK_NODES:
                raise n.unsupported(f"the attention block spans more than {MAX_BLOCK_NODES} nodes")
            if node.op_type == "Transpose" and _perm(node) == [1, 0, 2]:
                prev = [m for m in inside if node.input[0] in m.output]
                if prev and prev[0].op_type == "Reshape" and \
                        any(m.op_type == "Gemm" and prev[0].input[0] in m.output for m in inside):
                    if end is not None:
                        raise n.unsupported("the attention block has two ends")
                    end = node
                    continue
            todo.extend(o for o in node.output if o)
    if end is None:
        raise n.unsupported("no end of the attention block (the output projection's Gemm, Reshape to (T, N, E) and "
                            "Transpose (1, 0, 2)) was found")
    made = {o for m in inside for o in m.output} | set(n.node.output)
    for node in inside:
        if node is end:
            continue
        outside = [i for i in node.input if i and i not in made and i not in consts and i in region.data]
        if outside:
            raise n.unsupported(f"node {brief(node.name)!r} ({node.op_type}) of the attention block reads "
                                f"{brief(outside)}, which is neither computed in the block nor a constant")
        for o in node.output:
            strangers = [r for r in region.readers.get(o, []) if r not in inside]
            if strangers:
                raise n.unsupported(f"a value of the attention block ({brief(o)!r}) is read outside it, by "
                                    f"{brief(strangers[0].name)!r} ({strangers[0].op_type})")
    ops = {m.op_type for m in inside}
    allowed = {"Add", "Reshape", "Unsqueeze", "Transpose", "Squeeze", "Gather", "Mul", "MatMul", "Softmax", "Shape",
               "Slice", "Cast", "Sqrt", "Div", "Gemm", "Concat", "Constant", "Mod", "Where", "Split", "Expand", "Trilu",
               "Equal", "ConstantOfShape"}
    if ops - allowed:
        raise n.unsupported(f"the attention block holds {brief(sorted(ops - allowed))}; torch's export of "
                            f"nn.MultiheadAttention holds only {', '.join(sorted(allowed))}")
    counts = {op: sum(m.op_type == op for m in inside) for op in ("MatMul", "Softmax", "Gemm")}
    if counts != {"MatMul": 2, "Softmax": 1, "Gemm": 1}:
        raise n.unsupported(f"the attention block holds {counts['MatMul']} MatMul, {counts['Softmax']} Softmax and "
                            f"{counts['Gemm']} Gemm nodes; torch's has 2 (scores, context), 1 and 1 (the output "
                            f"projection)")
    bias_node = region.one_reader(n.node.output[0], "Add")
    bias = None
    if bias_node is not None:
        other = [i for i in bias_node.input if i != n.node.output[0]]
        bias = consts.get(other[0]) if other else None
        if bias is None or bias.shape != (3 * e,):
            raise n.unsupported("the input projection's Add must add a constant bias of shape (3E,)")
    gemm = next(m for m in inside if m.op_type == "Gemm")
    g = _Node(gemm, n.where, n.limits)
    if g.get("transA", 0) or _finite_attr(g, "alpha", dtype) != 1 or _finite_attr(g, "beta", dtype) != 1:
        raise g.unsupported("the output projection must be a plain Gemm (alpha = beta = 1, transA = 0)")
    wo, bo = _weight(g, consts, 1, dtype, "B"), _weight(g, consts, 2, dtype, "C")
    wo = wo if g.get("transB", 0) else wo.T
    if wo.shape != (e, e) or (bo is not None and bo.size != e):
        raise g.unsupported(f"the output projection's weight {brief(wo.shape)} is not (E, E) = ({e}, {e})")
    for m in inside:  # targets computed from the input's shape (a dynamic batch axis): folded now
        if m.op_type == "Reshape" and len(m.input) > 1:
            region.resolve(m.input[1])
    heads = {int(np.asarray(consts[m.input[1]]).ravel()[1]) for m in inside if m.op_type == "Reshape"
             and m.input[1] in consts and np.asarray(consts[m.input[1]]).size == 4}
    heads = {h for h in heads if h >= 1 and e % h == 0}
    if len(heads) > 1:  # the default exporter also reshapes to (T, N, 3, E): keep targets (N, H, T, E / H)
        heads = {int(np.asarray(consts[m.input[1]]).ravel()[1]) for m in inside if m.op_type == "Reshape"
                 and m.input[1] in consts and np.asarray(consts[m.input[1]]).size == 4
                 and np.asarray(consts[m.input[1]]).ravel()[1] * np.asarray(consts[m.input[1]]).ravel()[3] == e}
    if len(heads) != 1:
        raise n.unsupported("the number of heads cannot be read: the block's reshape to (N, H, T, head_dim) must "
                            "have a target shape computed from constants and the input's static shape")
    causal = False
    softmax = [m for m in inside if m.op_type == "Softmax"]
    if len(softmax) != 1 or _Node(softmax[0], n.where).get("axis", -1) not in (-1, 3):
        raise n.unsupported("the attention block must hold one Softmax over the keys (axis -1)")
    for m in inside:  # is_causal=True: Where(Trilu(ones) == 0, -inf, 0) added to the scores
        if m.op_type == "Trilu":
            causal = _causal_trilu(n, m, inside, consts)
    for m in inside:  # a constant mask added to the scores: only the causal one
        masks = [consts[i] for i in m.input if i in consts and np.ndim(consts[i]) >= 2] if m.op_type in ("Add",
                                                                                                         "Where") else []
        for mask in masks:
            t = mask.shape[-1]
            n.limits.count(n.label, "the attention mask", mask.shape)
            if mask.shape[-2:] != (shape[0], shape[0]):
                raise n.unsupported(f"node {brief(m.name)!r} ({m.op_type}) adds an attention mask of shape "
                                    f"{brief(mask.shape)} to scores over {shape[0]} tokens; a mask must end in "
                                    f"(T, T) = ({shape[0]}, {shape[0]})")
            future = np.triu(np.ones((t, t), bool), 1)
            m2 = np.asarray(mask).reshape(-1, t, t)
            if mask.dtype == bool and m.op_type == "Where":
                ok = all((np.array_equal(k, future) or np.array_equal(k, ~future)) for k in m2)
            else:
                ok = all(np.all(np.isneginf(k) == future) and np.all(k[~future] == 0) for k in m2)
            if not ok or t != shape[0]:
                raise n.unsupported(f"node {brief(m.name)!r} ({m.op_type}) adds an attention mask other than the "
                                    f"causal one (the future at -inf)")
            causal = True
    layer = Lyr.MultiheadAttention(e, heads.pop(), bias=bias is not None or bo is not None, causal=causal,
                                   dtype=dtype)
    n.limits.take(n.label, "the attention weights", [4 * e * e + 4 * e])
    layer.in_proj_weight = np.ascontiguousarray(w.T)
    layer.out_proj_weight = np.ascontiguousarray(wo)
    if layer.in_proj_bias is not None:
        layer.in_proj_bias = np.zeros(3 * e, dtype) if bias is None else bias.astype(dtype)
        layer.out_proj_bias = np.zeros(e, dtype) if bo is None else bo.reshape(-1).astype(dtype)
    region.skip.update(id(m) for m in inside)
    return [(end.output[0], layer, src, None)]


def _causal_trilu(n, trilu, inside, consts):
    """True for torch's causal mask ``Where(Trilu(Expand(1), upper=0) == 0, -inf, 0)`` (the future at -inf)."""
    def producer(name):
        return next((m for m in inside if name in m.output), None)

    def value(name):
        v = consts.get(name)
        return None if v is None or np.size(v) != 1 else float(np.asarray(v).reshape(-1)[0])
    ones = producer(trilu.input[0])
    upper = [a.i for a in trilu.attribute if a.name == "upper"]
    equal = [m for m in inside if m.op_type == "Equal" and trilu.output[0] in m.input]
    where = [m for m in inside if equal and m.op_type == "Where" and equal[0].output[0] in m.input]
    ok = (ones is not None and ones.op_type == "Expand" and value(ones.input[0]) == 1 and upper in ([], [0])
          and (len(trilu.input) < 2 or not trilu.input[1]) and len(equal) == 1 and len(where) == 1
          and value([i for i in equal[0].input if i != trilu.output[0]][0]) == 0
          and list(where[0].input[:1]) == [equal[0].output[0]] and value(where[0].input[1]) == -np.inf
          and value(where[0].input[2]) == 0)
    if not ok:
        raise n.unsupported(f"node {brief(trilu.name)!r} (Trilu) builds an attention mask other than torch's causal "
                            f"one (Where(Trilu(ones) == 0, -inf, 0))")
    return True


def _perm(node):
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0] if any(
        a.name == "perm" for a in node.attribute) else None
