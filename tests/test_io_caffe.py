"""Caffe loader: small models written through the declared schema, checked against plain NumPy."""

import math
import struct

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import LRPError, ModelFormatError, UnsupportedLayerError

pytest.importorskip("google.protobuf", reason="the protobuf package is not installed")
from lrpnumpy.io.caffe import load_caffe, schema  # noqa: E402

PROTOTXT = """
name: "tiny"
input: "data"
input_shape { dim: 1 dim: 2 dim: 9 dim: 9 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { eps: 0.001 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 } }
layer { name: "pool2" type: "Pooling" bottom: "norm1" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "drop" type: "Dropout" bottom: "pool2" top: "pool2" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
        param { lr_mult: 1 } inner_product_param { num_output: 4 transpose: true bias_term: false } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def blob(msg, array, legacy=False):
    array = np.asarray(array, np.float32)
    if legacy:
        shape = (1,) * (4 - array.ndim) + array.shape
        msg.num, msg.channels, msg.height, msg.width = shape
    else:
        msg.shape.dim.extend(array.shape)
    msg.data.extend(array.ravel().tolist())


def params(rng):
    return {"w1": rng.normal(size=(3, 2, 3, 3)), "b1": rng.normal(size=3), "mean": rng.normal(size=3),
            "var": rng.random(3) + 0.5, "sf": 2.0, "gamma": rng.normal(size=3), "beta": rng.normal(size=3),
            "fc": rng.normal(size=(3 * 3 * 3, 4))}  # transposed storage: (inputs, outputs)


def write_caffemodel(path, p, legacy=False):
    net = schema()["NetParameter"]()
    enum = schema()["V1LayerParameter"].DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name

    def add(name, kind, arrays):
        if legacy:
            lay = net.layers.add(name=name, type=enum[kind.upper()].number)
        else:
            lay = net.layer.add(name=name, type=kind)
        for a in arrays:
            blob(lay.blobs.add(), a, legacy)
    add("conv1", "Convolution", [p["w1"], p["b1"]])
    if not legacy:
        add("bn1", "BatchNorm", [p["mean"] * p["sf"], p["var"] * p["sf"], [p["sf"]]])
        add("scale1", "Scale", [p["gamma"], p["beta"]])
    add("fc", "Inner_Product" if legacy else "InnerProduct", [p["fc"]])
    path.write_bytes(net.SerializeToString())


def reference_forward(x, p, with_bn=True):
    """Caffe's definitions, written out with loops."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, 3, h, w))
    for i in range(h):
        for j in range(w):
            y[:, :, i, j] = np.tensordot(xp[:, :, i:i + 3, j:j + 3], p["w1"], axes=([1, 2, 3], [1, 2, 3])) + p["b1"]
    if with_bn:
        y = (y - p["mean"][:, None, None]) / np.sqrt(p["var"][:, None, None] + 1e-3)
        y = y * p["gamma"][:, None, None] + p["beta"][:, None, None]
    y = np.maximum(y, 0)
    # max pool 3/2, ceil: ceil((9 - 3) / 2) + 1 = 4 (floor mode would give 4 too); windows clipped at the edge
    oh = math.ceil((h - 3) / 2) + 1
    m = np.full((n, 3, oh, oh), -np.inf)
    for i in range(oh):
        for j in range(oh):
            m[:, :, i, j] = y[:, :, 2 * i:min(2 * i + 3, h), 2 * j:min(2 * j + 3, w)].max(axis=(2, 3))
    # LRN across channels, size 3
    sq = np.pad(m ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    m = m / (1 + 0.01 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])) ** 0.75
    # average pool 2/2 pad 1, ceil: ceil((4 + 2 - 2) / 2) + 1 = 3 (floor mode: 3); divisor clipped to padded extent
    mp = np.pad(m, ((0, 0), (0, 0), (1, 1), (1, 1)))
    a = np.zeros((n, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            r0, c0 = 2 * i, 2 * j
            r1, c1 = min(r0 + 2, 6), min(c0 + 2, 6)
            a[:, :, i, j] = mp[:, :, r0:r1, c0:c1].sum(axis=(2, 3)) / ((r1 - r0) * (c1 - c0))
    z = a.reshape(n, -1) @ p["fc"]  # C, H, W order; weight stored transposed
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_load_matches_caffe_semantics(tmp_path, rng):
    p = params(rng)
    (tmp_path / "net.prototxt").write_text(PROTOTXT)
    write_caffemodel(tmp_path / "net.caffemodel", p)
    net = load_caffe(str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel"))
    assert not any(isinstance(layer, L.BatchNorm2d) for layer in net)  # folded into conv1
    assert net.input_shape == (2, 9, 9) and net[0].weight.dtype == np.float32
    x = rng.random((2, 2, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), reference_forward(x.astype(np.float64), p), rtol=2e-5, atol=1e-6)
    e = L.explain(net, x, composite=L.EpsilonPlus())
    assert np.isfinite(e.relevance).all()
    net64 = load_caffe(str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel"), dtype=np.float64)
    assert {getattr(layer, "weight", np.zeros(0)).dtype for layer in net64 if layer.params} == {np.dtype(np.float64)}
    np.testing.assert_allclose(net64.forward(x.astype(np.float64)), net.forward(x), rtol=2e-5, atol=1e-6)


def test_ceil_mode_pooling_is_one_larger_than_floor(tmp_path, rng):
    text = """
input: "data"
input_dim: 1 input_dim: 1 input_dim: 6 input_dim: 6
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "floor" type: "Pooling" bottom: "pool" top: "floor"
        pooling_param { pool: AVE kernel_size: 2 stride: 1 round_mode: FLOOR } }
"""
    (tmp_path / "p.prototxt").write_text(text)
    (tmp_path / "p.caffemodel").write_bytes(b"")
    net = load_caffe(str(tmp_path / "p.prototxt"), str(tmp_path / "p.caffemodel"))
    x = rng.normal(size=(1, 1, 6, 6)).astype(np.float32)
    y = net[0].forward(x)
    assert y.shape == (1, 1, 3, 3)  # ceil((6 - 3) / 2) + 1 = 3; floor mode gives 2
    np.testing.assert_array_equal(y[0, 0, 2, 2], x[0, 0, 4:, 4:].max())  # the last window is clipped
    assert L.MaxPool2d(3, 2).forward(x).shape == (1, 1, 2, 2)
    assert net.forward(x).shape == (1, 1, 2, 2)


def test_legacy_v1_layers_and_unpacked_data(tmp_path, rng):
    p = params(rng)
    v1 = "input: 'data'\ninput_dim: 1\ninput_dim: 2\ninput_dim: 9\ninput_dim: 9\n"
    v1 += """layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 } }
layers { name: "pool2" type: POOLING bottom: "norm1" top: "pool2"
         pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool2" top: "fc"
         inner_product_param { num_output: 4 transpose: true bias_term: false } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""
    (tmp_path / "v1.prototxt").write_text(v1)
    write_caffemodel(tmp_path / "v1.caffemodel", p, legacy=True)
    net = load_caffe(str(tmp_path / "v1.prototxt"), str(tmp_path / "v1.caffemodel"))
    x = rng.random((1, 2, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), reference_forward(x.astype(np.float64), p, with_bn=False),
                               rtol=2e-5, atol=1e-6)
    # the same weights with the conv bias blob written unpacked (one tagged float per value)
    model = schema()["NetParameter"]()
    model.ParseFromString((tmp_path / "v1.caffemodel").read_bytes())
    conv = model.layers[0]
    bias = np.array(conv.blobs[1].data, np.float32)
    del conv.blobs[1]
    bias_blob = b"".join(_tagged_varint(k, v) for k, v in ((1, 1), (2, 1), (3, 1), (4, 3)))
    bias_blob += b"".join(b"\x2d" + struct.pack("<f", v) for v in bias)  # field 5, wire type 5, unpacked
    conv_bytes = conv.SerializeToString() + _length_delimited(6, bias_blob)
    rest = b"".join(_length_delimited(2, lay.SerializeToString()) for lay in model.layers[1:])
    (tmp_path / "v1u.caffemodel").write_bytes(_length_delimited(2, conv_bytes) + rest)
    again = load_caffe(str(tmp_path / "v1.prototxt"), str(tmp_path / "v1u.caffemodel"))
    np.testing.assert_array_equal(again[0].bias, bias)
    np.testing.assert_array_equal(again.forward(x), net.forward(x))


def _varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _tagged_varint(field, value):
    return _varint(field << 3) + _varint(value)


def _length_delimited(field, payload):
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def test_mismatches_and_bad_files(tmp_path, rng):
    p = params(rng)
    (tmp_path / "net.prototxt").write_text(PROTOTXT)
    write_caffemodel(tmp_path / "good.caffemodel", p)
    good = (tmp_path / "good.caffemodel").read_bytes()
    bad_shape = dict(p, w1=rng.normal(size=(5, 2, 3, 3)))
    write_caffemodel(tmp_path / "shape.caffemodel", bad_shape)
    with pytest.raises(ModelFormatError, match="conv1.*num_output=3"):
        load_caffe(str(tmp_path / "net.prototxt"), str(tmp_path / "shape.caffemodel"))
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="conv1.*holds 0 blobs"):
        load_caffe(str(tmp_path / "net.prototxt"), str(tmp_path / "empty.caffemodel"))
    (tmp_path / "trunc.caffemodel").write_bytes(good[: len(good) // 3])
    with pytest.raises(ModelFormatError, match="trunc.caffemodel"):
        load_caffe(str(tmp_path / "net.prototxt"), str(tmp_path / "trunc.caffemodel"))
    (tmp_path / "bad.prototxt").write_text("layer { name: \"x\" type: ")
    with pytest.raises(ModelFormatError, match="bad.prototxt"):
        load_caffe(str(tmp_path / "bad.prototxt"), str(tmp_path / "good.caffemodel"))
    (tmp_path / "sig.prototxt").write_text(PROTOTXT.replace('type: "ReLU"', 'type: "Sigmoid"'))
    with pytest.raises(UnsupportedLayerError, match="relu1.*Sigmoid"):
        load_caffe(str(tmp_path / "sig.prototxt"), str(tmp_path / "good.caffemodel"))
    (tmp_path / "fork.prototxt").write_text(PROTOTXT.replace('layer { name: "prob"', 'layer { name: "side" '
                                                             'type: "ReLU" bottom: "pool1" top: "side" }\nlayer '
                                                             '{ name: "prob"'))
    with pytest.raises(UnsupportedLayerError, match=r"several outputs \(layers \['side', 'prob'\]"):
        load_caffe(str(tmp_path / "fork.prototxt"), str(tmp_path / "good.caffemodel"))
    (tmp_path / "unknown.prototxt").write_text(PROTOTXT.replace('bottom: "pool1" top: "norm1"',
                                                                'bottom: "nowhere" top: "norm1"'))
    with pytest.raises(ModelFormatError, match="norm1.*reads \\['nowhere'\\]"):
        load_caffe(str(tmp_path / "unknown.prototxt"), str(tmp_path / "good.caffemodel"))
    nan = dict(p, b1=np.full(3, np.nan))
    write_caffemodel(tmp_path / "nan.caffemodel", nan)
    with pytest.raises(ModelFormatError, match="NaN"):
        load_caffe(str(tmp_path / "net.prototxt"), str(tmp_path / "nan.caffemodel"))
    with pytest.raises(LRPError):
        load_caffe(str(tmp_path / "missing.prototxt"), str(tmp_path / "good.caffemodel"))


BRANCHES = """
input: "data"
input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }
layer { name: "split" type: "Split" bottom: "data" top: "d1" top: "d2" }
layer { name: "conv_a" type: "Convolution" bottom: "d1" top: "a" convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "bn_a" type: "BatchNorm" bottom: "a" top: "a" }
layer { name: "scale_a" type: "Scale" bottom: "a" top: "a" scale_param { bias_term: true } }
layer { name: "relu_a" type: "ReLU" bottom: "a" top: "a" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "d2" top: "sum" eltwise_param { coeff: 0.5 coeff: -2 } }
layer { name: "conv_b" type: "Convolution" bottom: "sum" top: "b"
        convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }
layer { name: "affine" type: "Scale" bottom: "sum" top: "c" scale_param { bias_term: true } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "c" bottom: "sum" top: "cat" }
layer { name: "plain" type: "Eltwise" bottom: "cat" bottom: "cat" top: "twice" }
layer { name: "fc" type: "InnerProduct" bottom: "twice" top: "fc" inner_product_param { num_output: 3 } }
"""


def write_branches(path, rng):
    """The weights of BRANCHES in a caffemodel at ``path``; returns them."""
    p = {"wa": rng.normal(size=(2, 2, 3, 3)), "ba": rng.normal(size=2), "mean": rng.normal(size=2),
         "var": rng.random(2) + 0.5, "gamma": rng.normal(size=2), "beta": rng.normal(size=2),
         "wb": rng.normal(size=(3, 2, 1, 1)), "s": rng.normal(size=2), "t": rng.normal(size=2),
         "fc": rng.normal(size=(3, 7 * 36)), "fcb": rng.normal(size=3)}
    net = schema()["NetParameter"]()
    for name, kind, arrays in [("conv_a", "Convolution", [p["wa"], p["ba"]]),
                               ("bn_a", "BatchNorm", [p["mean"], p["var"], [1.0]]),
                               ("scale_a", "Scale", [p["gamma"], p["beta"]]), ("conv_b", "Convolution", [p["wb"]]),
                               ("affine", "Scale", [p["s"], p["t"]]), ("fc", "InnerProduct", [p["fc"], p["fcb"]])]:
        lay = net.layer.add(name=name, type=kind)
        for a in arrays:
            blob(lay.blobs.add(), a)
    path.write_bytes(net.SerializeToString())
    return p


def test_branching_net_eltwise_concat_split_scale(tmp_path, rng):
    """A Caffe net that branches (Split, a blob read twice, in-place layers on a branch) and merges
    (Eltwise SUM with and without coefficients, Concat): a Graph that computes Caffe's function."""
    p = write_branches(tmp_path / "b.caffemodel", rng)
    (tmp_path / "b.prototxt").write_text(BRANCHES)
    g = load_caffe(str(tmp_path / "b.prototxt"), str(tmp_path / "b.caffemodel"), dtype=np.float64)
    assert isinstance(g, L.Graph)
    # bn_a and scale_a folded into conv_a; InnerProduct on a 4-D blob is Flatten then Linear
    assert g.names == ["conv_a", "relu_a", "sum", "conv_b", "affine", "cat", "plain", "fc", "fc:1"]
    assert g.inputs["sum"] == ("relu_a", "input") and g.inputs["cat"] == ("conv_b", "affine", "sum")
    assert g.inputs["plain"] == ("cat", "cat") and isinstance(g["sum"], L.Add) and g["plain"].coefficients is None
    assert isinstance(g["affine"], L.ChannelAffine)

    x = rng.normal(size=(2, 2, 6, 6))
    # Caffe's definitions, written out
    a = np.zeros((2, 2, 6, 6))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(6):
        for j in range(6):
            a[:, :, i, j] = np.tensordot(xp[:, :, i:i + 3, j:j + 3], p["wa"], axes=([1, 2, 3], [1, 2, 3])) + p["ba"]
    col = (slice(None), None, None)
    a = (a - p["mean"][col]) / np.sqrt(p["var"][col] + 1e-5) * p["gamma"][col] + p["beta"][col]
    total = 0.5 * np.maximum(a, 0) - 2 * x
    b = np.einsum("oi,nihw->nohw", p["wb"][:, :, 0, 0], total)
    c = total * p["s"][col] + p["t"][col]
    cat = np.concatenate([b, c, total], axis=1)
    expected = (2 * cat).reshape(2, -1) @ p["fc"].T + p["fcb"]
    np.testing.assert_allclose(g.forward(x), expected, rtol=1e-5, atol=1e-5)  # the weights were stored as float32
    e = L.explain(g, x, composite=L.EpsilonPlus())
    assert np.isfinite(e.relevance).all()
    assert set(e.conservation().split("sum")) == {"relu_a", "input"}


@pytest.mark.parametrize("change, error, match", [
    ('coeff: 0.5 coeff: -2', UnsupportedLayerError, "operation MAX"),
    ('coeff: 0.5 coeff: -2', ModelFormatError, "3 coefficients for 2 bottoms"),
    ('top: "cat" }', UnsupportedLayerError, "Concat along axis 2"),
    ('top: "c" scale_param { bias_term: true }', UnsupportedLayerError, "num_axes=2"),
])
def test_unsupported_merges_are_named(tmp_path, rng, change, error, match):
    replacement = {"operation MAX": 'operation: MAX', "3 coefficients for 2 bottoms": 'coeff: 1 coeff: 2 coeff: 3',
                   "Concat along axis 2": 'top: "cat" concat_param { axis: 2 } }',
                   "num_axes=2": 'top: "c" scale_param { bias_term: true num_axes: 2 }'}[match]
    (tmp_path / "m.prototxt").write_text(BRANCHES.replace(change, replacement))
    write_branches(tmp_path / "m.caffemodel", rng)
    with pytest.raises(error, match=match):
        load_caffe(str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"))


# Caffe at TEST (pycaffe's caffe.Net(prototxt, weights, caffe.TEST)): phase TEST, level 0, the stages of the
# net's own `state`.  A layer with include rules is kept when one of them is met, any other layer unless one of
# its exclude rules is met; a rule is met when every constraint it sets holds (one that sets none is met).
PHASE_RULES = [
    ("", True),
    ("exclude { phase: TEST }", False),
    ("exclude { phase: TRAIN }", True),
    ("exclude { }", False),
    ("include { }", True),
    ("include { phase: TEST }", True),
    ("include { phase: TRAIN }", False),
    ("include { phase: TRAIN } include { phase: TEST }", True),
    ("include { phase: TEST } include { phase: TRAIN }", True),
    ("exclude { phase: TRAIN } exclude { phase: TEST }", False),
    ("include { stage: 'deploy' }", False),
    ("include { phase: TEST not_stage: 'train' }", True),
    ("exclude { not_stage: 'deploy' }", False),
    ("include { min_level: 1 }", False),
    ("include { min_level: 0 max_level: 2 }", True),
    ("include { max_level: -1 }", False),
]


@pytest.mark.parametrize("rules, kept", PHASE_RULES)
def test_include_exclude_rules_as_caffe_applies_them_at_test(tmp_path, rules, kept):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 3 }\n'
            f'layer {{ name: "r" type: "ReLU" bottom: "data" top: "data" {rules} }}\n'
            'layer { name: "t" type: "TanH" bottom: "data" top: "y" }\n')
    (tmp_path / "n.prototxt").write_text(text)
    (tmp_path / "n.caffemodel").write_bytes(schema()["NetParameter"]().SerializeToString())
    net = load_caffe(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))
    assert [type(layer).__name__ for layer in net] == (["ReLU", "Tanh"] if kept else ["Tanh"])
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(net.forward(x), np.tanh(np.maximum(x, 0) if kept else x))


def test_stage_rules_read_the_nets_own_state(tmp_path):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 3 }\nstate { stage: "deploy" }\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "data" include { stage: "deploy" } }\n'
            'layer { name: "loss" type: "TanH" bottom: "data" top: "data" exclude { stage: "deploy" } }\n')
    (tmp_path / "n.prototxt").write_text(text)
    (tmp_path / "n.caffemodel").write_bytes(schema()["NetParameter"]().SerializeToString())
    net = load_caffe(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))
    assert [type(layer).__name__ for layer in net] == ["ReLU"]


def test_include_and_exclude_together_are_refused(tmp_path):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 3 }\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "y" include { phase: TEST } exclude { phase: TRAIN } }\n')
    (tmp_path / "n.prototxt").write_text(text)
    (tmp_path / "n.caffemodel").write_bytes(schema()["NetParameter"]().SerializeToString())
    with pytest.raises(ModelFormatError, match="layer 'r' \\(ReLU\\): both include and exclude rules"):
        load_caffe(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_pad_not_smaller_than_the_kernel_is_refused(tmp_path, pool):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n'
            f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "y" pooling_param {{ pool: {pool} kernel_size: 2 '
            'pad_h: 0 pad_w: 2 } }\n')
    (tmp_path / "n.prototxt").write_text(text)
    (tmp_path / "n.caffemodel").write_bytes(schema()["NetParameter"]().SerializeToString())
    with pytest.raises(ModelFormatError, match=r"layer 'p' \(Pooling\): pad \(0, 2\) must be smaller than the kernel"):
        load_caffe(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))
