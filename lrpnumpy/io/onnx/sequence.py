"""Sequence models as torch's exporter writes them: token ids, embeddings, LSTM and GRU nodes, 1-D operators.

Token ids (an integer graph input) are read by an embedding (``Gather`` on an initializer); ``Conv`` and the
pools with a 1-D kernel become Conv1d and the 1-D pools, ``ReduceMax``/``ReduceMean`` over time pools; ``LSTM``
and ``GRU`` nodes become lrpnumpy's LSTM and GRU (ONNX's gate order and sequence-first layout followed through
the Transpose/Squeeze/Gather/Concat/Reshape nodes the exporter puts around them: the layout tags are
described in :func:`_sequence_node`).
"""

import numpy as np

from ... import layers as Lyr
from ...errors import LRPError, ModelFormatError, UnsupportedLayerError
from .._common import brief
from .reading import _shape_values, _weight

#: ONNX elem_types of integer token ids (int32, int64), read by an embedding (a Gather on an initializer).
_ID_TYPES = (6, 7)
#: Operators of sequence models that :func:`_sequence_node` maps.
SEQUENCE_OPS = ("LSTM", "GRU", "Gather", "Transpose", "Squeeze", "Slice", "Sigmoid", "ReduceMax", "ReduceMean")


def _onnx_shape(n, ours, tag):
    """The ONNX shape of a value whose layer output has shape ``ours`` (batch first) and layout ``tag``."""
    ours = list(ours)
    if tag is None:
        return ours
    kind = tag[0]
    if kind == "seq-first":
        return [ours[1], ours[0]] + ours[2:]
    if kind == "Y":
        return [ours[1], tag[1], ours[0], tag[2]]
    if kind == "Y_h":
        return [tag[1], ours[0], tag[2]]
    if kind == "Y batch-first":
        return [ours[0], ours[1], tag[1], tag[2]]
    if kind == "Y_h batch-first":
        return [ours[0], tag[1], tag[2]]
    raise n.unsupported(f"Shape of a value in layout {kind!r}")


