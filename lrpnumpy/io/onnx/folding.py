"""Shape arithmetic evaluated at load time: operators whose inputs are all constants become constants.

Exporters compute reshape targets, axes, masks and position indices with small graphs of ``Shape``,
``Gather``, ``Concat``, ``Cast``, ``Range``, ``Where``... nodes; :func:`_fold_node` evaluates each such node
(``Shape`` of an activation from its static shape, the batch entry given) into the table of constants, every
result's size checked against ``max_elements`` before it is computed, and broadcasts kept as views.
:func:`_fold` is the shape-only part (Transpose, Unsqueeze, Reshape of weights) that also runs before the
graph walk.
"""

import math

import numpy as np

from ...errors import LRPError, ModelFormatError
from .._common import brief
from .reading import MAX_SHAPE_VALUES, _onnx, _shape_values
from .sequence import _onnx_shape


#: Operators evaluated at load time when every input is a constant (or, for Shape, has a static shape).
FOLDED = ("Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Expand", "Slice", "Cast", "Add", "Sub", "Mul", "Div",
          "Mod", "Sqrt", "Neg", "Equal", "Where", "Range", "Reshape", "Transpose", "Identity", "ConstantOfShape",
          "Trilu")


def _fold(n, values):
    """Evaluate a shape-only operator on constants (weights transposed or reshaped at export)."""
    x = values[0]
    if n.node.op_type == "Transpose":
        perm = n.get("perm")
        if perm is not None and sorted(perm) != list(range(x.ndim)):
            raise ModelFormatError(f"{n.label}: perm {brief(list(perm))} is not a permutation of the constant's "
                                   f"{x.ndim} axes")
        return np.transpose(x, perm)
    if n.node.op_type == "Unsqueeze":
        axes = list(n.get("axes", []))
        if len(axes) > MAX_SHAPE_VALUES:
            raise ModelFormatError(f"{n.label}: attribute axes holds {len(axes)} values; at most "
                                   f"{MAX_SHAPE_VALUES}")
        axes = axes or (_shape_values(n, values[1], "its axes input") if len(values) > 1 else [])
        rank = x.ndim + len(axes)
        if rank > MAX_SHAPE_VALUES or any(not -rank <= a < rank for a in axes) or \
                len({a % rank for a in axes}) != len(axes):
            raise ModelFormatError(f"{n.label}: axes {brief(axes)} are not distinct axes of a result of rank {rank}")
        for axis in sorted(a % rank for a in axes):
            x = np.expand_dims(x, axis)
        return x
    if n.node.op_type == "Reshape":
        shape = values[1] if len(values) > 1 else n.get("shape", None)
        if shape is None:
            raise ModelFormatError(f"{n.label}: Reshape without a target shape")
        target = _shape_values(n, shape, "the target shape")
        target = [x.shape[i] if t == 0 and i < x.ndim else t for i, t in enumerate(target)]
        n.limits.check(n.label, "the reshaped constant", x.size, x.shape)  # reshaping a view may copy it
        try:
            return np.reshape(x, target)
        except ValueError:
            raise ModelFormatError(f"{n.label}: cannot reshape a constant of shape {brief(x.shape)} to "
                                   f"{brief(target)}") from None
    return x


def _fold_node(n, consts, producer, shapes, tags, batch):
    """Evaluate ``n`` into ``consts`` when its inputs are constants (``Shape``: a value whose static shape is
    known, the batch entry being ``batch``); False when it is not foldable.

    Every result's size is checked against ``max_elements`` before it is computed; broadcasts stay views."""
    node, op = n.node, n.node.op_type
    names = [i for i in node.input]
    if op not in FOLDED or not node.output or not node.output[0]:
        return False
    if op == "Shape" and len(names) == 1 and names[0] in consts:  # of a shape computed at load time
        full = list(np.shape(consts[names[0]]))
        start, end = int(n.get("start", 0)), n.get("end", None)
        consts[node.output[0]] = np.array(full[start:None if end is None else int(end)], np.int64)
        return True
    if op == "Shape":
        if len(names) != 1 or names[0] in consts or names[0] not in producer:
            return False
        static = shapes.get(producer[names[0]])
        if static is None:
            raise n.unsupported("Shape of a value whose shape is not static: give the graph input a fixed shape")
        full = _onnx_shape(n, (batch,) + tuple(static), tags.get(names[0]))
        start, end = int(n.get("start", 0)), n.get("end", None)
        consts[node.output[0]] = np.array(full[start:None if end is None else int(end)], np.int64)
        return True
    if not names or not all(i in consts for i in names if i) or not names[0]:
        return False
    vals = [consts[i] if i else None for i in names]
    for v in vals:
        if v is not None and np.asarray(v).dtype.kind not in "biuf":
            raise ModelFormatError(f"{n.label}: a constant input of dtype {np.asarray(v).dtype}; expected numbers")
    try:
        with np.errstate(all="ignore"):
            out = _evaluate(n, op, vals)
    except LRPError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError) as exc:
        raise ModelFormatError(f"{n.label}: cannot evaluate it on its constant inputs of shapes "
                               f"{brief([None if v is None else np.shape(v) for v in vals])}: {brief(str(exc))}") from None
    # arithmetic makes new values (its result was counted); the rest rearrange finite constants, maybe as views
    if op in ("Add", "Sub", "Mul", "Div", "Mod", "Sqrt", "Neg", "Cast", "Range") and out.dtype.kind == "f" \
            and not np.isfinite(out).all():
        raise ModelFormatError(f"{n.label}: evaluating it on its constants gives NaN or infinity")
    consts[node.output[0]] = out
    return True


