"""ONNX vision transformers: torchvision's VisionTransformer exported by torch and loaded as lrpnumpy layers.

Around the encoder (whose attention blocks, LayerNormalization and Gelu tests/test_io_onnx_transformer.py
covers) torchvision's ViT exports the patch Conv, Reshape (N, C, h * w) and Transpose (0, 2, 1) (one
PatchEmbedding), Concat of the class token Expand-ed over the batch (ClassToken), Add of the (1, T, E)
position embedding (PositionEmbedding) and Gather of token 0 on axis 1 (SelectToken).
"""

import io
import warnings

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites
from lrpnumpy.errors import ModelFormatError, ShapeError, UnsupportedLayerError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
from test_io_onnx_transformer import export  # noqa: E402  (torch and onnx are there)
from onnx import helper, numpy_helper  # noqa: E402

from lrpnumpy.io import load_onnx  # noqa: E402

SMALL = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)


def small_vit(seed=0):
    torch.manual_seed(seed)
    module = torchvision.models.VisionTransformer(**SMALL).eval()
    with torch.no_grad():  # torchvision starts the class token and the head at zero: make them count
        module.class_token.normal_(0, 0.5)
        module.heads.head.weight.normal_(0, 0.2)
        module.heads.head.bias.normal_(0, 0.2)
    return module




@pytest.fixture(scope="module")
def vit():
    module = small_vit()
    return module, export(module, torch.randn(2, 3, 32, 32))


def test_vision_transformer_loads_into_vit_layers(vit):
    module, data = vit
    net = load_onnx(data)
    kinds = [type(layer) for layer in net.layers]
    assert kinds[:3] == [L.PatchEmbedding, L.ClassToken, L.PositionEmbedding]
    assert kinds[-2:] == [L.SelectToken, L.Linear] and net.layers[-2].index == 0
    assert sum(k is L.MultiheadAttention for k in kinds) == 2 and sum(k is L.LayerNorm for k in kinds) == 5
    pe, cls, pos = net.layers[:3]
    assert pe.patch_size == 8 and pe.embed_dim == 64 and pos.num_tokens == 17
    np.testing.assert_array_equal(pe.proj.weight, module.conv_proj.weight.detach().numpy())
    np.testing.assert_array_equal(cls.cls_token, module.class_token.detach().numpy())
    np.testing.assert_array_equal(pos.pos_embedding, module.encoder.pos_embedding.detach().numpy())


def test_vision_transformer_gives_torchs_outputs(vit):
    module, data = vit
    net = load_onnx(data)
    x = torch.randn(2, 3, 32, 32)
    got = net.forward(x.numpy())
    assert got.dtype == np.float32
    want = module(x).detach().numpy()
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    net64 = load_onnx(data, dtype=np.float64)
    want64 = small_vit().double()(x.double()).detach().numpy()
    np.testing.assert_allclose(net64.forward(x.double().numpy()), want64, rtol=0, atol=1e-10)


def test_dynamic_batch_axis():
    module = small_vit(1)
    data = export(module, torch.randn(2, 3, 32, 32), input_names=["x"], dynamic_axes={"x": {0: "N"}})
    net = load_onnx(data)
    assert isinstance(net.layers[0], L.PatchEmbedding) and isinstance(net.layers[1], L.ClassToken)
    x = torch.randn(3, 3, 32, 32)
    np.testing.assert_allclose(net.forward(x.numpy()), module(x).detach().numpy(), rtol=0, atol=1e-5)


def test_default_exporter():
    """torch's default (dynamo) exporter: the same pieces, and attention heads reshaped differently."""
    pytest.importorskip("onnxscript")
    import contextlib
    module = small_vit(2)
    x = torch.randn(2, 3, 32, 32)
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=True)
    net = load_onnx(f.getvalue())
    kinds = [type(layer) for layer in net.layers]
    assert kinds[:3] == [L.PatchEmbedding, L.ClassToken, L.PositionEmbedding] and L.SelectToken in kinds
    assert [a.num_heads for a in net.layers if isinstance(a, L.MultiheadAttention)] == [4, 4]
    want = module(x).detach().numpy()
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(net.forward(x.numpy()), want, rtol=0, atol=1e-5)