def _sequence_node(n, consts, data, ins, in_shapes, tags, dtype, uses):
    """The layers for a node of a sequence model, as ``[(onnx output, layer or None, source node, tag), ...]``
    (a source None: the entry before's layer).

    ONNX recurrent nodes are sequence-first ((T, N, D) in, Y (T, dirs, N, H), Y_h (dirs, N, H) out) while
    lrpnumpy's layers are batch first: values whose ONNX layout differs from their layer's output carry a
    tag, and only the operators torch's exporter puts around recurrent nodes are followed through them:

    * ``"seq-first"``: ONNX (T, N, ...) for a layer output (N, T, ...) (a Transpose (1, 0, 2));
    * ``"Y"`` / ``"Y perm"``: a recurrent node's sequence output (T, dirs, N, H) / (T, N, dirs, H), for
      ``LSTM(output="sequence")``'s (N, T, dirs * H);
    * ``"Y_h"``: its final states (dirs, N, H), for ``LSTM(output="last")``'s (N, dirs * H);
      ``"direction"``: one direction's final state ``Y_h[k]``, joined again by a Concat of all directions.
    """
    op = n.node.op_type
    tag = [tags.get(i) for i in data]
    if any(tag) and op not in ("Transpose", "Squeeze", "Gather", "Concat", "Reshape", "Slice", "LSTM", "GRU",
                               "Flatten"):
        kinds = sorted({t[0] for t in tag if t})
        raise n.unsupported(f"reads a value in ONNX's sequence layout {brief(kinds)} (a recurrent node's output or "
                            f"a sequence-first tensor); only the Transpose, Squeeze, Gather, Slice, Reshape and Concat "
                            f"nodes torch's exporter puts around recurrent nodes are supported on it")
    out = n.node.output[0]
    t0 = tag[0] if tag else None
    src = ins[0] if ins else None
    rank = None if not in_shapes or in_shapes[0] is None else len(in_shapes[0]) + 1
    if op in ("LSTM", "GRU"):
        return _recurrent_node(n, consts, data, ins, in_shapes, tags, dtype, uses)
    if op == "Sigmoid":
        return [(out, Lyr.Sigmoid(), src, None)]
    if op == "Gather":
        return _gather_node(n, consts, data, src, t0, dtype)
    if op == "Transpose":
        perm = n.get("perm")
        if perm is None:
            raise n.unsupported("Transpose without perm")
        perm = list(perm)
        if t0 is not None and t0[0] in ("seq-first", "Y", "Y_h"):
            if t0[0] == "seq-first":
                layout = [1, 0] + list(range(2, len(perm)))
                perm = [layout[p] for p in perm]
            elif t0[0] == "Y" and perm == [0, 2, 1, 3]:
                return [(out, None, src, ("Y perm",) + t0[1:])]
            elif t0[0] == "Y_h" and perm == [1, 0, 2]:
                return [(out, None, src, ("Y_h perm",) + t0[1:])]
            else:
                raise n.unsupported(f"perm {brief(perm)} on a recurrent node's {t0[0]} output; expected the "
                                    f"exporter's (0, 2, 1, 3) on Y or (1, 0, 2) on Y_h")
        elif t0 is not None:
            raise n.unsupported(f"perm {brief(perm)} on a value in layout {t0[0]!r}")
        if sorted(perm) != list(range(len(perm))) or (rank is not None and len(perm) != rank):
            raise ModelFormatError(f"{n.label}: perm {brief(perm)} is not a permutation of the input's axes")
        if perm == list(range(len(perm))):
            return [(out, None, src, None)]
        if perm[0] == 0:
            return [(out, Lyr.Transpose(perm), src, None)]
        if perm[:2] == [1, 0] and perm[2:] == list(range(2, len(perm))):
            return [(out, None, src, ("seq-first",))]
        raise n.unsupported(f"perm {brief(perm)} moves the batch axis; only (1, 0, ...) around a recurrent node is "
                            f"supported")
    if op == "Flatten" and t0 is not None:
        if t0[0] == "Y_h batch-first" and int(n.get("axis", 1)) == 1:
            return [(out, None, src, None)]
        raise n.unsupported(f"Flatten of a recurrent node's {t0[0]} output: only its final states (N, dirs, H) "
                            f"flattened at axis 1")
    if op == "Squeeze":
        axes = n.get("axes", None)
        if axes is None and len(n.node.input) > 1 and n.node.input[1]:
            axes = _shape_values(n, consts[n.node.input[1]], "its axes input") if n.node.input[1] in consts \
                else None
            if axes is None:
                raise n.unsupported("the axes must be a constant")
        axes = None if axes is None else list(axes)
        if t0 is not None:
            if t0[0] == "Y" and t0[1] == 1 and axes is not None and [a % 4 for a in axes] == [1]:
                return [(out, None, src, ("seq-first",))]
            if t0[0] == "Y_h" and t0[1] == 1 and axes is not None and [a % 3 for a in axes] == [0]:
                return [(out, None, src, None)]
            if t0[0] == "Y batch-first" and t0[1] == 1 and axes is not None and [a % 4 for a in axes] == [2]:
                return [(out, None, src, None)]
            if t0[0] == "Y_h batch-first" and t0[1] == 1 and axes is not None and [a % 3 for a in axes] == [1]:
                return [(out, None, src, None)]
            raise n.unsupported(f"axes {brief(axes)} on a recurrent node's {t0[0]} output: only the direction axis of "
                                f"a one-direction node is squeezed")
        if rank is not None and in_shapes[0] is not None:
            sizes = (None,) + tuple(in_shapes[0])
            drop = list(range(1, rank)) if axes is None else sorted({a % rank for a in axes})
            if 0 not in drop and all(sizes[a] == 1 for a in drop if a):
                left = [s for i, s in enumerate(sizes) if i and i not in drop]
                if not drop:
                    return [(out, None, src, None)]
                if len(left) == 1:
                    return [(out, Lyr.Flatten(), src, None)]
        raise n.unsupported(f"axes {brief(axes)}: only squeezing size-1 axes to (batch, features) is supported")
    if op == "Slice":
        if t0 is not None and t0[0] == "Y_h":
            starts, ends = (_shape_values(n, consts.get(i, np.zeros(0, np.int64)), w)
                            for i, w in zip(n.node.input[1:3], ("starts", "ends")))
            axes = _shape_values(n, consts[n.node.input[3]], "axes") if len(n.node.input) > 3 \
                and n.node.input[3] in consts else [0] * len(starts)
            if len(starts) == len(ends) == 1 and axes[0] % 3 == 0 and len(n.node.input) < 5 and \
                    range(t0[1])[slice(starts[0], ends[0])] == range(t0[1]):
                return [(out, None, src, t0)]
        raise n.unsupported("Slice of activations: only taking every direction of a recurrent node's final states "
                            "is supported")
    if op in ("ReduceMax", "ReduceMean"):
        return _reduce_time(n, consts, src, in_shapes[0], rank)
    if op == "Concat":
        return _concat_directions(n, data, ins, tag)
    if op == "Reshape":
        target = consts.get(n.node.input[1]) if len(n.node.input) > 1 else None
        target = None if target is None else _shape_values(n, target, "the target shape")
        if t0[0] == "Y perm" and target is not None and len(target) == 3 and target[2] in (-1, t0[1] * t0[2]):
            return [(out, None, src, ("seq-first",))]
        if t0[0] in ("Y_h perm", "Y_h batch-first") and target is not None and len(target) == 2 and \
                target[1] in (-1, t0[1] * t0[2]):
            return [(out, None, src, None)]
        steps = None if in_shapes[0] is None else in_shapes[0][0]
        if t0[0] == "Y batch-first" and target is not None and len(target) == 3 and target[1] in (0, steps) and \
                target[2] in (-1, t0[1] * t0[2]):
            return [(out, None, src, None)]
        raise n.unsupported(f"target shape {brief(target)} on a recurrent node's {t0[0]} output; expected the "
                            f"exporter's merge of the directions")
    return _conv_pool_1d(n, consts, src, in_shapes[0], dtype)