def _evaluate(n, op, vals):
    """One operator on constants (``vals``: its inputs, None for an empty name), sizes checked first."""
    x = np.asarray(vals[0])
    lim = n.limits

    def count(shape, what="the result"):
        lim.count(n.label, what, shape)
        return tuple(shape)

    if op in ("Transpose", "Identity", "Unsqueeze", "Reshape"):
        return np.asarray(_fold(n, [v for v in vals if v is not None]))
    if op == "ConstantOfShape":  # of a shape computed at load time (e.g. from the batch size)
        value = n.get("value")
        fill = _onnx()[1].to_array(value).ravel() if value is not None else np.zeros(1, np.float32)
        if fill.size != 1 or fill.dtype.kind not in "biuf" or (fill.dtype.kind == "f" and
                                                                not np.isfinite(fill).all()):
            raise ModelFormatError(f"{n.label}: value must be one finite number, got {brief(fill)}")
        shape = _shape_values(n, x, "its shape input")
        lim.dims(n.label, "the constant", shape)
        return np.broadcast_to(fill[:1].reshape(()), tuple(shape))  # a view, as in _convert
    if op == "Squeeze":
        axes = n.get("axes", None)
        axes = list(axes) if axes is not None else (_shape_values(n, vals[1], "its axes input")
                                                    if len(vals) > 1 and vals[1] is not None else None)
        return np.squeeze(x, axis=None if axes is None else tuple(a % max(x.ndim, 1) for a in axes))
    if op == "Gather":
        idx = np.asarray(vals[1])
        if idx.dtype.kind not in "iu":
            raise ModelFormatError(f"{n.label}: indices of dtype {idx.dtype}; expected integers")
        axis = int(n.get("axis", 0)) % max(x.ndim, 1)
        count(x.shape[:axis] + idx.shape + x.shape[axis + 1:])
        return np.take(x, idx.astype(np.int64), axis=axis, mode="raise")
    if op == "Concat":
        parts = [np.asarray(v) for v in vals if v is not None]
        axis = int(n.get("axis", 0)) % max(parts[0].ndim, 1)
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts if p.ndim == parts[0].ndim)
        count(shape)
        return np.concatenate(parts, axis=axis)
    if op == "Expand":
        target = _shape_values(n, vals[1], "its shape input")
        shape = np.broadcast_shapes(x.shape, tuple(target))
        lim.dims(n.label, "the result", shape)
        return np.broadcast_to(x, shape)  # a view, as ConstantOfShape
    if op == "Slice":
        starts, ends = (_shape_values(n, v, w) for v, w in ((vals[1], "starts"), (vals[2], "ends")))
        axes = _shape_values(n, vals[3], "axes") if len(vals) > 3 and vals[3] is not None else \
            list(range(len(starts)))
        steps = _shape_values(n, vals[4], "steps") if len(vals) > 4 and vals[4] is not None else [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
            raise ModelFormatError(f"{n.label}: starts, ends, axes and steps must be as long, steps non-zero")
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[a % max(x.ndim, 1)] = slice(s, e, st)  # numpy clamps as ONNX does
        return x[tuple(index)]
    if op == "Cast":
        to = int(n.get("to", 1))
        target = {1: np.float32, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16}.get(to)
        if target is None:
            raise n.unsupported(f"Cast to ONNX type {to}")
        count(x.shape)
        return x.astype(target)
    if op == "Trilu":
        k = int(np.asarray(vals[1]).reshape(-1)[0]) if len(vals) > 1 and vals[1] is not None else 0
        if x.ndim < 2:
            raise ModelFormatError(f"{n.label}: Trilu of a constant of rank {x.ndim}")
        count(x.shape)
        return np.triu(x, k) if n.get("upper", 1) else np.tril(x, k)
    if op in ("Sqrt", "Neg"):
        count(x.shape)
        return np.sqrt(x) if op == "Sqrt" else -x
    if op == "Range":
        start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in vals[:3])
        if delta == 0:
            raise ModelFormatError(f"{n.label}: Range with delta 0")
        count([max(0, math.ceil((limit - start) / delta))])
        return np.arange(start, limit, delta, dtype=np.asarray(vals[0]).dtype)
    if op == "Where":
        c, a, b = (np.asarray(v) for v in vals[:3])
        count(np.broadcast_shapes(c.shape, a.shape, b.shape))
        return np.where(c, a, b)
    a, b = x, np.asarray(vals[1])
    count(np.broadcast_shapes(a.shape, b.shape))
    if op == "Equal":
        return np.equal(a, b)
    if op in ("Div", "Mod") and a.dtype.kind in "iu" and (b == 0).any():
        raise ModelFormatError(f"{n.label}: integer {op.lower()} by zero")
    if op == "Div" and a.dtype.kind in "iu":
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    if op == "Mod":
        return np.fmod(a, b) if n.get("fmod", 0) else np.mod(a, b)
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b)
