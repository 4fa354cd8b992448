"""ONNX transformers: torch TransformerEncoder stacks exported and loaded as lrpnumpy layers.

torch's exporter writes nn.MultiheadAttention as some eighty nodes (the input projection on tokens
transposed to (T, N, E), the q/k/v split, heads reshaped and transposed, q and k each scaled by
head_dim ** -1/4, MatMul, an optional causal mask, Softmax, MatMul, the output projection and the
transposes back); the loader takes that block whole into one MultiheadAttention.  LayerNormalization
(opset 17) and its decomposed form, Gelu (opset 20) and its erf form become LayerNorm and GELU.
"""

import io
import warnings

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import ModelFormatError, UnsupportedLayerError

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from lrpnumpy.io import load_onnx  # noqa: E402

E, HEADS, FF, T = 8, 2, 16, 5


class Encoder(torch.nn.Module):
    def __init__(self, norm_first=True, causal=False, activation="gelu", layers=2, mask=None):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0, batch_first=True, norm_first=norm_first,
                                                 activation=activation)
        self.enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.causal, self.mask = causal, mask

    def forward(self, x):
        if self.causal:
            return self.enc(x, mask=torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1]), is_causal=True)
        return self.enc(x) if self.mask is None else self.enc(x, mask=self.mask)


def export(module, x, **kwargs):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), f, dynamo=False, **kwargs)
    return f.getvalue()


CASES = {  # name: (Encoder arguments, opset)
    "pre_norm_gelu": (dict(norm_first=True), None),
    "post_norm_relu": (dict(norm_first=False, activation="relu"), None),
    "pre_norm_causal": (dict(norm_first=True, causal=True), None),
    "post_norm_gelu_opset14": (dict(norm_first=False), 14),  # decomposed LayerNorm, erf GELU
    "pre_norm_causal_opset14": (dict(norm_first=True, causal=True), 14),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_transformer_encoder_stacks_give_torchs_outputs(name):
    kwargs, opset = CASES[name]
    torch.manual_seed(0)
    module = Encoder(**kwargs)
    x = torch.randn(2, T, E)
    data = export(module, x, opset_version=opset)
    net = load_onnx(data)
    attention = [layer for layer in net if isinstance(layer, L.MultiheadAttention)]
    assert len(attention) == 2 and all(a.num_heads == HEADS and a.causal == kwargs.get("causal", False)
                                       for a in attention)
    assert sum(isinstance(layer, L.LayerNorm) for layer in net) == 4
    assert sum(isinstance(layer, L.GELU) for layer in net) == (2 if kwargs.get("activation") != "relu" else 0)
    for batch in (2, 3):  # the batch size of the export, and another
        xb = torch.randn(batch, T, E)
        got = net.forward(xb.numpy())
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, module(xb).detach().numpy(), rtol=0, atol=1e-5)
    net64 = load_onnx(data, dtype=np.float64)
    want = module.double()(x.double()).detach().numpy()
    np.testing.assert_allclose(net64.forward(x.double().numpy()), want, rtol=0, atol=1e-10)


def test_dynamic_batch_axis():
    """Exported with a dynamic batch axis, the heads' reshape targets are computed from the input's shape."""
    torch.manual_seed(3)
    module = Encoder(norm_first=False, causal=True)
    net = load_onnx(export(module, torch.randn(2, T, E), input_names=["x"], dynamic_axes={"x": {0: "N"}}))
    assert [a.num_heads for a in net if isinstance(a, L.MultiheadAttention)] == [HEADS, HEADS]
    x = torch.randn(4, T, E)
    np.testing.assert_allclose(net.forward(x.numpy()), module(x).detach().numpy(), rtol=0, atol=1e-5)


def test_default_exporter():
    pytest.importorskip("onnxscript")
    import contextlib
    torch.manual_seed(4)
    module = Encoder(norm_first=True, layers=1).eval()
    x = torch.randn(2, T, E)
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=True)
    net = load_onnx(f.getvalue())
    assert any(isinstance(layer, L.MultiheadAttention) for layer in net)
    np.testing.assert_allclose(net.forward(x.numpy()), module(x).detach().numpy(), rtol=0, atol=1e-5)


def test_loaded_encoder_gradient_is_torchs():
    """The loaded stack's backward pass is torch's autograd on the same weights (float64)."""
    torch.manual_seed(1)
    module = Encoder(norm_first=True, causal=True).double()
    x = torch.randn(2, T, E, dtype=torch.float64)
    net = load_onnx(export(module.float(), x.float()), dtype=np.float64)
    module.double()
    seed = np.random.default_rng(0).normal(size=(2, T, E))
    y, trace = net.forward_trace(x.numpy())
    grad = net.backward(seed, trace)
    xt = x.clone().requires_grad_(True)
    (module(xt) * torch.from_numpy(seed)).sum().backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=0, atol=1e-10)


def test_other_masks_and_patterns_are_named():
    torch.manual_seed(2)
    mask = torch.randn(T, T)  # a float mask that is not causal
    with pytest.raises(UnsupportedLayerError, match=r"\(Add\) adds an attention mask other than the causal one"):
        load_onnx(export(Encoder(mask=mask), torch.randn(2, T, E)))
    # a MatMul on tokens transposed to (T, N, E) that is no attention block
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["t", "w"], ["m"], name="mm"),
             helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, T, E])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, T, E])],
                              [numpy_helper.from_array(np.ones((E, E), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedLayerError, match=r"'mm' \(MatMul\): a MatMul on tokens transposed"):
        load_onnx(model)


def test_masks_are_accepted_only_as_masks():
    """-inf is allowed in a constant only as an attention mask (zeros and -inf, square), never in a weight."""
    w = np.zeros((3, 3), np.float32)
    w[0, 1] = -np.inf
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="dense")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelFormatError, match=r"'dense' \(Gemm\): B 'w' holds infinity"):
        load_onnx(model)
    w[0, 1] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    with pytest.raises(ModelFormatError, match="NaN or infinity"):
        load_onnx(model)