def test_attnlrp_on_the_loaded_vit_conserves_per_layer(vit):
    _, data = vit
    net = load_onnx(data, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32))
    e = L.explain(net, x, composite=composites.get("attnlrp", epsilon=1e-12))
    assert e.relevance.shape == x.shape and np.abs(e.relevance).max() > 1e-6
    report = e.conservation()
    assert np.abs(report.residual()).max() < 1e-9
    rows = report.to_dict()
    assert len(rows) == len(net.layers)
    assert rows[1]["bias"] != 0 and rows[2]["bias"] != 0  # the class token and the position embedding absorb some


def _graph(nodes, inits, shape=(1, 3, 8, 8), out=(1, 2, 4)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(out))],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tokens(extra, inits):
    """Conv (2, 3, 4, 4) stride 4 on (1, 3, 8, 8) -> Reshape (1, 2, 4) -> Transpose: tokens (1, 4, 2), then ``extra``."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Reshape", ["c", "s"], ["r"], name="flat"),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1])] + extra
    return {"w": np.ones((2, 3, 4, 4), np.float32), "s": np.array([1, 2, 4], np.int64), **inits}, nodes


def test_other_patterns_are_named():
    inits, nodes = _tokens([], {})
    nodes[2] = helper.make_node("Transpose", ["r"], ["y"], perm=[0, 1, 2])
    with pytest.raises(UnsupportedLayerError, match=r"'flat' \(Reshape\): feature maps reshaped to \(N, 2, 4\) must "
                                                    r"be read as tokens by one Transpose \(0, 2, 1\)"):
        load_onnx(_graph(nodes, inits))
    cls = np.ones((1, 1, 2), np.float32)
    inits, nodes = _tokens([helper.make_node("Concat", ["t", "cls"], ["y"], name="join", axis=1)], {"cls": cls})
    with pytest.raises(UnsupportedLayerError, match=r"'join' \(Concat\): Concat of constant 'cls' .* only a class "
                                                    r"token"):
        load_onnx(_graph(nodes, inits, out=(1, 5, 2)))
    inits, nodes = _tokens([helper.make_node("Concat", ["cls", "t"], ["y"], name="join", axis=2)], {"cls": cls})
    with pytest.raises(UnsupportedLayerError, match=r"'join' \(Concat\).*only a class token"):
        load_onnx(_graph(nodes, inits, out=(1, 4, 4)))
    inits, nodes = _tokens([helper.make_node("Concat", ["cls", "t"], ["y"], name="join", axis=1)], {"cls": cls})
    net = load_onnx(_graph(nodes, inits, out=(1, 5, 2)))  # the accepted form, for contrast
    assert isinstance(net.layers[1], L.ClassToken) and isinstance(net.layers[0], L.PatchEmbedding)
    inits, nodes = _tokens([helper.make_node("Gather", ["t", "i"], ["y"], name="pick", axis=2)],
                           {"i": np.array(0, np.int64)})
    with pytest.raises(UnsupportedLayerError, match=r"'pick' \(Gather\): Gather on tokens \(N, 4, 2\) with axis=2"):
        load_onnx(_graph(nodes, inits, out=(1, 4)))
    inits, nodes = _tokens([helper.make_node("Gather", ["t", "i"], ["y"], name="pick", axis=1)],
                           {"i": np.array([0, 1], np.int64)})
    with pytest.raises(UnsupportedLayerError, match=r"'pick' \(Gather\).*only one token"):
        load_onnx(_graph(nodes, inits, out=(1, 2, 2)))
    inits, nodes = _tokens([helper.make_node("Gather", ["t", "i"], ["y"], name="pick", axis=1)],
                           {"i": np.array(-4, np.int64)})  # token 0 counted from the end
    net = load_onnx(_graph(nodes, inits, out=(1, 2)))
    assert isinstance(net.layers[-1], L.SelectToken) and net.layers[-1].index == 0
    inits, nodes = _tokens([helper.make_node("Gather", ["t", "i"], ["y"], name="pick", axis=1)],
                           {"i": np.array(2, np.int64)})  # another token than the class token's
    with pytest.raises(UnsupportedLayerError, match=r"'pick' \(Gather\): Gather of activations"):
        load_onnx(_graph(nodes, inits, out=(1, 2)))
    inits["i"] = np.array(8, np.int64)  # 8 % 4 == 0, but out of range
    with pytest.raises(ModelFormatError, match=r"'pick' \(Gather\): token index 8 out of range for 4 tokens"):
        load_onnx(_graph(nodes, inits, out=(1, 2)))


def test_position_embedding_of_the_wrong_length_is_named():
    inits, nodes = _tokens([helper.make_node("Add", ["t", "p"], ["y"], name="pos")],
                           {"p": np.ones((1, 4, 2), np.float32)})
    net = load_onnx(_graph(nodes, inits, out=(1, 4, 2)))
    assert isinstance(net.layers[-1], L.PositionEmbedding)
    with pytest.raises(ShapeError, match="the sequence has 9 tokens but there are position embeddings for 4"):
        net.forward(np.ones((1, 3, 12, 12), np.float32))


@pytest.mark.parametrize("bad", [(6, 6), (5, 6)])
def test_attention_mask_of_the_wrong_shape_is_named(bad):
    """A constant mask added to the scores must end in (T, T): a causal mask for 6 tokens on 5, or a mask that is not
    square, is named with its shape (not a reshape error or 'not causal')."""
    t, e = 5, 8
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(e, 2, 16, dropout=0.0, batch_first=True)
    mask = torch.randn(t, t)

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x, src_mask=mask)
    model = onnx.load_from_string(export(Masked(), torch.randn(2, t, e)))
    holders = [nd for nd in model.graph.node if nd.op_type == "Constant" and
               numpy_helper.to_array(nd.attribute[0].t).size == t * t and
               np.allclose(numpy_helper.to_array(nd.attribute[0].t).ravel(), mask.numpy().ravel())]
    assert len(holders) == 1
    # a causal mask for 6 tokens; zeros (-inf is allowed only in a square mask) of shape (5, 6)
    value = np.where(np.triu(np.ones(bad, bool), 1) & (bad[0] == bad[1]), -np.inf, 0).astype(np.float32)
    holders[0].attribute[0].t.CopyFrom(numpy_helper.from_array(value))
    with pytest.raises(UnsupportedLayerError, match=rf"adds an attention mask of shape \({bad[0]}, {bad[1]}\) to "
                                                    rf"scores over 5 tokens; a mask must end in \(T, T\) = \(5, 5\)"):
        load_onnx(model)
    value = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, 0).astype(np.float32)  # the right one loads
    holders[0].attribute[0].t.CopyFrom(numpy_helper.from_array(value))
    net = load_onnx(model)
    assert [a.causal for a in net.layers if isinstance(a, L.MultiheadAttention)] == [True]


def test_vit_b_16_loads():
    """torchvision's ViT-B/16 (random weights, 224 x 224, 86 million parameters): 12 blocks load and give torch's
    logits (about 25 s: export, load and one forward pass each)."""
    torch.manual_seed(5)
    module = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():
        module.heads.head.weight.normal_(0, 0.02)
        module.class_token.normal_(0, 0.5)
    x = torch.randn(1, 3, 224, 224)
    net = load_onnx(export(module, x))
    kinds = [type(layer) for layer in net.layers]
    assert kinds[:3] == [L.PatchEmbedding, L.ClassToken, L.PositionEmbedding] and kinds[-2] is L.SelectToken
    assert [a.num_heads for a in net.layers if isinstance(a, L.MultiheadAttention)] == [12] * 12
    assert net.layers[2].num_tokens == 197 and net.layers[0].patch_size == 16
    want = module(x).detach().numpy()
    assert want.shape == (1, 1000) and np.abs(want).max() > 0.1
    np.testing.assert_allclose(net.forward(x.numpy()), want, rtol=0, atol=1e-5)