def _gather_node(n, consts, data, src, tag, dtype):
    out, axis = n.node.output[0], int(n.get("axis", 0))
    if n.node.input[0] in consts and len(data) == 1:  # an embedding: weight[ids]
        w = consts[n.node.input[0]]
        if w.ndim != 2 or axis != 0 or w.dtype.kind != "f":
            raise n.unsupported(f"Gather of data indices from a constant of shape {brief(w.shape)} on axis {axis}: "
                                f"only embeddings (a float matrix, axis 0) are supported")
        n.limits.take(n.label, "the embedding", w.shape)
        layer = Lyr.Embedding(w.shape[0], w.shape[1], dtype=dtype)
        layer.weight = w
        return [(out, layer, src, None)]
    index = consts.get(n.node.input[1]) if len(n.node.input) > 1 else None
    if tag is not None and tag[0] == "Y_h" and index is not None and np.ndim(index) == 0 and axis % 3 == 0:
        dirs, k = tag[1], int(index)
        if not -dirs <= k < dirs:
            raise ModelFormatError(f"{n.label}: index {k} out of range for {dirs} directions")
        return [(out, None, src, None if dirs == 1 else ("direction", k % dirs, dirs))]
    if tag is not None:
        raise n.unsupported(f"Gather on a recurrent node's {tag[0]} output; only Y_h[k] (one direction's final "
                            f"state) is supported")
    raise n.unsupported("Gather of activations (e.g. one time step of a sequence); supported: embeddings (a "
                        "constant matrix indexed by token ids) and a recurrent node's final state per direction")


def _concat_directions(n, data, ins, tags):
    """``Concat([Y_h[0], Y_h[1]], axis=1)``: both directions' final states of one recurrent node, in order."""
    if len(ins) == len(tags) and all(t is not None and t[0] == "direction" for t in tags) and len(set(ins)) == 1 \
            and [t[1] for t in tags] == list(range(tags[0][2])) and int(n.get("axis", 1)) in (1, -1) \
            and len(n.node.input) == len(data):
        return [(n.node.output[0], None, ins[0], None)]
    raise n.unsupported("Concat of recurrent outputs: only the final states of every direction of one node, in "
                        "order, joined on axis 1, are supported")


def _is_1d(n, consts):
    if "kernel_shape" in n.attrs:
        return len(n.attrs["kernel_shape"]) == 1
    w = consts.get(n.node.input[1]) if n.node.op_type == "Conv" and len(n.node.input) > 1 else None
    return w is not None and np.ndim(w) == 3


