"""The walk over an ONNX graph: each node, in order, to the layers of an lrpnumpy network.

:func:`_convert` checks the graph's names, folds constant-producing nodes into a table of constants, then
walks the remaining nodes once: shape arithmetic is evaluated (:mod:`.folding`), a node the ViT, transformer
or sequence converters recognise goes to them (:func:`_dispatch`), any other to its operator's handler in
:data:`HANDLERS` (the CNN operators, LayerNormalization and Gelu).  Each layer's output shape is tracked
(:func:`_track`), and values in ONNX's sequence-first layouts carry a tag (see
:func:`.sequence._sequence_node`).  :class:`_Region` holds the graph's readers for the patterns that take
several nodes at once (attention blocks, decomposed normalisations, ViT pieces).
"""

import numpy as np

from ... import layers as Lyr
from ...canonize import fold_batchnorm
from ...errors import LRPError, ModelFormatError, UnsupportedLayerError
from .._common import brief, network, unique_name
from . import cnn, transformer
from .cnn import _channel_shuffles
from .folding import FOLDED, _fold, _fold_node
from .reading import MAX_SHAPE_VALUES, _array, _constant_value, _Node, _shape_values
from .sequence import _ID_TYPES, SEQUENCE_OPS, _is_1d, _sequence_node
from .transformer import _attention_block, _decomposed_layernorm, _erf_gelu
from .vit import _patch_embeddings, _vision_node

#: ONNX operator -> its handler ``(n, consts, prev, shape, opset, dtype, n_in) -> [layers]``, for the nodes
#: :func:`_dispatch` leaves to it (each family registers its own next to its converters).
HANDLERS = {**cnn.HANDLERS, **transformer.HANDLERS}
_CNN_OPS = ("Conv", "Gemm", "MatMul", "Add", "Sum", "Mul", "Concat", "Relu", "Tanh", "MaxPool", "AveragePool",
            "GlobalAveragePool", "Flatten", "Reshape", "Softmax", "BatchNormalization", "Dropout", "Identity", "LRN",
            "Constant", "ConstantOfShape", "ChannelShuffle")
#: Every operator the loader takes, as its error message lists them: the CNN operators and constants, the
#: sequence operators and the shape arithmetic, the transformer operators.
SUPPORTED = tuple(dict.fromkeys(_CNN_OPS + SEQUENCE_OPS + FOLDED + tuple(transformer.HANDLERS)))  # each once


