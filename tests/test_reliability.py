"""Every case of the reliability issue: no crash, no silent wrong answer, no NaN from finite input,
every bad input a clear error of lrpnumpy's own types."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import kernels, methods as M
from lrpnumpy.errors import (DTypeError, LayerParameterError, LRPError, ModelFormatError, NonFiniteError,
                             RuleParameterError, SaveError, ShapeError, UnsupportedLayerError)

# ----- crashes: kernel entries check the shapes they index -----


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_max_pool_kernels_refuse_mismatched_winners(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    previous = kernels.set_backend(backend)
    try:
        x = np.ones((1, 4, 2, 2))
        y, idx = kernels.max_pool2d(x, 2, 2, 2, 2, (0, 0, 0, 0))
        with pytest.raises(ShapeError, match="max_pool2d_grad"):
            kernels.max_pool2d_grad(np.ones((1000, 1, 1, 1)), idx, 2, 2, 2, 2, 2, 2, (0, 0, 0, 0))
        with pytest.raises(ShapeError, match="winners"):
            kernels.max_pool2d_grad(np.ones((1, 4, 1, 1)), idx + 7, 2, 2, 2, 2, 2, 2, (0, 0, 0, 0))
        with pytest.raises(ShapeError, match="max_pool2d_gather"):
            kernels.max_pool2d_gather(np.ones((1, 3, 2, 2)), idx, 2, 2, 2, 2, (0, 0, 0, 0))
        with pytest.raises(ShapeError, match="conv2d"):
            kernels.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 2, 3, 3)), 1, 1, (0, 0, 0, 0), 1, 1, 1)
        with pytest.raises(ShapeError, match="conv2d_grad_input"):
            kernels.conv2d_grad_input(np.ones((1, 2, 9, 9)), np.ones((2, 3, 3, 3)), 5, 5, 1, 1, (0, 0, 0, 0), 1, 1, 1)
    finally:
        kernels.set_backend(previous)


def test_max_pool_backward_with_a_foreign_gradient_is_an_error():
    mp = L.MaxPool2d(2)
    _, step = mp.forward_trace(np.ones((1, 1000, 2, 2)))
    with pytest.raises(ShapeError):
        mp.backward(np.ones((1000, 1, 1, 1)), step)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_backends_agree_on_nan(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    x = np.array([[[[1.0, np.nan], [3.0, 2.0]]]])
    previous = kernels.set_backend(backend)
    try:
        y, idx = kernels.max_pool2d(x, 2, 2, 2, 2, (0, 0, 0, 0))
    finally:
        kernels.set_backend(previous)
    assert np.isnan(y).all() and idx.ravel().tolist() == [1]  # the first NaN wins, as numpy's argmax


# ----- silent wrong answers -----

def test_relevance_of_the_wrong_shape_never_broadcasts(rng):
    lin = L.Linear(3, 4)
    _, step = lin.forward_trace(rng.random((2, 3)))
    with pytest.raises(ShapeError):
        L.Epsilon().relevance(step, np.ones((2, 1)))


def test_rules_by_index_are_checked(rng):
    net = L.Sequential(L.Linear(3, 3), L.ReLU(), L.Linear(3, 2))
    with pytest.raises(RuleParameterError, match="out of range"):
        L.explain(net, rng.random((1, 3)), rule={5: L.Epsilon()})


# ----- NaN or inf from finite input -----

def test_avg_pool_windows_in_the_padding_average_to_zero(rng):
    pool = L.AvgPool2d(2, padding=(1, 1, 1, 1), count_include_pad=False, stride=3)
    x = rng.random((1, 1, 2, 2))
    y = pool.forward(x)
    assert np.isfinite(y).all()
    net = L.Sequential(L.AvgPool2d(3, padding=2, stride=2, count_include_pad=False), L.Flatten(),
                       L.Linear(4, 2))
    e = L.explain(net, rng.random((1, 1, 2, 2)), relevance_out=np.ones((1, 2)))
    assert np.isfinite(e.relevance).all()


def test_max_pool_windows_entirely_in_the_padding_are_refused():
    with pytest.raises(ShapeError, match="every tap in the padding"):
        L.MaxPool2d(2, stride=1, padding=2, dilation=3).forward(np.ones((1, 1, 1, 1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stabilize_is_z_plus_epsilon_times_the_sign_of_z(dtype):
    """stabilize() against its definition ``z + eps (1[z >= 0] - 1[z < 0])``, bit for bit, on both
    zeros, infinities, NaN, denormals and the largest numbers (sign(0) = +1, -0.0 too)."""
    info = np.finfo(dtype)
    z = np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, info.tiny / 4, -info.tiny / 4, info.max, -info.max, 3.0,
                  -3.0, 1e-7, -1e-7], dtype)
    for eps in (0.0, 1e-6, 0.25):
        e = dtype(eps)
        want = z + np.where(z >= 0, e, -e)
        if eps == 0:
            want[want == 0] = np.inf
        got = L.stabilize(z, eps)
        assert got.dtype == z.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got[~np.isnan(got)]), np.signbit(want[~np.isnan(want)]))


@pytest.mark.parametrize("dtype, eps", [(np.float32, 1e-50), (np.float64, 1e-320), (np.float32, 1e-40)])
def test_a_stabilizer_that_underflows_is_refused(dtype, eps, rng):
    net = L.Sequential(L.Linear(3, 2)).astype(dtype)
    with pytest.raises(RuleParameterError, match="smallest normal"):
        L.explain(net, np.zeros((1, 3), dtype), rule=L.Epsilon(eps), relevance_out=np.ones((1, 2), dtype))


def test_parameters_that_do_not_fit_the_dtype_are_refused(rng):
    net = L.Sequential(L.Conv2d(1, 2, 2), L.ReLU(), L.Flatten(), L.Linear(2 * 2 * 2, 2)).astype(np.float32)
    x = rng.random((1, 1, 3, 3)).astype(np.float32)
    with pytest.raises(RuleParameterError, match="does not fit in float32"):
        L.explain(net, x, composite=L.Composite([(L.Conv2d, L.Gamma(1e39))]))
    with pytest.raises(DTypeError, match="beyond the largest float32"):
        big = L.Linear(2, 2)
        big.weight = np.full((2, 2), 1e200)
        big.astype(np.float32)


def test_overflow_is_reported_not_returned(rng):
    net = L.Sequential(L.Linear(4, 4, rng=0), L.ReLU(), L.Linear(4, 2, rng=1)).astype(np.float32)
    x = np.full((1, 4), 3e38, np.float32)
    with pytest.raises(NonFiniteError, match="overflowed at layer"):
        L.explain(net, x)
    with pytest.raises(NonFiniteError):
        M.gradient(net, x)
    net64 = L.Sequential(L.Linear(4, 4, rng=0), L.ReLU(), L.Linear(4, 2, rng=1))
    net64[0].weight = net64[0].weight * 1e200
    net64[2].weight = net64[2].weight * 1e200
    with pytest.raises(NonFiniteError):
        L.explain(net64, rng.random((1, 4)) + 1)
    small = L.Sequential(L.Linear(4, 2, rng=0))
    with pytest.raises(NonFiniteError, match="relevance overflowed"):
        L.explain(small, rng.random((1, 4)) * 1e-300, rule=L.Epsilon(0), relevance_out=np.full((1, 2), 1e308))


def test_non_finite_weights_are_refused_when_assigned(rng):
    lin = L.Linear(3, 2)
    with pytest.raises(NonFiniteError, match="weight of Linear"):
        lin.weight = np.full((2, 3), np.nan)
    with pytest.raises(ShapeError, match="expected \\(2, 3\\)"):
        lin.weight = np.ones((3, 3))
    with pytest.raises(DTypeError):
        lin.weight = np.ones((2, 3), np.float16)
    with pytest.raises(DTypeError):
        lin.weight = [[1.0, 2.0, 3.0]] * 2
    bn = L.BatchNorm2d(2)
    with pytest.raises(NonFiniteError, match="running_var"):
        bn.running_var = np.array([1.0, -1.0])
    lin.weight[0, 0] = np.nan  # changed in place: the explanation says so instead of returning NaN
    with pytest.raises(NonFiniteError):
        L.explain(L.Sequential(lin), rng.random((1, 3)))


# ----- foreign exceptions become lrpnumpy errors -----

@pytest.mark.parametrize("make", [
    lambda: L.Conv2d(1, 1, kernel_size=2.0), lambda: L.Conv2d(1, 1, 3, padding=None), lambda: L.MaxPool2d(None),
    lambda: L.Linear(2, 2, rng="abc"), lambda: L.Softmax(axis="a"), lambda: L.Softmax(axis=1.7),
    lambda: L.Conv2d(1, 1, 3, stride="2"), lambda: L.Conv2d(1, 1, (3, 3, 3)), lambda: L.Conv2d(True, 1, 3),
    lambda: L.Linear(2, 2 ** 40), lambda: L.AvgPool2d(2, padding=-1), lambda: L.Dropout(None),
    lambda: L.BatchNorm2d(2.5), lambda: L.LRN(0), lambda: L.SumPool2d(2, scale=float("nan")),
])
def test_bad_layer_arguments(make):
    with pytest.raises(LayerParameterError):
        make()


@pytest.mark.parametrize("make", [
    lambda: L.ZBox("a", 1), lambda: L.Composite({"Linear": L.Epsilon()}), lambda: L.Composite([(L.Linear,)]),
    lambda: L.Composite(index_map=[L.Epsilon()]), lambda: L.Composite(index_map={True: L.Epsilon()}),
    lambda: L.Rho("square"),
])
def test_bad_rule_arguments(make):
    with pytest.raises(RuleParameterError):
        make()


def test_bad_method_arguments(rng):
    net = L.Sequential(L.Linear(3, 2))
    x = rng.random((2, 3))
    with pytest.raises(RuleParameterError, match="alphas"):
        M.integrated_gradients(net, x, alphas=[])
    with pytest.raises(RuleParameterError, match="alphas"):
        M.integrated_gradients(net, x, alphas=[np.nan])
    with pytest.raises(NonFiniteError):
        M.smoothgrad(net, x, n=2, noise=np.full((1, 2, 3), np.nan))
    with pytest.raises(RuleParameterError, match="noise_level"):
        M.smoothgrad(net, x, n=2, noise_level=np.nan)
    with pytest.raises(DTypeError, match="baseline"):
        M.integrated_gradients(net, x, baseline=np.zeros((2, 3), np.float32))
    e = L.explain(net, x[:0])  # an empty batch is an empty explanation (tests below), not an error
    assert e.relevance.shape == (0, 3) and e.output.shape == (0, 2)
    with pytest.raises(UnsupportedLayerError):
        L.explain(net, x, composite=L.Composite([(L.Linear, L.Pass())]))


def test_padding_that_needs_too_much_memory_is_an_lrpnumpy_error():
    conv = L.Conv2d(1, 1, 1, padding=10 ** 6)
    with pytest.raises(LRPError):
        conv.forward(np.ones((1, 1, 1, 1)))


# ----- saving -----

def test_saving_keeps_mode_follows_links_and_leaves_no_temporary_files(tmp_path, rng):
    net = L.Sequential(L.Linear(3, 2, rng=0))
    path = tmp_path / "m.npz"
    L.io.save(net, path)
    os.chmod(path, 0o644)
    L.io.save(net, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    link = tmp_path / "link.npz"
    link.symlink_to(path)
    L.io.save(net, link)
    assert link.is_symlink() and L.io.load(link)[0].weight.shape == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "m.npz"]


def test_saving_errors_are_lrpnumpy_errors(tmp_path, monkeypatch):
    import errno
    net = L.Sequential(L.Linear(3, 2, rng=0))
    with pytest.raises(SaveError, match="cannot be written"):
        L.io.save(net, tmp_path / "missing" / "m.npz")
    with pytest.raises(SaveError, match="is a directory"):
        L.io.save(net, tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(SaveError, match="not a regular file"):  # never replace a device node
            L.io.save_lrp_toolbox(net, "/dev/null")
    L.io.save(net, tmp_path / "kept.npz")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(SaveError, match="No space left"):
        L.io.save(net, tmp_path / "kept.npz")
    monkeypatch.undo()
    assert L.io.load(tmp_path / "kept.npz")[0].weight.shape == (2, 3)  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.npz"]
    net[0].weight[0, 0] = np.nan  # in place, after the check on assignment
    with pytest.raises(NonFiniteError):
        L.io.save(net, tmp_path / "nan.npz")
    assert not (tmp_path / "nan.npz").exists()


def test_a_killed_save_leaves_at_most_one_partial_file(tmp_path):
    code = ("import os, signal, numpy as np, lrpnumpy as L\n"
            "net = L.Sequential(L.Linear(300, 300, rng=0))\n"
            "import lrpnumpy.io._common as c\n"
            "real = np.savez\n"
            "def slow(f, **kw):\n"
            "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "np.savez = slow\n"
            f"L.io.save(net, {str(tmp_path / 'm.npz')!r})\n")
    for _ in range(3):
        subprocess.run([sys.executable, "-c", code], capture_output=True)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".m.npz.lrpnumpy-partial")
    L.io.save(L.Sequential(L.Linear(3, 2)), tmp_path / "m.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


# ----- hostile and damaged model files -----

def _native(tmp_path, arch, arrays=None):
    import json
    path = tmp_path / "hostile.npz"
    np.savez(path, __architecture__=np.array(json.dumps(arch)), **(arrays or {}))
    return path


def test_native_files_that_declare_what_they_do_not_hold(tmp_path):
    big = {"format": "lrpnumpy", "version": 1, "input_shape": [20000],
           "layers": [{"type": "Linear", "args": {"in_features": 20000, "out_features": 20000, "bias": True},
                       "params": []}]}
    with pytest.raises(ModelFormatError, match="none of its parameters"):
        L.io.load(_native(tmp_path, big))
    for bad, match in [(dict(big, version=7), "version 7"), (dict(big, input_shape=[-1, 3]), "input_shape"),
                       (dict(big, input_shape=[10 ** 6, 10 ** 6, 10 ** 6]), "input_shape"),
                       (dict(big, layers=[]), "no layers")]:
        with pytest.raises(ModelFormatError, match=match):
            L.io.load(_native(tmp_path, bad))
    wrong = dict(big, layers=[{"type": "Linear", "args": {"in_features": 2, "out_features": 2, "bias": False},
                               "params": ["weight"]}])
    with pytest.raises(ModelFormatError, match="holds NaN"):
        L.io.load(_native(tmp_path, wrong, {"layer0.weight": np.full((2, 2), np.nan)}))
    with pytest.raises(ModelFormatError, match="has shape"):
        L.io.load(_native(tmp_path, wrong, {"layer0.weight": np.ones((3, 2))}))


def test_a_compressed_native_file_that_unpacks_beyond_memory_is_refused(tmp_path, monkeypatch):
    import lrpnumpy.io.native as native
    net = L.Sequential(L.Linear(300, 300, rng=0))
    path = tmp_path / "m.npz"
    L.io.save(net, path)
    monkeypatch.setattr(native, "memory_budget", lambda: 100_000)  # the 720 kB of weights are "too much" now
    with pytest.raises(ModelFormatError, match="more than this machine has"):
        L.io.load(path)


def test_onnx_poison_is_refused():
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    def gemm_model(alpha=1.0, beta=1.0, b=None, constant=None, shape=(1, 3)):
        inits = [numpy_helper.from_array(np.ones((2, 3), np.float32), "B"),
                 numpy_helper.from_array(np.ones(2, np.float32) if b is None else b, "C")]
        nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["y"], alpha=alpha, beta=beta, transB=1)]
        if constant is not None:
            nodes.insert(0, constant)
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, list(shape))],
                                  [helper.make_tensor_value_info("y", 1, None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    for kwargs in (dict(alpha=float("nan")), dict(alpha=1e39), dict(beta=float("inf"))):
        with pytest.raises(ModelFormatError):
            L.io.load_onnx(gemm_model(**kwargs))
    cos = helper.make_node("ConstantOfShape", ["s"], ["big"])
    graph = helper.make_graph([helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(
        np.array([20000, 20000], np.int64))), cos, helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", 1, [1, 3])], [helper.make_tensor_value_info("y", 1, None)])
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:  # what the process has mapped already (torch, if an earlier test loaded it)
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (4 << 30), hard))  # a 4.8 GB constant must not be made
    try:
        net = L.io.load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
        assert [type(layer).__name__ for layer in net] == ["ReLU"]  # the unused constant cost nothing
        graph.node.append(helper.make_node("MatMul", ["y", "big"], ["z"]))
        graph.output[0].name = "z"
        graph.node[2].output[0] = "y"
        with pytest.raises(ModelFormatError, match="more than this machine has|fits in memory|max_elements"):
            L.io.load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    nan_const = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([np.nan], np.float32)))
    with pytest.raises(ModelFormatError, match="NaN"):
        L.io.load_onnx(gemm_model(constant=nan_const))
    empty = helper.make_graph([], "g", [helper.make_tensor_value_info("x", 1, [1, 3])],
                              [helper.make_tensor_value_info("x", 1, None)])
    with pytest.raises(ModelFormatError):
        L.io.load_onnx(helper.make_model(empty, opset_imports=[helper.make_opsetid("", 13)]))
    # a huge declared input is never run at load time
    net = L.io.load_onnx(gemm_model(shape=(1, 3)))
    assert net.input_shape == (3,)


def test_onnx_batchnorm_with_negative_variance_is_refused():
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper
    inits = [numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")] + [
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in
        dict(s=np.ones(2), b=np.zeros(2), m=np.zeros(2), v=np.array([1.0, -1.0])).items()]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 1, 10000, 10000])],
                              [helper.make_tensor_value_info("y", 1, None)], inits)
    with pytest.raises(ModelFormatError, match="running_var"):
        L.io.load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_deeply_nested_prototxt_is_a_format_error(tmp_path):
    pytest.importorskip("google.protobuf")
    (tmp_path / "deep.prototxt").write_text("layer { " * 5000 + "}" * 5000)
    (tmp_path / "w.caffemodel").write_bytes(b"")
    with pytest.raises(ModelFormatError):
        L.io.load_caffe(str(tmp_path / "deep.prototxt"), str(tmp_path / "w.caffemodel"))


# ----- the command line -----

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lrpnumpy", *args], capture_output=True, text=True, cwd=cwd)


def test_command_line_bad_input_is_exit_2_and_one_line(tmp_path):
    net = L.Sequential(L.Linear(3, 2, rng=0), input_shape=(3,))
    L.io.save(net, tmp_path / "m.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("1 2 3")
    huge = _native(tmp_path, {"format": "lrpnumpy", "version": 1, "input_shape": [1 << 30, 1 << 30],
                              "layers": [{"type": "ReLU", "args": {}, "params": []}]})
    for args in (["--input", str(tmp_path / "obj.npy")], ["--input", str(tmp_path / "text.npy")],
                 ["--batch", "-1"], ["--batch", "x"]):
        r = _cli("verify", str(tmp_path / "m.npz"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    r = _cli("verify", str(huge))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "input_shape" in r.stderr


# ----- empty batches: an empty result of the right shape and dtype everywhere, on both backends -----

BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("numba") is None, reason="numba is not installed"))]

#: Every layer kind: (layer, shape of one sample, or shapes of each input's sample for several inputs).
EMPTY_LAYERS = {
    "Linear": (lambda: L.Linear(5, 3, rng=0), (5,)),
    "Conv2d": (lambda: L.Conv2d(2, 4, 3, padding=1, rng=0), (2, 6, 6)),
    "ReLU": (lambda: L.ReLU(), (2, 6, 6)), "Tanh": (lambda: L.Tanh(), (3,)), "Softmax": (lambda: L.Softmax(), (4,)),
    "MaxPool2d": (lambda: L.MaxPool2d(3, stride=2, padding=1), (2, 6, 6)),
    "SumPool2d": (lambda: L.SumPool2d(2), (2, 6, 6)),
    "AvgPool2d": (lambda: L.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 6, 6)),
    "GlobalAvgPool2d": (lambda: L.GlobalAvgPool2d(), (2, 6, 6)), "BatchNorm2d": (lambda: L.BatchNorm2d(2), (2, 6, 6)),
    "LRN": (lambda: L.LRN(3), (2, 6, 6)), "Flatten": (lambda: L.Flatten(), (2, 6, 6)),
    "Dropout": (lambda: L.Dropout(), (2, 6, 6)), "ChannelAffine": (lambda: L.ChannelAffine(2), (2, 6, 6)),
    "ChannelShuffle": (lambda: L.ChannelShuffle(2), (4, 6, 6)),
    "Add": (lambda: L.Add([1.0, -2.0]), [(2, 6, 6), (2, 6, 6)]), "Concat": (lambda: L.Concat(), [(2, 6, 6), (3, 6, 6)]),
    "Hardtanh": (lambda: L.Hardtanh(-1.0, 2.0), (2, 6, 6)), "ReLU6": (lambda: L.ReLU6(), (2, 6, 6)),
    "LeakyReLU": (lambda: L.LeakyReLU(0.1), (2, 6, 6)),
    "AdaptiveAvgPool2d": (lambda: L.AdaptiveAvgPool2d((4, 3)), (2, 6, 6)),
    "LayerNorm": (lambda: L.LayerNorm(4), (5, 4)), "RMSNorm": (lambda: L.RMSNorm(4), (5, 4)),
    "GELU": (lambda: L.GELU(), (5, 4)), "SiLU": (lambda: L.SiLU(), (5, 4)),
    "MatMul": (lambda: L.MatMul(), [(5, 4), (4, 3)]), "Mul": (lambda: L.Mul(), [(5, 4), (5, 4)]),
    "MultiheadAttention": (lambda: L.MultiheadAttention(4, 2, rng=0), (5, 4)),
    "SplitHeads": (lambda: L.layers.attention.SplitHeads(2), (5, 4)),
    "MergeHeads": (lambda: L.layers.attention.MergeHeads(), (2, 5, 2)),
    "Scale": (lambda: L.layers.attention.Scale(0.5), (5, 4)),
    "CausalMask": (lambda: L.layers.attention.CausalMask(), (2, 5, 5)),
    "Embedding": (lambda: L.Embedding(5, 3, rng=0), (6,)),  # (ones: token id 1)
    "Transpose": (lambda: L.Transpose((0, 2, 1)), (2, 6)), "Sigmoid": (lambda: L.Sigmoid(), (2, 6)),
    "Conv1d": (lambda: L.Conv1d(2, 4, 3, padding=1, rng=0), (2, 6)), "MaxPool1d": (lambda: L.MaxPool1d(2), (2, 6)),
    "AvgPool1d": (lambda: L.AvgPool1d(3, 2, 1), (2, 6)), "SumPool1d": (lambda: L.SumPool1d(2), (2, 6)),
    "GlobalMaxPool1d": (lambda: L.GlobalMaxPool1d(), (2, 6)),
    "LSTM": (lambda: L.LSTM(3, 2, bidirectional=True, rng=0), (4, 3)),
    "GRU": (lambda: L.GRU(3, 2, output="last", rng=0), (4, 3)),
    "TransformerEncoderLayer": (lambda: L.TransformerEncoderLayer(4, 2, 6, rng=0), (5, 4)),
    "SwiGLUBlock": (lambda: L.SwiGLUBlock(4, 6, rng=0), (5, 4)),
    "PatchEmbedding": (lambda: L.PatchEmbedding(2, 4, 3, rng=0), (2, 6, 6)),
    "ToTokens": (lambda: L.layers.ToTokens(), (2, 6, 6)), "ClassToken": (lambda: L.ClassToken(4, rng=0), (5, 4)),
    "PositionEmbedding": (lambda: L.PositionEmbedding(5, 4, rng=0), (5, 4)),
    "SelectToken": (lambda: L.SelectToken(0), (5, 4)),
}


def test_every_layer_kind_has_an_empty_batch_case():
    assert set(EMPTY_LAYERS) == set(L.Layer.registry)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", sorted(EMPTY_LAYERS))
def test_every_layer_takes_an_empty_batch(kind, dtype, backend):
    """Forward, traced forward, backward and parameter gradients of 0 samples: empty arrays of the shapes
    and dtype of a batch of 2 (before, the numba convolution and Flatten raised a foreign ValueError)."""
    make, shape = EMPTY_LAYERS[kind]
    layer = make()
    layer = layer.astype(dtype) if layer.params else layer
    shapes = shape if isinstance(shape, list) else [shape]
    previous = kernels.set_backend(backend)
    try:
        two = [np.ones((2,) + s, dtype) for s in shapes]
        y2 = layer.forward(*two)
        empty = [np.ones((0,) + s, dtype) for s in shapes]
        y, step = layer.forward_trace(*empty)
        assert y.shape == (0,) + y2.shape[1:] and y.dtype == dtype
        assert layer.forward(*empty).shape == y.shape
        g = layer.backward(np.zeros_like(y), step)
        for gi, s in zip(g if isinstance(g, tuple) else (g,), shapes):
            assert gi.shape == (0,) + s and gi.dtype == dtype
        for name, pg in layer.param_grads(np.zeros_like(y), step).items():
            if pg is not None:
                assert pg.shape == getattr(layer, name).shape and not pg.any()
    finally:
        kernels.set_backend(previous)


def _empty_cnn(dtype):
    return L.Sequential(L.Conv2d(1, 4, 3, padding=1, rng=0), L.ReLU(), L.MaxPool2d(2), L.Conv2d(4, 4, 3, rng=1),
                        L.ReLU(), L.AvgPool2d(2), L.Flatten(), L.Linear(4, 3, rng=2)).astype(dtype)


def _empty_graph(dtype):
    return L.Graph([("a", L.Conv2d(1, 2, 3, padding=1, rng=0), "input"), ("b", L.Conv2d(1, 2, 1, rng=1), "input"),
                    ("add", L.Add(), ["a", "b"]), ("relu", L.ReLU(), "add"), ("cat", L.Concat(), ["relu", "a"]),
                    ("gap", L.GlobalAvgPool2d(), "cat"), ("flat", L.Flatten(), "gap"),
                    ("fc", L.Linear(4, 3, rng=2), "flat")]).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make", [_empty_cnn, _empty_graph])
def test_every_composite_and_method_explains_an_empty_batch(make, dtype, backend):
    """explain (every composite, a rule, relevance_out) and every method of methods.REGISTRY: relevance
    (0, 1, 8, 8) of x's dtype, output (0, 3), an empty conservation report."""
    from lrpnumpy import composites
    net = make(dtype)
    x = np.zeros((0, 1, 8, 8), dtype)
    data = np.random.default_rng(0).random((4, 1, 8, 8)).astype(dtype)
    previous = kernels.set_backend(backend)
    try:
        runs = {f"composite {name}": lambda name=name: L.explain(net, x, composite=composites.get(name, bounds=(0, 1)))
                for name in composites.REGISTRY}
        runs["rule"] = lambda: L.explain(net, x, rule=L.AlphaBeta(2, 1))
        runs["relevance_out"] = lambda: L.explain(net, x, relevance_out=np.zeros((0, 3), dtype))
        patterns = M.fit_patterns(net, data) if make is _empty_cnn else None
        options = {"pattern_net": dict(patterns=patterns), "pattern_attribution": dict(patterns=patterns),
                   "occlusion": dict(window=2, stride=2), "integrated_gradients": dict(n=2),
                   "smoothgrad": dict(n=2, rng=0), "simple_taylor": dict(root="search", steps=4),
                   "grad_cam": dict(upsample="bilinear")}
        for name, method in M.REGISTRY.items():
            if name.startswith("pattern") and patterns is None:
                continue  # patterns are fitted for Sequential networks
            if name in ("attention_rollout", "raw_attention"):
                continue  # they need attention layers: tests/test_transformer_blocks.py explains an empty batch
            runs[name] = lambda method=method, name=name: method(net, x, target=1, **options.get(name, {}))
        for name, run in runs.items():
            e = run()
            assert e.relevance.shape[-4:] == (0, 1, 8, 8) and e.relevance.dtype == dtype, name
            assert e.output.shape == (0, 3) and e.output.dtype == dtype, name
            if e.method == "lrp":
                report = e.conservation()
                assert len(report) == len(net) and all(r["relevance_in"].shape == (0,) for r in report), name
                assert len(e.layers) == len(net) + 1 and e.layers[-1].shape == (0, 3), name
                str(report)
    finally:
        kernels.set_backend(previous)


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_of_an_empty_batch_are_empty_and_a_comparison_is_refused(backend):
    """Per-sample metrics give empty per-sample scores; compare (means over the samples) refuses an
    empty batch with a ShapeError saying so."""
    from lrpnumpy import evaluate as E
    net = _empty_cnn(np.float64)
    x, R = np.zeros((0, 1, 8, 8)), np.zeros((0, 1, 8, 8))
    previous = kernels.set_backend(backend)
    try:
        for incremental in (True, False):
            r = E.pixel_flipping(net, x, R, features_per_step=8, incremental=incremental)
            assert r.curves.shape == (0, 9) and r.aopc().shape == (0,) and r.auc().shape == (0,)
            assert r.fractions.shape == (9,) and r.target.shape == (0,) and "0 samples" in repr(r)
        assert E.region_perturbation(net, x, R, patch=4).curves.shape == (0, 5)
        assert E.selectivity(net, x, R).curves.shape == (0, 5)
        c = E.continuity(net, M.gradient, x, [(0, 1), (1, 0)])
        assert c["continuity"].shape == (0,) and c["f"].shape == (0, 3) and c["sum_relevance"].shape == (0, 3)
        s = E.class_sensitivity(net, M.gradient, x)
        assert s["similarity"].shape == (0, 3, 3) and s["sensitivity"].shape == (0,)
        assert E.randomization_check(net, M.gradient, x)["similarity"].shape == (3, 0)
        assert E.context(R, np.ones((8, 8), bool)).shape == (0,)
        assert E.similarity(R, R).shape == (0,)
        with pytest.raises(ShapeError, match="empty batch"):
            E.compare(net, x, {"gradient": M.gradient}, metrics=tuple(E.METRICS))
    finally:
        kernels.set_backend(previous)