def _conv_pool_1d(n, consts, src, shape, dtype):
    """``Conv``, ``MaxPool`` and ``AveragePool`` with a 1-D kernel: Conv1d, MaxPool1d, AvgPool1d on (N, C, L)."""
    op, out = n.node.op_type, n.node.output[0]
    if n.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise n.unsupported(f"attribute auto_pad={n.get('auto_pad')!r}: give explicit pads")
    stride, dilation = n.ints("strides", [1], 1), n.ints("dilations", [1], 1)
    pads = n.ints("pads", [0, 0], 2) if n.get("auto_pad", "NOTSET") == "NOTSET" else [0, 0]
    if min(pads) < 0:
        raise ModelFormatError(f"{n.label}: negative pads {brief(pads)}")
    try:
        if op == "Conv":
            w = _weight(n, consts, 1, dtype, "weight")
            b = _weight(n, consts, 2, dtype, "bias")
            group = int(n.get("group", 1))
            if "kernel_shape" in n.attrs and list(n.attrs["kernel_shape"]) != [w.shape[2]]:
                raise ModelFormatError(f"{n.label}: kernel_shape {brief(list(n.attrs['kernel_shape']))} does not "
                                       f"match the weight {w.shape}")
            layer = Lyr.Conv1d(w.shape[1] * group, w.shape[0], w.shape[2], stride[0], tuple(pads), dilation[0], group,
                               bias=b is not None, dtype=dtype)
            layer.weight = w
            if b is not None:
                layer.bias = b.reshape(-1)
            return [(out, layer, src, None)]
        kernel = n.ints("kernel_shape", None, 1)[0]
        if dilation != [1] or n.get("ceil_mode", 0):
            raise n.unsupported("dilated or ceil-mode 1-D pooling is not supported")
        if max(pads) >= kernel:
            raise n.unsupported(f"pads {brief(pads)}: each must be smaller than the kernel {kernel}")
        if op == "MaxPool":
            return [(out, Lyr.MaxPool1d(kernel, stride[0], tuple(pads)), src, None)]
        if max(pads) and not n.get("count_include_pad", 0):
            raise n.unsupported("1-D average pooling over padding with count_include_pad=0 (lrpnumpy's AvgPool1d "
                                "counts the padding, as torch's default)")
        return [(out, Lyr.AvgPool1d(kernel, stride[0], tuple(pads)), src, None)]
    except LRPError as exc:
        if isinstance(exc, (UnsupportedLayerError, ModelFormatError)):
            raise
        raise n.unsupported(str(exc)) from None


def _reduce_time(n, consts, src, shape, rank):
    """``ReduceMax`` / ``ReduceMean`` over the last axis of (N, C, L): pooling over time."""
    axes = n.get("axes", None)
    if axes is None and len(n.node.input) > 1 and n.node.input[1]:
        if n.node.input[1] not in consts:
            raise n.unsupported("the axes must be a constant")
        axes = _shape_values(n, consts[n.node.input[1]], "its axes input")
    if rank != 3 or axes is None or [a % 3 for a in axes] != [2]:
        raise n.unsupported(f"axes {brief(None if axes is None else list(axes))} on an input of rank {rank}: only "
                            f"the last axis of (N, C, L) (pooling over time) is supported")
    out, keep, length = n.node.output[0], int(n.get("keepdims", 1)), shape[1]
    if n.node.op_type == "ReduceMax":
        return [(out, Lyr.MaxPool1d(length) if keep else Lyr.GlobalMaxPool1d(), src, None)]
    return [(out, Lyr.AvgPool1d(length), src, None)] + ([] if keep else [(out, Lyr.Flatten(), None, None)])