def _convert(model, where, onnx, numpy_helper, limits):
    """``model`` (its tensors' sizes already checked) as an lrpnumpy network (BatchNorm folded into the layer
    before it where possible); errors name ``where`` and the node."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise _Node(node, where).unsupported(f"operator of domain {brief(node.domain)!r}; only ONNX's own "
                                                 f"operators (the default domain) are supported")
        if node.op_type == "ChannelShuffle":  # lrpnumpy's own pseudo-operator, made below
            raise _Node(node, where).unsupported("not an ONNX operator")
        for out in node.output:
            if out in defined:
                raise _Node(node, where).unsupported(f"its output {brief(out)!r} is already defined (by the graph "
                                                     f"input, an initializer or an earlier node); ONNX names each "
                                                     f"value once")
            if out:
                defined.add(out)
    consts = {}
    for init in graph.initializer:
        consts[init.name] = _array(numpy_helper, init, where)
    nodes = []
    for node in graph.node:  # fold constant-producing nodes
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant_value(_Node(node, where), numpy_helper, limits)
        elif node.op_type == "ConstantOfShape" and node.input[0] in consts:
            n = _Node(node, where)
            value = n.get("value")
            fill = numpy_helper.to_array(value).ravel() if value is not None else np.zeros(1, np.float32)
            if fill.size != 1 or fill.dtype.kind not in "biuf" or (fill.dtype.kind == "f" and
                                                                    not np.isfinite(fill).all()):
                raise ModelFormatError(f"{n.label}: value must be one finite number, got {brief(fill)}")
            shape = _shape_values(n, consts[node.input[0]], "its shape input")
            limits.dims(n.label, "the constant", shape)
            # a read-only view that takes no memory; whatever copies it (a layer's weight, a folded Reshape) checks
            # its size against max_elements first
            consts[node.output[0]] = np.broadcast_to(fill[:1].reshape(()), tuple(shape))
        elif node.op_type in ("Transpose", "Identity", "Unsqueeze", "Reshape") and node.input \
                and all(i in consts for i in node.input if i):
            consts[node.output[0]] = _fold(_Node(node, where, limits), [consts[i] for i in node.input if i])
        else:
            nodes.append(node)
    data_inputs = [i for i in graph.input if i.name not in consts]
    if len(data_inputs) != 1:
        raise UnsupportedLayerError(f"{where}: expected one data input, found {brief([i.name for i in data_inputs])}")
    inp = data_inputs[0]
    if inp.type.tensor_type.elem_type not in (1, 11) + _ID_TYPES:
        raise UnsupportedLayerError(f"{where}: input {inp.name!r} must be float32 or float64, or integer token ids "
                                    f"(ONNX elem_type {inp.type.tensor_type.elem_type})")
    dtype = np.float32 if inp.type.tensor_type.elem_type == 1 else np.float64
    if inp.type.tensor_type.elem_type in _ID_TYPES:  # token ids: the layers take the weights' float dtype
        dtype = next((c.dtype.type for c in consts.values() if c.dtype in (np.float32, np.float64)), np.float32)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    shape = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None  # tracked per layer

    nodes = _channel_shuffles(nodes, consts, onnx)
    uses = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for out in graph.output:
        uses[out.name] = uses.get(out.name, 0) + 1
    producer, shapes = {inp.name: Lyr.graph.INPUT}, {Lyr.graph.INPUT: shape}
    gnodes, layer_of, taken = [], {}, {Lyr.graph.INPUT}
    tags, batch = {}, dims[0] if dims and dims[0] else 1  # see _sequence_node; Shape's batch entry
    region = _Region(nodes, inp.name)  # nodes taken into a pattern (an attention block) are skipped
    region.env = (consts, producer, shapes, tags, batch, where, limits)
    for node in nodes:
        if id(node) in region.skip:
            continue
        n = _Node(node, where, limits)
        if _fold_node(n, consts, producer, shapes, tags, batch):  # shape arithmetic, folded into constants
            continue
        if node.op_type not in SUPPORTED:
            raise n.unsupported(f"operator not supported; supported: {', '.join(SUPPORTED)}")
        data = [i for i in node.input if i and i not in consts]
        unknown = [i for i in data if i not in producer]
        if unknown or not data:
            raise n.unsupported(f"its data inputs {brief(unknown or data)} are not produced by an earlier node or the "
                                f"graph input" if data else "it has no data input")
        for extra in node.output[1:] if node.op_type not in ("LSTM", "GRU") else ():
            if extra and uses.get(extra):
                raise n.unsupported(f"its second output {extra!r} is used; only the first output is supported")
        ins = [producer[i] for i in data]
        made = _dispatch(n, consts, data, ins, [shapes[i] for i in ins], tags, dtype, uses, region)
        if made is not None:  # sequence layouts, recurrent nodes, embeddings, 1-D operators, attention, ViT
            name = None
            for k, (out, layer, src, tag) in enumerate(made):
                src = name if src is None else src  # None: the layer before in this list
                name = src
                if layer is not None:
                    name = unique_name(node.name or out, taken, k)
                    gnodes.append((name, layer, [src]))
                    layer_of[name] = layer
                    shapes[name] = None if shapes[src] is None else _track(layer, [shapes[src]], n)
                producer[out] = name
                if tag:
                    tags[out] = tag
            continue
        # the layer before, when this node is its only reader (so a bias may be folded into it)
        prev = layer_of.get(ins[0]) if len(ins) == 1 and uses.get(data[0]) == 1 else None
        in_shapes = [shapes[i] for i in ins]
        new = HANDLERS[node.op_type](n, consts, prev, in_shapes[0], opset, dtype, len(ins))
        out_shape = None if any(sh is None for sh in in_shapes) else _track(new[0], in_shapes, n) if new else \
            in_shapes[0]
        current = ins
        for k, layer in enumerate(new):
            if k:
                out_shape = _track(layer, [out_shape], n) if out_shape is not None else None
            name = unique_name(node.name or node.output[0], taken, k)
            gnodes.append((name, layer, current))
            layer_of[name], shapes[name], current = layer, out_shape, [name]
        if not new and len(ins) != 1:
            raise n.unsupported("a node without a layer must have one data input")
        producer[node.output[0]] = current[0]
    outputs = [o.name for o in graph.output]
    if len(outputs) != 1 or outputs[0] not in producer:
        raise UnsupportedLayerError(f"{where}: expected one graph output computed by the nodes, got {brief(outputs)}")
    if outputs and outputs[0] in tags:
        raise UnsupportedLayerError(f"{where}: the graph output {brief(outputs[0])!r} is in ONNX's sequence-first "
                                    f"layout ({tags[outputs[0]][0]}); lrpnumpy's networks output batch first")
    if not graph.node:
        raise ModelFormatError(f"{where}: the graph has no nodes")
    input_shape = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None
    if producer[outputs[0]] == Lyr.graph.INPUT:  # only identities (Dropout, Identity)
        return Lyr.Sequential(input_shape=input_shape)
    return fold_batchnorm(network(_patch_embeddings(gnodes, producer[outputs[0]]), producer[outputs[0]],
                                  input_shape))


def _dispatch(n, consts, data, ins, in_shapes, tags, dtype, uses, region):
    """The layers the ViT, transformer or sequence converters make for ``n``, as ``[(onnx output, layer or None,
    source node, tag), ...]`` (see :func:`.sequence._sequence_node`), or None when its operator's entry in
    :data:`HANDLERS` applies.

    Asked in this order: a piece of torchvision's ViT (:func:`.vit._vision_node`); the handlers, for a node on
    values in lrpnumpy's own layout whose operator is no sequence operator; a decomposed LayerNorm or GELU
    (:mod:`.transformer`); torch's attention block, at a MatMul on tokens transposed to (T, N, E); the
    sequence operators and layouts (:func:`.sequence._sequence_node`).
    """
    op = n.node.op_type
    tag = [tags.get(i) for i in data]
    if not any(tag) and op in ("Reshape", "Concat", "Add", "Gather"):
        found = _vision_node(n, consts, data, ins, in_shapes, region, dtype)
        if found is not None:  # torchvision's ViT: patches to tokens, class token, position embedding, selection
            return found
    if not any(tag) and op not in SEQUENCE_OPS + ("Div",) and not (op in ("Conv", "MaxPool", "AveragePool")
                                                                    and _is_1d(n, consts)):
        if op not in HANDLERS:
            raise n.unsupported("on activations (it is supported only on constants, evaluated at load time); "
                                f"supported on activations: {', '.join(sorted(set(HANDLERS) | set(SEQUENCE_OPS)))}")
        return None
    if not any(tag) and op in ("ReduceMean", "Div"):
        pattern = _decomposed_layernorm if op == "ReduceMean" else _erf_gelu
        found = pattern(n, consts, data, ins[0] if ins else None, in_shapes, region, dtype)
        if found is not None:
            return found
    if op == "MatMul" and tag == [("seq-first",)]:  # torch's MultiheadAttention export
        return _attention_block(n, consts, ins[0], in_shapes[0], region, dtype)
    return _sequence_node(n, consts, data, ins, in_shapes, tags, dtype, uses)


def _track(layer, shapes, n):
    """Output shape (without batch) of ``layer`` for inputs of ``shapes``."""
    try:
        return layer.output_shape(*((1,) + tuple(sh) for sh in shapes))[1:]
    except LRPError as exc:
        raise UnsupportedLayerError(f"{n.label}: does not fit its inputs of shapes {[tuple(sh) for sh in shapes]}: {exc}") from None


class _Region:
    """The graph's nodes with their readers, and the nodes a pattern has taken (skipped by the main loop)."""

    def __init__(self, nodes, data_input):
        self.nodes, self.skip, self.readers, self.data = nodes, set(), {}, {data_input}
        for node in nodes:
            for name in node.input:
                if name:
                    self.readers.setdefault(name, []).append(node)
            if node.op_type != "Shape" and any(i in self.data for i in node.input):  # Shape gives static values
                self.data.update(o for o in node.output if o)
        self.made_by = {o: node for node in nodes for o in node.output if o}
        self.env = None

    def resolve(self, name, depth=0):
        """Fold now the constant computation of ``name`` (shape arithmetic after a pattern's start), if it is one."""
        consts, producer, shapes, tags, batch, where, limits = self.env
        node = self.made_by.get(name)
        if name in consts or name in self.data or node is None or depth > MAX_SHAPE_VALUES:
            return
        for i in node.input:
            if i:
                self.resolve(i, depth + 1)
        _fold_node(_Node(node, where, limits), consts, producer, shapes, tags, batch)

    def one_reader(self, name, op=None):
        r = self.readers.get(name, [])
        return r[0] if len(r) == 1 and (op is None or r[0].op_type == op) else None
