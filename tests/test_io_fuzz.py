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


# ----- structurally valid but hostile files, loaded under an address-space limit -----

_HOSTILE_CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
import numpy as np
from lrpnumpy.io import load_model
from lrpnumpy.errors import LRPError
out = {}
for name, path, other in json.loads(sys.argv[1]):
    try:
        net = load_model(path, other)
        x = None
        out[name] = "loaded"
    except LRPError as exc:
        out[name] = type(exc).__name__
    except BaseException as exc:  # what the test looks for
        out[name] = f"FOREIGN {type(exc).__name__}: {exc}"
status = open("/proc/self/status").read()
out["peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) // 1024
print(json.dumps(out))
"""


def _hostile_native(d, rng, i):
    import json
    size = int(rng.choice([20000, 10 ** 6, 2 ** 31 - 1]))
    value = float(rng.choice([np.nan, np.inf, -1.0]))  # native files are float64: 1e39 is a number there
    family = i % 4
    arrays = {}
    if family == 0:  # a huge layer without its arrays
        layers = [{"type": "Linear", "args": {"in_features": size, "out_features": size, "bias": True},
                   "params": []}]
    elif family == 1:  # a huge declared layer with tiny arrays
        layers = [{"type": "Conv2d", "args": {"in_channels": 1, "out_channels": 1, "kernel_size": [size, size],
                                             "bias": False}, "params": ["weight"]}]
        arrays["layer0.weight"] = np.ones((1, 1, 2, 2))
    elif family == 2:  # poisoned values: NaN, infinity, negative variance
        layers = [{"type": "BatchNorm2d", "args": {"num_features": 2, "eps": 1e-5},
                   "params": ["weight", "bias", "running_mean", "running_var"]}]
        arrays = {f"layer0.{p}": np.ones(2) for p in ("weight", "bias", "running_mean", "running_var")}
        field = str(rng.choice(["weight", "running_var"]))
        arrays[f"layer0.{field}"] = np.array([1.0, value if field == "running_var" or value != -1.0 else np.nan])
    else:  # an absurd input shape
        layers = [{"type": "ReLU", "args": {}, "params": []}]
    arch = {"format": "lrpnumpy", "version": 1, "layers": layers,
            "input_shape": [max(size, 10 ** 6)] * 2 if family == 3 else None}
    path = d / f"native{i}.npz"
    np.savez(path, __architecture__=np.array(json.dumps(arch)), **arrays)
    return path, None


def _hostile_onnx(d, rng, i):
    from onnx import helper, numpy_helper
    size = int(rng.choice([40000, 100000]))
    family = i % 4
    value = float(rng.choice([np.nan, np.inf, 1e39] + ([-1.0] if family == 2 else [])))
    inits, extra, in_shape = [], {}, [1, 3]
    if family == 0:  # weights from a tiny ConstantOfShape node of absurd size
        in_shape = [1, size]
        nodes = [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([size, size],
                                                                                                  np.int64))),
                 helper.make_node("ConstantOfShape", ["s"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])]
    elif family == 1:  # non-finite or unrepresentable Gemm scalars
        inits = [numpy_helper.from_array(np.ones((2, 3), np.float32), "B")]
        extra = {str(rng.choice(["alpha", "beta"])): value}
        nodes = [helper.make_node("Gemm", ["x", "B", "B2"], ["y"], transB=1, **extra)]
        inits.append(numpy_helper.from_array(np.ones(2, np.float32), "B2"))
    elif family == 2:  # a batch norm with a poisoned variance after a conv on a huge declared input
        in_shape = [1, 1, size, size]
        inits = [numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")] + [
            numpy_helper.from_array(np.array([1.0, value if k == "v" else 1.0], np.float32), k) for k in "sbmv"]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
                 helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])]
    else:  # a poisoned constant bias
        inits = [numpy_helper.from_array(np.ones((3, 2), np.float32), "B")]
        nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
                     np.array([value, 1.0], np.float32))),
                 helper.make_node("MatMul", ["x", "B"], ["m"]), helper.make_node("Add", ["m", "k"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, in_shape)],
                              [helper.make_tensor_value_info("y", 1, None)], inits)
    path = d / f"hostile{i}.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path, None


def _hostile_caffe(d, rng, i):
    from test_io_caffe import blob
    from lrpnumpy.io.caffe import schema
    size = int(rng.choice([20000, 100000]))
    family = i % 3
    net = schema()["NetParameter"]()
    if family == 0:  # batch norm scale factor below 0 or too small for float32
        text = f'input: "data"\ninput_shape {{ dim: 1 dim: 2 dim: {size} dim: {size} }}\n' \
               'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
        lay = net.layer.add(name="bn", type="BatchNorm")
        for arr in (np.zeros(2), np.ones(2), np.array([float(rng.choice([-1.0, 1e-40]))])):
            blob(lay.blobs.add(), arr.astype(np.float32))
    elif family == 1:  # a blob that declares far more values than it holds
        text = 'input: "data"\ninput_shape { dim: 1 dim: 3 }\n' \
               'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { ' \
               f'num_output: {size} }} }}\n'
        lay = net.layer.add(name="fc", type="InnerProduct")
        b = lay.blobs.add()
        b.shape.dim.extend([size, size])
        b.data.extend([1.0, 2.0])
    else:  # global max pooling over a huge declared input
        text = f'input: "data"\ninput_shape {{ dim: 1 dim: 1 dim: {size} dim: {size} }}\n' \
               'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX ' \
               'global_pooling: true } }\n'
    (d / f"c{i}.prototxt").write_text(text)
    (d / f"c{i}.caffemodel").write_bytes(net.SerializeToString())
    return d / f"c{i}.prototxt", d / f"c{i}.caffemodel"


def test_hostile_files_are_refused_in_bounded_memory(tmp_path):
    """Absurd declared sizes, non-finite values, negative variances: lrpnumpy errors, under a 2 GB address limit."""
    import json
    import subprocess
    import sys
    pytest.importorskip("onnx")
    pytest.importorskip("google.protobuf")
    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        for make in (_hostile_native, _hostile_onnx, _hostile_caffe):
            with np.errstate(over="ignore"):  # 1e39 becomes inf in float32 on purpose
                path, other = make(tmp_path, rng, i)
            files.append((f"{make.__name__[9:]}{i}", str(path), None if other is None else str(other)))
    out = subprocess.run([sys.executable, "-c", _HOSTILE_CHILD, json.dumps(files)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    assert results.pop("peak_rss_mb") < 1024  # nothing the files declare was allocated
    foreign = {k: v for k, v in results.items() if v.startswith("FOREIGN")}
    assert not foreign, foreign
    loaded = sorted(k for k, v in results.items() if v == "loaded")
    # only the caffe global pooling over a huge declared input is a valid network (nothing is run at load time)
    assert all(k.startswith("caffe") and int(k[5:]) % 3 == 2 for k in loaded), {k: results[k] for k in loaded}


# ----- the red team's file classes (tests/hostile_files.py): refused fast, in little memory, with a short message -----

def test_every_hostile_class_is_refused_or_read_right(tmp_path):
    """Each class of tests/hostile_files.py, several variants each (benchmarks/fuzz.py --files runs many more)."""
    pytest.importorskip("onnx")
    import hostile_files as H
    found = {}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for make in H.CLASSES:
            d = tmp_path / f"{make.__name__}{seed}"
            d.mkdir()
            case = make(d, rng)
            outcome, seconds, peak, net = H.run(case)
            found[(case.name, seed)] = H.violation(case, outcome, seconds, peak, net, max_seconds=2.0, max_mb=8.0)
    assert not {k: v for k, v in found.items() if v}


def _native(tmp_path, meta=None, duplicate=None, shape=(3,)):
    import hostile_files as H
    arch = H._linear_arch(meta)
    arch["input_shape"] = None if shape is None else list(shape)
    path = tmp_path / "m.npz"
    H._native_file(path, arch, {"layer0.weight": np.ones((2, 3))}, duplicate)
    return path


def test_native_duplicate_archive_members_are_refused(tmp_path):
    from lrpnumpy.errors import ModelFormatError
    assert L.io.load(_native(tmp_path)).layers[0].weight.sum() == 6
    with pytest.raises(ModelFormatError, match="archive member 'layer0.weight.npy' appears 2 times"):
        L.io.load(_native(tmp_path, duplicate=("layer0.weight", -np.ones((2, 3)))))
    with pytest.raises(ModelFormatError, match="archive member '__architecture__.npy' appears 2 times"):
        L.io.load(_native(tmp_path, duplicate=("__architecture__", np.array("{}"))))


@pytest.mark.parametrize("meta, match", [
    ({"input_range": "ab"}, r"meta 'input_range' must be a list \[low, high\] of two finite numbers with low < high, "
                            r"got 'ab'"),
    ({"input_range": [1, 1]}, "meta 'input_range'"), ({"input_range": [0, 1, 2]}, "meta 'input_range'"),
    ({"input_range": [False, True]}, "meta 'input_range'"), ({"input_range": [0, 1e999]}, "meta 'input_range'"),
    ({"classes": "ab"}, r"meta 'classes' must be a list of class names \(strings\), got 'ab'"),
    ({"classes": ["a", 2]}, "meta 'classes'"),
    ({"classes": ["a"]}, r"meta 'classes' names 1 classes, but the network has 2 outputs \(shape \(2,\)\)"),
    ({"classes": ["a", "b", "c"]}, "meta 'classes' names 3 classes, but the network has 2 outputs"),
    ({"dataset": ["x"]}, "meta 'dataset' must be a string"),
    ({"test_accuracy": "0.9"}, "meta 'test_accuracy' must be a finite number"),
])
def test_native_meta_is_checked_at_load(tmp_path, meta, match):
    from lrpnumpy.errors import ModelFormatError
    with pytest.raises(ModelFormatError, match=match) as info:
        L.io.load(_native(tmp_path, meta))
    assert len(str(info.value)) < 400


def test_native_good_meta_loads(tmp_path):
    meta = {"input_range": [-1, 1.5], "classes": ["a", "b"], "dataset": "d", "test_accuracy": 0.5, "anything": [1]}
    assert L.io.load(_native(tmp_path, meta)).meta == meta
    assert L.io.load(_native(tmp_path, {"classes": ["a", "b", "c"]}, shape=None)).meta["classes"] == ["a", "b", "c"]
    for name in ("fashion_mlp", "fashion_cnn_maxpool", "fashion_cnn_sumpool"):  # the shipped models
        import os
        path = os.path.join(L.datasets.DATA_DIR, f"{name}.npz")
        assert len(L.io.load(path).meta["classes"]) == 10


def test_native_save_refuses_meta_that_load_would_refuse(tmp_path):
    from lrpnumpy.errors import ModelFormatError
    net = L.Sequential(L.Linear(3, 2), input_shape=(3,), meta={"classes": ["a"]})
    with pytest.raises(ModelFormatError, match="meta 'classes' names 1 classes"):
        L.io.save(net, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