def _recurrent_node(n, consts, data, ins, in_shapes, tags, dtype, uses):
    """ONNX ``LSTM`` (gates i, o, f, c) and ``GRU`` (z, r, h; ``linear_before_reset=1``, torch's) as lrpnumpy's
    LSTM / GRU (torch's gate order), on the batch-first sequence the exporter transposed to (T, N, D)."""
    node, op = n.node, n.node.op_type
    inputs = list(node.input) + [""] * (8 - len(node.input))
    if not data or inputs[0] != data[0] or len(data) != 1:
        raise n.unsupported("its inputs other than X (weights, biases, lengths, initial states) must be constants")
    if tags.get(data[0]) != (None if int(n.get("layout", 0)) == 1 else ("seq-first",)):
        raise n.unsupported("X must be a batch-first sequence transposed to (T, N, D) (torch's export of "
                            "batch_first=True), or batch first with layout=1; a graph whose input is sequence-first "
                            "is not supported")
    direction = n.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise n.unsupported(f"direction={direction!r}: only forward and bidirectional are supported")
    for attr in ("activations", "activation_alpha", "activation_beta", "clip"):
        if attr in n.attrs:
            raise n.unsupported(f"attribute {attr}: only the default activations without clipping are supported")
    if n.get("input_forget", 0):
        raise n.unsupported("attribute input_forget=1 is not supported")
    batch_first = int(n.get("layout", 0)) == 1  # X (N, T, D), Y (N, T, dirs, H), Y_h (N, dirs, H)
    if op == "GRU" and not n.get("linear_before_reset", 0):
        raise n.unsupported("linear_before_reset=0: only torch's GRU (the reset gate applied after the recurrent "
                            "matrix, linear_before_reset=1) is supported")
    G, H = (4, int(n.get("hidden_size", 0))) if op == "LSTM" else (3, int(n.get("hidden_size", 0)))
    W, R = (_weight(n, consts, i, dtype, what) for i, what in ((1, "W"), (2, "R")))
    B = _weight(n, consts, 3, dtype, "B")
    dirs = 2 if direction == "bidirectional" else 1
    if W is None or R is None or W.ndim != 3 or W.shape[:2] != (dirs, G * H) or R.shape != (dirs, G * H, H) or \
            (B is not None and B.shape != (dirs, 2 * G * H)):
        raise ModelFormatError(f"{n.label}: weights W {brief(None if W is None else W.shape)}, R "
                               f"{brief(None if R is None else R.shape)}, B {brief(None if B is None else B.shape)} "
                               f"do not fit hidden_size={H}, {dirs} direction(s) and {G} gates")
    T = in_shapes[0][0] if in_shapes[0] is not None else None
    for i, what in ((4, "sequence_lens"), (5, "initial_h"), (6, "initial_c"), (7, "P (peepholes)")):
        name = inputs[i]
        if not name:
            continue
        v = consts[name]
        if what == "sequence_lens":
            if T is None or not (np.asarray(v) == T).all():
                raise n.unsupported("sequence_lens other than the full length: give lrpnumpy's LSTM lengths= at "
                                    "run time instead")
        else:
            n.limits.count(n.label, what, np.shape(v))  # a broadcast view is read whole: bounded first
            if np.any(v):
                raise n.unsupported(f"a non-zero {what}: only zero initial states without peepholes are supported")
    order = [0, 2, 3, 1] if op == "LSTM" else [1, 0, 2]  # ONNX's gate blocks in torch's order

    def gates(a):
        return np.ascontiguousarray(a.reshape(a.shape[0], G, H, *a.shape[2:])[:, order].reshape(a.shape))
    n.limits.take(n.label, "the recurrent weights", [W.size + R.size + 2 * dirs * G * H])
    params = {"weight_ih": gates(W), "weight_hh": gates(R)}
    bias = np.zeros((dirs, 2 * G * H), dtype) if B is None else B
    params["bias_ih"], params["bias_hh"] = gates(bias[:, :G * H]), gates(bias[:, G * H:])
    made = []
    outs = list(node.output) + ["", "", ""]
    if outs[2] and uses.get(outs[2]):
        raise n.unsupported("its output Y_c (the final cell state) is used; only Y and Y_h are supported")
    for k, output in enumerate(("sequence", "last")):
        name = outs[k]
        if not name or not uses.get(name):
            continue
        layer = (Lyr.LSTM if op == "LSTM" else Lyr.GRU)(W.shape[2], H, bidirectional=dirs == 2, output=output,
                                                         dtype=dtype)
        for p, v in params.items():
            setattr(layer, p, v.astype(dtype, copy=False))
        made.append((name, layer, ins[0], ("Y" if k == 0 else "Y_h", dirs, H) if not batch_first else
                     ("Y batch-first" if k == 0 else "Y_h batch-first", dirs, H)))
    return made