def test_training_on_an_empty_batch_is_refused_and_predicting_it_is_empty():
    net = L.Sequential(L.Linear(3, 2, rng=0))
    with pytest.raises(ShapeError, match="nothing to train"):
        L.train.fit(net, np.zeros((0, 3)), np.zeros(0, int), epochs=1, progress=False)
    p = L.train.predict(net, np.zeros((0, 3)))
    assert p.shape == (0,) and p.dtype == np.int64
    with pytest.raises(ShapeError, match="empty batch"):
        L.train.accuracy(net, np.zeros((0, 3)), np.zeros(0, int))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_kernel_takes_an_empty_batch(backend):
    """Each kernel entry on 0 samples returns what the NumPy reference does on 0 samples: empty arrays of
    the shapes a batch of 1 has after its first axis (zero weight gradients), of the input's dtype."""
    p = (1, 0, 1, 1)
    x, w = np.ones((0, 2, 6, 5), np.float32), np.ones((4, 2, 3, 3), np.float32)
    previous = kernels.set_backend(backend)
    try:
        y = kernels.conv2d(x, w, 2, 1, p, 1, 1, 1)
        assert y.shape == (0, 4, 3, 5) and y.dtype == np.float32
        gx = kernels.conv2d_grad_input(y, w, 6, 5, 2, 1, p, 1, 1, 1)
        assert gx.shape == x.shape and gx.dtype == np.float32
        gw = kernels.conv2d_grad_weight(x, y, 3, 3, 2, 1, p, 1, 1, 1)
        assert gw.shape == w.shape and not gw.any()
        s = kernels.sum_pool2d(x, 2, 2, 2, 2, p)
        assert s.shape == (0, 2, 3, 3) and kernels.sum_pool2d_grad(s, 6, 5, 2, 2, 2, 2, p).shape == x.shape
        m, idx = kernels.max_pool2d(x, 2, 2, 2, 2, p)
        assert m.shape == (0, 2, 3, 3) and idx.shape == m.shape
        assert kernels.max_pool2d_values(x, 2, 2, 2, 2, p).shape == m.shape
        assert kernels.max_pool2d_gather(x, idx, 2, 2, 2, 2, p).shape == m.shape
        assert kernels.max_pool2d_grad(m, idx, 6, 5, 2, 2, 2, 2, p).shape == x.shape
        z = np.ones((0, 4, 3, 3))
        s2, sums, per_channel = kernels.lrp_step2(z, z, None, 1e-6, 4)
        assert s2.shape == z.shape and sums.shape == (0, 4) and per_channel.shape == (0, 4)
    finally:
        kernels.set_backend(previous)
