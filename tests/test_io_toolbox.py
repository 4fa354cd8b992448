"""LRP Toolbox text models: read against an independent NHWC computation, and written back."""

import math

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import LRPError, ModelFormatError, ShapeError, UnsupportedLayerError
from lrpnumpy.io import from_nhwc, load_lrp_toolbox, save_lrp_toolbox


def toolbox_text(rng, legacy_linear=False):
    """A Toolbox model as text, and its parameters in the Toolbox's own layouts."""
    p = {"c1": rng.normal(size=(3, 3, 2, 4)), "b1": rng.normal(size=4), "c2": rng.normal(size=(2, 2, 4, 3)),
         "b2": rng.normal(size=3), "l1": rng.normal(size=(3 * 2 * 3, 5)), "bl1": rng.normal(size=5),
         "l2": rng.normal(size=(5, 3)), "bl2": rng.normal(size=3)}

    def line(a):
        return " ".join(repr(float(v)) for v in np.ravel(a)) + "\n"
    text = "Convolution 3 3 2 4 1 1\n" + line(p["c1"]) + line(p["b1"]) + "Rect\nSumPool 2 2 2 2\n"
    text += "Convolution 2 2 4 3 1 2\n" + line(p["c2"]) + line(p["b2"]) + "Rect\nMaxPool 2 1 1 1\nFlatten\n"
    text += "Linear 18 5\n" + line(p["l1"]) + line(p["bl1"]) + "Tanh\nLinear 5 3\n"
    text += ("".join(line(row) for row in p["l2"]) if legacy_linear else line(p["l2"])) + line(p["bl2"])
    return text + "SoftMax\n\n", p


def toolbox_forward(x, p):
    """The Toolbox's forward pass on NHWC data, written from its definitions."""
    def conv(x, w, b, s):
        n, h, wd, _ = x.shape
        kh, kw, _, f = w.shape
        oh, ow = (h - kh) // s[0] + 1, (wd - kw) // s[1] + 1
        y = np.zeros((n, oh, ow, f))
        for i in range(oh):
            for j in range(ow):
                patch = x[:, i * s[0]:i * s[0] + kh, j * s[1]:j * s[1] + kw, :]
                y[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2])) + b
        return y

    def pool(x, kh, kw, s, op):
        n, h, wd, c = x.shape
        oh, ow = (h - kh) // s[0] + 1, (wd - kw) // s[1] + 1
        y = np.zeros((n, oh, ow, c))
        for i in range(oh):
            for j in range(ow):
                y[:, i, j, :] = op(x[:, i * s[0]:i * s[0] + kh, j * s[1]:j * s[1] + kw, :], axis=(1, 2))
        return y
    x = np.maximum(conv(x, p["c1"], p["b1"], (1, 1)), 0)
    x = pool(x, 2, 2, (2, 2), np.sum) / math.sqrt(4)
    x = np.maximum(conv(x, p["c2"], p["b2"], (1, 2)), 0)
    x = pool(x, 2, 1, (1, 1), np.max)
    x = x.reshape(len(x), -1)  # NHWC flattening: (h, w, c)
    x = np.tanh(x @ p["l1"] + p["bl1"]) @ p["l2"] + p["bl2"]
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("legacy", [False, True])
def test_load_matches_the_toolbox_definition(tmp_path, rng, legacy):
    text, p = toolbox_text(rng, legacy)
    path = tmp_path / "model.txt"
    path.write_text(text)
    net = load_lrp_toolbox(str(path), input_shape=(2, 13, 10))
    assert [type(layer).__name__ for layer in net] == ["Conv2d", "ReLU", "SumPool2d", "Conv2d", "ReLU", "MaxPool2d",
                                                       "Flatten", "Linear", "Tanh", "Linear", "Softmax"]
    x_nhwc = rng.random((3, 13, 10, 2))
    np.testing.assert_allclose(net.forward(from_nhwc(x_nhwc)), toolbox_forward(x_nhwc, p), rtol=1e-12)
    e = L.explain(net, from_nhwc(x_nhwc), composite=L.EpsilonPlus())
    assert np.isfinite(e.relevance).all()
    net32 = load_lrp_toolbox(str(path), input_shape=(2, 13, 10), dtype=np.float32)
    assert net.dtype == np.float64 and net32.dtype == np.float32
    assert L.io.load_model(str(path), input_shape=(2, 13, 10), dtype="float32").dtype == np.float32


def test_round_trip_is_byte_for_byte(tmp_path, rng):
    text, _ = toolbox_text(rng)
    (tmp_path / "a.txt").write_text(text)
    net = load_lrp_toolbox(str(tmp_path / "a.txt"), input_shape=(2, 13, 10))
    save_lrp_toolbox(net, str(tmp_path / "b.txt"))
    assert (tmp_path / "b.txt").read_text() == text
    again = load_lrp_toolbox(str(tmp_path / "b.txt"), input_shape=(2, 13, 10))
    for a, b in zip(net, again):
        for name in ("weight", "bias"):
            if getattr(a, name, None) is not None:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_toolbox_lenet_round_trip_without_shape(tmp_path):
    from lrpnumpy.zoo import toolbox_lenet
    net = toolbox_lenet()  # its sum pools divide by sqrt(h*w), as the Toolbox's do
    assert all(layer.scale == 0.5 for layer in net if isinstance(layer, L.SumPool2d))
    net.input_shape = None  # the Flatten sees a 1 x 1 map: no shape needed
    save_lrp_toolbox(net, str(tmp_path / "lenet.txt"))
    back = load_lrp_toolbox(str(tmp_path / "lenet.txt"))
    x = np.random.default_rng(0).random((2, 1, 32, 32))
    np.testing.assert_array_equal(back.forward(x), net.forward(x))


def test_errors(tmp_path, rng):
    text, _ = toolbox_text(rng)
    cases = {
        "bad_int.txt": text.replace("Convolution 3 3 2 4 1 1", "Convolution 3 x 2 4 1 1"),
        "short_w.txt": text.replace("Linear 5 3\n", "Linear 5 4\n"),
        "nan.txt": text.replace("Tanh\nLinear 5 3\n", "Tanh\nLinear 5 3\nnan "),
        "empty.txt": "\n",
        "binary.txt": "\x00\xff\xfe",
    }
    for name, content in cases.items():
        (tmp_path / name).write_text(content, encoding="latin-1")
        with pytest.raises(ModelFormatError, match=name):
            load_lrp_toolbox(str(tmp_path / name), input_shape=(2, 13, 10))
    (tmp_path / "unknown.txt").write_text("Sigmoid\n\n")
    with pytest.raises(UnsupportedLayerError, match="unknown layer 'Sigmoid'"):
        load_lrp_toolbox(str(tmp_path / "unknown.txt"))
    (tmp_path / "m.txt").write_text(text)
    with pytest.raises(ShapeError, match="input_shape"):
        load_lrp_toolbox(str(tmp_path / "m.txt"))
    with pytest.raises(UnsupportedLayerError, match="padding"):
        save_lrp_toolbox(L.Sequential(L.Conv2d(1, 2, 3, padding=1)), str(tmp_path / "x.txt"))
    with pytest.raises(UnsupportedLayerError):
        save_lrp_toolbox(L.Sequential(L.BatchNorm2d(2)), str(tmp_path / "x.txt"))
    with pytest.raises(LRPError):
        load_lrp_toolbox(str(tmp_path / "missing.txt"))
