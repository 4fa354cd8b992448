"""lrpnumpy.io.native: the native format's exact round trip and its refusal of bad files."""

import os

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import ModelFormatError, UnsupportedLayerError


def mlp(rng):
    net = L.Sequential(L.Linear(6, 5, rng=rng), L.ReLU(), L.Linear(5, 3, rng=rng), L.Softmax())
    net[0].bias, net[2].bias = rng.normal(size=5), rng.normal(size=3)
    return net


def test_native_round_trip_is_exact(tmp_path, rng):
    bn = L.BatchNorm2d(3)
    bn.running_var = rng.random(3) + 0.5
    net = L.Sequential(L.Conv2d(2, 3, 3, stride=2, padding=(1, 0, 2, 1), groups=1, dilation=1, rng=rng), bn,
                       L.ReLU(), L.MaxPool2d(2), L.AvgPool2d(1), L.SumPool2d(1), L.Tanh(), L.Dropout(0.2),
                       L.Flatten(), L.Linear(3 * 2 * 2, 4, bias=False, rng=rng), L.Softmax(),
                       input_shape=(2, 9, 9))
    path = tmp_path / "m.npz"
    L.io.save(net, path)
    back = L.io.load(path)
    assert repr(back) == repr(net) and back.input_shape == (2, 9, 9)
    x = rng.normal(size=(2, 2, 9, 9))
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    f32 = net.astype(np.float32)
    L.io.save(f32, path)
    assert L.io.load(path)[0].weight.dtype == np.float32
    assert L.io.load(path, dtype=np.float64)[0].weight.dtype == np.float64
    assert not [f for f in os.listdir(tmp_path) if f != "m.npz"]  # no temporary file left behind


def test_native_bad_files(tmp_path, rng):
    good = tmp_path / "good.npz"
    L.io.save(mlp(rng), good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    for name in ("trunc.npz", "text.npz", "plain.npz", "missing.npz"):
        with pytest.raises(ModelFormatError, match=name):
            L.io.load(tmp_path / name)
    arrays = dict(np.load(good))
    arrays["layer0.weight"] = arrays["layer0.weight"][:, :2]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ModelFormatError, match=r"layer 0 \(Linear\): weight has shape"):
        L.io.load(tmp_path / "shape.npz")
    arrays = dict(np.load(good))
    arrays["layer2.bias"] = arrays["layer2.bias"] * np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ModelFormatError, match="finite"):
        L.io.load(tmp_path / "nan.npz")
    arrays = dict(np.load(good))
    arrays["__architecture__"] = np.array(str(arrays["__architecture__"]).replace("ReLU", "Swish"))
    np.savez(tmp_path / "unknown.npz", **arrays)
    with pytest.raises(UnsupportedLayerError, match="Swish"):
        L.io.load(tmp_path / "unknown.npz")
