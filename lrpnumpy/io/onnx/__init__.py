"""Load ONNX classifiers (chains of supported operators) into lrpnumpy networks, and write them.

ONNX already uses lrpnumpy's layouts (NCHW, Conv weights (out, in/groups, kh, kw)); what this
package converts is operator semantics: Gemm's alpha/beta/transB, ``auto_pad``, Softmax before and
after opset 13, MatMul + Add, BatchNormalization (folded into the layer before it when possible),
and weights given as initializers, ``Constant`` or ``ConstantOfShape`` nodes.

Sequence models and transformers as torch's exporter writes them: token ids (an integer input) read by
an embedding (``Gather`` on an initializer), 1-D ``Conv``/pools and ``ReduceMax``/``ReduceMean`` over
time, ``LSTM`` and ``GRU`` nodes (ONNX's gate order and sequence-first layout followed through the
Transpose/Squeeze/Gather/Concat/Reshape nodes around them), torch's ``nn.MultiheadAttention`` block
taken whole into :class:`~lrpnumpy.layers.MultiheadAttention` (causal mask included),
``LayerNormalization`` and ``Gelu`` and their decomposed forms (opset < 17 / < 20); around them
torchvision's ViT: the patch Conv read as tokens (:class:`~lrpnumpy.layers.PatchEmbedding`), the class
token, the position embedding and the class token's selection.  Shape arithmetic (``Shape``,
``Gather``, ``Concat``, ``Expand``, ``Cast``, ``Mod``, ``Sqrt``...) on constants and static shapes is
evaluated at load time, each result's size checked first.

A file is only trusted as far as its size: every constant's declared element count is checked
against fixed caps (:data:`MAX_SHAPE_VALUES` for shape and axes tensors, ``max_elements`` for the
rest) before it is read, listed, copied or cast, so a 200-byte file cannot ask for gigabytes, and
error messages quote at most a few of a constant's values.  (A ``ConstantOfShape`` is a zero-copy
view until something copies it, so an unused one costs nothing whatever it declares.)

The modules, in the order a reader meets them:

* ``reading``: the protobuf read safely (the size caps, a node's checked view, constants and weights);
* ``graph``: the walk over the nodes, which converter takes each one, the operator table;
* ``folding``: shape arithmetic on constants, evaluated at load time;
* ``cnn``: one handler per operator of convolutional classifiers;
* ``sequence``: token ids, embeddings, LSTM and GRU nodes and the layouts around them, 1-D operators;
* ``transformer``: LayerNormalization, Gelu, their decomposed forms, torch's attention block;
* ``vit``: torchvision's ViT around its encoder;
* ``write``: :func:`save_onnx`.
"""

import os

from ...errors import ModelFormatError
from .._common import brief, converted, parse_errors
from .folding import FOLDED
from .graph import SUPPORTED, _convert
from .reading import MAX_ELEMENTS, MAX_SHAPE_VALUES, _check_tensors, _Limits, _onnx
from .sequence import SEQUENCE_OPS
from .transformer import MAX_BLOCK_NODES
from .write import ONNX_WRITERS, save_onnx

__all__ = ["load_onnx", "save_onnx", "MAX_SHAPE_VALUES", "MAX_ELEMENTS", "MAX_BLOCK_NODES", "SUPPORTED", "FOLDED",
           "SEQUENCE_OPS", "ONNX_WRITERS"]


def load_onnx(path, dtype=None, max_elements=None):
    """Load an ONNX model (file path, bytes or ``ModelProto``) that is a chain of supported operators.

    Parameters
    ----------
    path : str, bytes or onnx.ModelProto
    dtype : None, float32 or float64
        The parameters' dtype; None keeps the model's (ONNX files usually hold float32;
        ``dtype=np.float64`` gives lrpnumpy's reference precision).
    max_elements : int, optional
        Most values one constant may declare, and most values all the network's weights together
        may hold (default :data:`MAX_ELEMENTS`, 2**28).  Checked on the declared sizes before
        anything is read or allocated, whatever the machine's memory.

    Returns
    -------
    Sequential
        With ``input_shape`` set when the graph input has a static shape.

    Raises
    ------
    ModelFormatError
        The file is not a readable ONNX model; its weights are missing, misshapen or not finite; a
        constant declares more values than the caps allow; a name is defined twice.
    UnsupportedLayerError
        An operator or attribute value outside the supported set (operators of a domain other
        than ONNX's own included), or a graph that is not a chain; the message names the node,
        the operator and the attribute.
    """
    onnx, numpy_helper = _onnx()
    where = path if isinstance(path, str) else "<onnx model>"
    limits = _Limits(MAX_ELEMENTS if max_elements is None else max_elements)
    try:
        if isinstance(path, onnx.ModelProto):
            model = path
        elif isinstance(path, bytes):
            model = onnx.load_model_from_string(path)
        else:  # external data is read only once every tensor's declared size has been checked
            model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds; all mean "not ONNX"
        raise ModelFormatError(f"{where}: not a readable ONNX model ({type(exc).__name__}: "
                               f"{brief(str(exc))})") from None
    with parse_errors(where, "ONNX graph"):
        external = _check_tensors(model.graph, where, limits, onnx)
        if external and not isinstance(path, str):
            raise ModelFormatError(f"{where}: its tensors keep their data in external files; give the model's file "
                                   f"path, so that they are read from its folder")
        if external:
            onnx.external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        return converted(_convert(model, where, onnx, numpy_helper, limits), dtype)
