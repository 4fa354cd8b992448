"""Every loader, fed truncated and corrupted files: only lrpnumpy's own errors may come out."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import lrpnumpy as L
from lrpnumpy.errors import LRPError
from lrpnumpy.io import load_model


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    net = L.Sequential(L.Conv2d(1, 2, 3, rng=rng), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                       L.Linear(2 * 3 * 3, 3, rng=rng), L.Softmax(), input_shape=(1, 8, 8))
    files = {}
    L.io.save(net, d / "m.npz")
    files["native"] = (d / "m.npz", None)
    L.io.save_lrp_toolbox(net, d / "m.txt")
    files["toolbox"] = (d / "m.txt", None)
    try:
        import onnx  # noqa: F401
        from test_io_onnx import _chain_model
        from onnx import helper
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
        model = _chain_model(nodes, {"w": rng.normal(size=(2, 1, 3, 3)), "b": rng.normal(size=2),
                                     "fw": rng.normal(size=(3, 2 * 6 * 6))}, [1, 1, 8, 8], "y")
        (d / "m.onnx").write_bytes(model.SerializeToString())
        files["onnx"] = (d / "m.onnx", None)
    except ImportError:
        pass
    from test_io_caffe import PROTOTXT, params, write_caffemodel
    (d / "m.prototxt").write_text(PROTOTXT)
    write_caffemodel(d / "m.caffemodel", params(rng))
    files["caffe_weights"] = (d / "m.caffemodel", d / "m.prototxt")
    files["caffe_text"] = (d / "m.prototxt", d / "m.caffemodel")
    return files


def _corrupt(data, cut, flips, seed):
    rng = np.random.default_rng(seed)
    data = bytearray(data[: max(0, int(len(data) * cut))])
    for _ in range(flips if data else 0):
        i = int(rng.integers(len(data)))
        data[i] = int(rng.integers(256))
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["native", "toolbox", "onnx", "caffe_weights", "caffe_text"]),
       cut=st.floats(0, 1), flips=st.integers(0, 8), seed=st.integers(0, 2 ** 31))
def test_damaged_files_raise_only_lrpnumpy_errors(valid_files, tmp_path_factory, kind, cut, flips, seed):
    if kind not in valid_files:
        pytest.skip(f"{kind}: its package is not installed")
    path, other = valid_files[kind]
    damaged = tmp_path_factory.mktemp("damaged") / path.name
    damaged.write_bytes(_corrupt(path.read_bytes(), cut, flips, seed))
    try:
        net = load_model(damaged, other, input_shape=(1, 8, 8) if kind == "toolbox" else None)
    except LRPError:
        return
    # if it loaded, it is a whole network that runs (or refuses its input with our own errors)
    assert isinstance(net, L.Sequential)
    try:
        net.forward(np.zeros((1, 1, 8, 8), net.dtype or np.float64) if kind != "caffe_text" else
                    np.zeros((1, 2, 9, 9), net.dtype))
    except LRPError:
        pass


@pytest.mark.parametrize("kind", ["native", "toolbox", "onnx", "caffe_weights"])
def test_valid_files_load(valid_files, kind):
    if kind not in valid_files:
        pytest.skip(f"{kind}: its package is not installed")
    path, other = valid_files[kind]
    assert isinstance(load_model(path, other, input_shape=(1, 8, 8) if kind == "toolbox" else None), L.Sequential)
