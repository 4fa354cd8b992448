"""Vision transformers: what torchvision's ViT exports around its encoder.

The patch Conv read as tokens (merged into a :class:`~lrpnumpy.layers.PatchEmbedding`), the class token, the
position embedding and the class token's selection; the encoder's blocks are :mod:`.transformer`'s.
"""

import numpy as np

from ... import layers as Lyr
from ...errors import ModelFormatError
from .._common import brief
from .reading import _shape_values, _weight
from .transformer import _perm


def _vision_node(n, consts, data, ins, in_shapes, region, dtype):
    """The pieces torchvision's ViT exports around its encoder, as ``[(onnx output, layer, source, None)]``, or None
    when ``n`` is not one of them (the general handlers then apply):

    * ``Reshape`` (N, C, h, w) -> (N, C, h * w) then ``Transpose (0, 2, 1)``: :class:`~lrpnumpy.layers.ToTokens`
      (after a patch Conv, the two become a :class:`~lrpnumpy.layers.PatchEmbedding`: :func:`_patch_embeddings`);
    * ``Concat([Expand(class token), tokens], axis=1)``: :class:`~lrpnumpy.layers.ClassToken`;
    * ``Add`` of a constant (1, T, E) to tokens (N, T, E): :class:`~lrpnumpy.layers.PositionEmbedding`;
    * ``Gather`` of token 0 on axis 1 of tokens: :class:`~lrpnumpy.layers.SelectToken` (the class token's).

    Each is checked (shapes, axes); a Concat of a constant with activations or a Reshape of feature maps
    that fits none is refused here, naming the node."""
    op, out, shape = n.node.op_type, n.node.output[0], in_shapes[0] if in_shapes else None
    src = ins[0] if ins else None
    consts_in = [i for i in n.node.input if i in consts]
    if op == "Reshape" and len(data) == 1 and shape is not None and len(shape) == 3 and len(n.node.input) > 1 \
            and n.node.input[1] in consts:
        target = _shape_values(n, consts[n.node.input[1]], "the target shape")
        c, h, w = shape
        batch = region.env[4]
        if len(target) != 3 or target[0] not in (0, -1, batch) or target[1] not in (0, c) or \
                target[2] not in (-1, h * w):
            return None  # _reshape names it
        readers = region.readers.get(out, [])
        if len(readers) != 1 or readers[0].op_type != "Transpose" or _perm(readers[0]) != [0, 2, 1]:
            raise n.unsupported(f"feature maps reshaped to (N, {c}, {h * w}) must be read as tokens by one Transpose "
                                f"(0, 2, 1) (torchvision's ViT), got "
                                f"{brief([(r.name, r.op_type) for r in readers])}")
        region.skip.add(id(readers[0]))
        return [(readers[0].output[0], Lyr.ToTokens(), src, None)]
    if op == "Concat" and consts_in and data:
        axis = int(n.get("axis", 1))
        cls = np.asarray(consts[consts_in[0]])
        if len(data) != 1 or len(n.node.input) != 2 or n.node.input[0] not in consts or shape is None or \
                len(shape) != 2 or axis not in (1, -2) or cls.ndim != 3 or cls.shape[1:] != (1, shape[1]) or \
                cls.shape[0] < 1 or cls.dtype.kind != "f":
            raise n.unsupported(f"Concat of constant {brief(consts_in[0])!r} of shape {brief(cls.shape)} with "
                                f"activations of shape {brief(None if shape is None else (None,) + tuple(shape))}: "
                                f"only a class token (a constant (1, 1, E) expanded over the batch, put first along "
                                f"the token axis 1 of tokens (N, T, E)) is supported")
        n.limits.count(n.label, "the class token", cls.shape)
        if not np.isfinite(cls).all() or not (cls == cls[:1]).all():
            raise n.unsupported(f"the class token {brief(consts_in[0])!r} differs between samples or is not finite")
        n.limits.take(n.label, "the class token", [shape[1]])
        layer = Lyr.ClassToken(shape[1], dtype=dtype)
        layer.cls_token = np.array(cls[:1], dtype=dtype)
        return [(out, layer, src, None)]
    if op == "Add" and len(data) == 1 and len(consts_in) == 1 and shape is not None and len(shape) == 2:
        pos = np.asarray(consts[consts_in[0]])
        if pos.ndim < 2 or pos.shape[-2:] != tuple(shape) or pos.size != shape[0] * shape[1]:
            return None  # a bias per feature: _add
        p = _weight(n, consts, list(n.node.input).index(consts_in[0]), dtype, "the position embedding")
        layer = Lyr.PositionEmbedding(shape[0], shape[1], dtype=dtype)
        layer.pos_embedding = p.reshape(1, shape[0], shape[1])
        return [(out, layer, src, None)]
    if op == "Gather" and len(data) == 1 and n.node.input[0] == data[0] and shape is not None and len(shape) == 2:
        index = consts.get(n.node.input[1]) if len(n.node.input) > 1 else None
        axis = int(n.get("axis", 0))
        if index is not None and np.ndim(index) == 0 and np.asarray(index).dtype.kind in "iu" and axis in (1, -2) \
                and int(index) not in (0, -shape[0]):
            if not -shape[0] <= int(index) < shape[0]:
                raise ModelFormatError(f"{n.label}: token index {int(index)} out of range for {shape[0]} tokens")
            return None  # not the class token (e.g. a sequence's last step): _gather_node names it
        if index is None or np.ndim(index) != 0 or np.asarray(index).dtype.kind not in "iu" or axis not in (1, -2):
            raise n.unsupported(f"Gather on tokens (N, {shape[0]}, {shape[1]}) with axis={axis} and index "
                                f"{brief(None if index is None else np.asarray(index).tolist())}: only one token "
                                f"(a constant scalar index on axis 1, as the class token's selection) is supported")
        return [(out, Lyr.SelectToken(0), src, None)]
    return None


def _patch_embeddings(gnodes, output):
    """``gnodes`` with each patch Conv2d (kernel = stride, no padding, dilation or groups) read only by a ToTokens
    merged with it into one :class:`~lrpnumpy.layers.PatchEmbedding` (what attention rollout maps back to pixels)."""
    readers = {}
    for name, _, inputs in gnodes:
        for i in inputs:
            readers.setdefault(i, []).append(name)
    merged, out = {}, []
    for name, layer, inputs in gnodes:
        conv = next((c for c in out if c[0] == inputs[0]), None) if len(inputs) == 1 else None
        if isinstance(layer, Lyr.ToTokens) and conv is not None and type(conv[1]) is Lyr.Conv2d and \
                readers.get(conv[0]) == [name] and conv[0] != output:
            c = conv[1]
            if c.kernel_size == c.stride and c.kernel_size[0] == c.kernel_size[1] and c.padding == (0, 0, 0, 0) \
                    and c.dilation == (1, 1) and c.groups == 1:
                pe = Lyr.PatchEmbedding(c.in_channels, c.out_channels, c.kernel_size[0], dtype=c.weight.dtype)
                setattr(pe, "proj.weight", c.weight)
                setattr(pe, "proj.bias", c.bias if c.bias is not None else np.zeros(c.out_channels, c.weight.dtype))
                out[out.index(conv)] = (conv[0], pe, conv[2])
                merged[name] = conv[0]
                continue
        out.append((name, layer, [merged.get(i, i) for i in inputs]))
    return out
