"""ONNX loader against the onnx package's own conformance data and real models."""

import glob
import os
import warnings

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import LRPError, ModelFormatError, UnsupportedLayerError

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install -e '.[onnx]')")
from onnx import helper, numpy_helper  # noqa: E402

from lrpnumpy.io import load_onnx  # noqa: E402

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
PREFIXES = ("test_conv_", "test_maxpool_", "test_averagepool_", "test_gemm_", "test_relu", "test_softmax_",
            "test_flatten_", "test_batchnorm_", "test_globalaveragepool", "test_lrn", "test_dropout", "test_identity")

# Node test cases that must raise UnsupportedLayerError (what they need is outside the supported set).
UNSUPPORTED = {
    "3-D operators": ["test_averagepool_3d_default",
                      "test_averagepool_3d_dilations_small", "test_maxpool_3d_default",
                          "test_maxpool_3d_dilations", "test_maxpool_3d_dilations_use_ref_impl",
                          "test_maxpool_3d_dilations_use_ref_impl_large"]
    + [f"test_averagepool_3d_dilations_large_count_include_pad_is_{a}_ceil_mode_is_{b}"
       for a in (0, 1) for b in ("True", "False")],
    "training-mode batch norm": ["test_batchnorm_epsilon_training_mode", "test_batchnorm_example_training_mode"],
    "flattening into the batch axis": ["test_flatten_axis0", "test_flatten_axis2", "test_flatten_axis3",
                                       "test_flatten_negative_axis1", "test_flatten_negative_axis2",
                                       "test_flatten_negative_axis4"],
    "transposed data or a per-sample bias in Gemm": ["test_gemm_all_attributes", "test_gemm_transposeA",
                                                     "test_gemm_default_matrix_bias"],
    "second outputs (masks, argmax)": ["test_dropout_default_mask", "test_dropout_default_mask_ratio",
                                       "test_maxpool_with_argmax_2d_precomputed_pads",
                                       "test_maxpool_with_argmax_2d_precomputed_strides"],
    "non-float inputs": ["test_identity_opt", "test_identity_sequence", "test_maxpool_2d_uint8"],
}
EXPECTED_UNSUPPORTED = {name for names in UNSUPPORTED.values() for name in names}


def _node_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collecting every case runs NumPy code that warns
        from onnx.backend.test.case.node import collect_testcases
        cases = collect_testcases()
    return {c.name: c for c in cases if c.name.startswith(PREFIXES) and "expanded" not in c.name}


NODE_CASES = _node_cases()


def as_chain(case):
    """The node test's model with every input but the first turned into an initializer (weights)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, outputs = case.data_sets[0]
    graph = model.graph
    for info, value in zip(list(graph.input)[1:], inputs[1:]):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), info.name))
    del graph.input[1:]
    return model, inputs[0], outputs[0]


@pytest.mark.parametrize("name", sorted(NODE_CASES))
def test_onnx_node_conformance(name):
    case = NODE_CASES[name]
    model, x, expected = as_chain(case)
    if name in EXPECTED_UNSUPPORTED:
        with pytest.raises(UnsupportedLayerError, match="node|input|graph"):
            load_onnx(model).forward(np.asarray(x))
        return
    net = load_onnx(model)
    out = net.forward(np.asarray(x))
    assert out.dtype == np.asarray(expected).dtype
    # rtol 1e-5, or the case's own tolerance where its stored output is rounded (e.g. 4 digits)
    np.testing.assert_allclose(out, expected, rtol=max(1e-5, case.rtol), atol=max(1e-6, case.atol))


def test_every_listed_unsupported_case_exists():
    assert EXPECTED_UNSUPPORTED <= set(NODE_CASES)
    assert len(set(NODE_CASES) - EXPECTED_UNSUPPORTED) >= 50


def _read_tensor(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


PYTORCH_CONVERTED_SUPPORTED = [
    "test_AvgPool2d", "test_AvgPool2d_stride", "test_BatchNorm2d_eval", "test_BatchNorm2d_momentum_eval",
    "test_Conv2d", "test_Conv2d_depthwise", "test_Conv2d_depthwise_padded", "test_Conv2d_depthwise_strided",
    "test_Conv2d_depthwise_with_multiplier", "test_Conv2d_dilated", "test_Conv2d_groups", "test_Conv2d_groups_thnn",
    "test_Conv2d_no_bias", "test_Conv2d_padding", "test_Conv2d_strided", "test_Linear", "test_Linear_no_bias",
    "test_MaxPool2d", "test_MaxPool2d_stride_padding_dilation", "test_ReLU", "test_Softmax", "test_Tanh", "test_softmax_functional_dim3",
    "test_softmax_lastdim",
    # sequence models: 1-D convolution and pooling, embeddings (ids given as whole floats), Sigmoid
    "test_Conv1d", "test_Conv1d_dilated", "test_Conv1d_groups", "test_Conv1d_pad1", "test_Conv1d_pad1size1",
    "test_Conv1d_pad2", "test_Conv1d_pad2size1", "test_Conv1d_stride", "test_Embedding", "test_Embedding_sparse",
    "test_MaxPool1d", "test_MaxPool1d_stride", "test_Sigmoid"]


def _pytorch_converted():
    return sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(f"{DATA}/pytorch-converted/*/model.onnx"))


@pytest.mark.parametrize("name", _pytorch_converted())
def test_pytorch_converted_models(name):
    folder = f"{DATA}/pytorch-converted/{name}"
    if name not in PYTORCH_CONVERTED_SUPPORTED:
        with pytest.raises(UnsupportedLayerError):
            load_onnx(f"{folder}/model.onnx")
        return
    net = load_onnx(f"{folder}/model.onnx")
    x, y = _read_tensor(f"{folder}/test_data_set_0/input_0.pb"), _read_tensor(f"{folder}/test_data_set_0/output_0.pb")
    x = x if x.dtype.kind == "f" else x.astype(np.float32)  # token ids: networks take whole floats
    np.testing.assert_allclose(net.forward(x), y, rtol=1e-5, atol=1e-6)


LIGHT_CHAINS = ["light_bvlc_alexnet", "light_vgg19", "light_zfnet512"]
LIGHT = sorted(os.path.basename(p)[:-5] for p in glob.glob(f"{DATA}/light/*.onnx"))


def test_all_nine_light_models_are_there():
    assert len(LIGHT) == 9


@pytest.mark.parametrize("name", LIGHT)
def test_light_models(name):
    """Each model as stored: the onnx test runner's input and expected output."""
    path = f"{DATA}/light/{name}.onnx"
    net = load_onnx(path)
    assert isinstance(net, L.Sequential) == (name in LIGHT_CHAINS)  # the others branch: Graphs
    shape = (1,) + net.input_shape  # the onnx test runner feeds arange(n) / n in the input's shape
    x = (np.arange(np.prod(shape)).reshape(shape) / np.prod(shape)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), _read_tensor(f"{DATA}/light/{name}_output_0.pb"), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("name", LIGHT)
def test_light_models_with_random_weights_match_the_reference_evaluator(name):
    """The stored weights are all 0.02, which hides mistakes: random ones do not."""
    from onnx_light import data_input, evaluator, randomized
    model = randomized(name)
    net = load_onnx(model)
    x = np.random.default_rng(1).random((1,) + net.input_shape).astype(np.float32)
    want = evaluator(model).run(None, {data_input(model): x})[0]
    got = net.forward(x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    e = L.explain(net, x, composite=L.EpsilonPlus())  # and it can be explained
    assert np.isfinite(e.relevance).all() and e.relevance.shape == x.shape
    assert np.abs(e.conservation().residual()).max() <= 1e-3 * np.abs(e.layers[-1]).sum()


def _chain_model(nodes, inits, in_shape, out_name, opset=13):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_matmul_add_bias_constant_nodes_and_batchnorm_folding(rng):
    w = rng.normal(size=(4, 3, 3, 3))
    bn = {"s": rng.random(4) + 0.5, "b": rng.normal(size=4), "m": rng.normal(size=4), "v": rng.random(4) + 0.5}
    fc = rng.normal(size=(4 * 4 * 4, 5))
    const = helper.make_node("Constant", [], ["fb"], value=numpy_helper.from_array(rng.normal(size=5).astype(
        np.float32)))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "fw"], ["mm"]), const, helper.make_node("Add", ["mm", "fb"], ["y"])]
    model = _chain_model(nodes, dict(w=w, fw=fc, **bn), [1, 3, 4, 4], "y")
    net = load_onnx(model)
    assert [type(layer).__name__ for layer in net] == ["Conv2d", "ReLU", "Flatten", "Linear"]  # BN folded
    x = rng.random((2, 3, 4, 4)).astype(np.float32)
    conv = L.Conv2d(3, 4, 3, padding=1, bias=False)
    conv.weight = w
    c = conv.forward(x.astype(np.float64))
    n = (c - bn["m"][:, None, None]) / np.sqrt(bn["v"][:, None, None] + 1e-3) * bn["s"][:, None, None] \
        + bn["b"][:, None, None]
    fb = numpy_helper.to_array(const.attribute[0].t)
    want = np.maximum(n, 0).reshape(2, -1) @ fc + fb
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-4, atol=1e-5)
    net64 = load_onnx(model, dtype=np.float64)  # float32 weights, converted: lrpnumpy's reference precision
    assert net.dtype == np.float32 and net64.dtype == np.float64
    assert all(getattr(layer, p).dtype == np.float64 for layer in net64 for p in layer.params
               if getattr(layer, p) is not None)
    np.testing.assert_allclose(net64.forward(x.astype(np.float64)), want, rtol=1e-4, atol=1e-5)


def test_branches_become_a_graph_and_unknown_ops_name_the_node(rng):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"), helper.make_node("Relu", ["x"], ["b"], name="fork"),
             helper.make_node("Add", ["a", "b"], ["y"], name="join")]
    net = load_onnx(_chain_model(nodes, {}, [1, 3], "y"))
    assert isinstance(net, L.Graph) and net.inputs["join"] == ("first", "fork")
    x = rng.normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), 2 * np.maximum(x, 0))
    nodes = [helper.make_node("Mul", ["x", "x"], ["y"], name="square")]
    with pytest.raises(UnsupportedLayerError, match="'square' \\(Mul\\): Mul of two data tensors"):
        load_onnx(_chain_model(nodes, {}, [1, 3], "y"))
    nodes = [helper.make_node("Selu", ["x"], ["y"], name="sig")]
    with pytest.raises(UnsupportedLayerError, match="'sig' \\(Selu\\): operator not supported"):
        load_onnx(_chain_model(nodes, {}, [1, 3], "y"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="SAME_WRONG")]
    with pytest.raises(UnsupportedLayerError, match="auto_pad='SAME_WRONG'"):
        load_onnx(_chain_model(nodes, {"w": np.ones((1, 1, 3, 3))}, [1, 1, 5, 5], "y"))


def test_bad_files(tmp_path, rng):
    for name, content in (("empty.onnx", b""), ("text.onnx", b"not a model at all"),
                          ("garbage.onnx", bytes(rng.integers(0, 256, 300, dtype=np.uint8)))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(LRPError):
            load_onnx(str(tmp_path / name))
    w = np.ones((2, 1, 3, 3))
    w[0, 0, 0, 0] = np.nan
    with pytest.raises(ModelFormatError, match="NaN"):
        load_onnx(_chain_model([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": w}, [1, 1, 5, 5], "y"))
    with pytest.raises(LRPError, match="'missing'.* not produced by an earlier node"):  # a missing weight
        load_onnx(_chain_model([helper.make_node("Conv", ["x", "missing"], ["y"])], {}, [1, 1, 5, 5], "y"))


def test_torch_exported_models_match(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[reference]')")
    nn = torch.nn
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), bn, nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                          nn.Conv2d(6, 8, 3, stride=2, padding=(1, 0)), nn.ReLU(),
                          nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), nn.Flatten(),
                          nn.Linear(8 * 2 * 1, 10), nn.Softmax(dim=1)).eval()
    x = torch.rand(2, 3, 13, 13)
    with torch.no_grad():
        want = model(x).numpy()
    path = str(tmp_path / "m.onnx")
    try:
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}})
    except Exception as exc:  # noqa: BLE001 - exporter availability varies between torch builds
        pytest.skip(f"torch.onnx.export is not usable here: {type(exc).__name__}: {exc}")
    net = load_onnx(path)
    np.testing.assert_allclose(net.forward(x.numpy()), want, rtol=1e-5, atol=1e-6)
    assert not any(isinstance(layer, L.BatchNorm2d) for layer in net)


def test_save_onnx_round_trip_and_reference_evaluator(tmp_path, rng):
    from onnx.reference import ReferenceEvaluator
    bn = L.BatchNorm2d(4)
    bn.weight, bn.bias = rng.normal(size=4), rng.normal(size=4)
    bn.running_mean, bn.running_var = rng.normal(size=4), rng.random(4) + 0.5
    net = L.Sequential(L.Conv2d(2, 4, 3, stride=2, padding=(1, 0, 2, 1), rng=rng), bn, L.ReLU(),
                       L.MaxPool2d(2, stride=1, padding=1, dilation=2, ceil_mode=True), L.SumPool2d(2, scale=0.5),
                       L.AvgPool2d(2, count_include_pad=False, padding=1), L.Conv2d(4, 4, 1, groups=2, rng=rng),
                       L.Tanh(), L.GlobalAvgPool2d(), L.Flatten(), L.Dropout(), L.Linear(4, 3, rng=rng), L.Softmax(),
                       input_shape=(2, 11, 9))
    x = rng.normal(size=(3, 2, 11, 9))
    want = net.forward(x)
    model = L.io.save_onnx(net, tmp_path / "m.onnx")
    got = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    back = load_onnx(str(tmp_path / "m.onnx"))
    np.testing.assert_allclose(back.forward(x), want, rtol=1e-10, atol=1e-12)
    net32 = net.astype(np.float32)
    L.io.save_onnx(net32, tmp_path / "m32.onnx")
    back32 = load_onnx(str(tmp_path / "m32.onnx"))
    assert back32.dtype == np.float32
    np.testing.assert_allclose(back32.forward(x.astype(np.float32)), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(L.errors.UnsupportedLayerError):
        L.io.save_onnx(L.Sequential(L.AvgPool2d(2, dilation=2)), tmp_path / "x.onnx", input_shape=(1, 5, 5))


def test_a_layer_that_does_not_fit_its_input_names_the_shapes():
    model = _chain_model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], {"w": np.ones((1, 3, 3, 3))},
                         [1, 2, 5, 5], "y")
    with pytest.raises(UnsupportedLayerError, match=r"'c' \(Conv\): does not fit its inputs of shapes \[\(2, 5, 5\)\]"):
        load_onnx(model)


# ----- files that declare more than they hold, or that a careless loader misreads -----

def _refused_small_and_fast(case, max_mb=4.0, max_seconds=2.0):
    """Load a hostile case: the expected lrpnumpy error, a short message, little memory and time."""
    import re
    import time
    import tracemalloc
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(case.error) as info:
            case.load()
    finally:
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    message = str(info.value)
    assert re.search(case.match, message), message[:500]
    assert len(message) < 400, message[:500]
    assert peak < max_mb and seconds < max_seconds, (case.name, peak, seconds)
    return message


@pytest.mark.parametrize("builder", ["onnx_reshape_target", "onnx_unsqueeze_axes", "onnx_shape_of_shape",
                                     "onnx_gemm_weight", "onnx_many_weights", "onnx_declared_initializer",
                                     "onnx_external_data", "onnx_duplicate_initializer", "onnx_foreign_domain",
                                     "onnx_pool_pads", "onnx_redefined_output"])
def test_hostile_onnx_files_are_refused_before_anything_is_allocated(tmp_path, builder):
    import hostile_files
    for seed in range(4):  # the builders' variants (3e8 or 1e6 values, MaxPool or AveragePool, ...)
        _refused_small_and_fast(getattr(hostile_files, builder)(tmp_path, np.random.default_rng(seed)))


def test_constant_caps_name_the_node_and_quote_few_values(tmp_path):
    from lrpnumpy.io.onnx import MAX_SHAPE_VALUES
    # a target shape under the cap but unsupported: the message lists six of its values
    nodes = [helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.ones(40, np.int64))),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="r")]
    with pytest.raises(UnsupportedLayerError, match=r"'r' \(Reshape\): target shape \[1, 1, 1, 1, 1, 1, \.\.\. "
                                                    r"\(40 values\)\]") as info:
        load_onnx(_chain_model(nodes, {}, [1, 4], "y"))
    assert len(str(info.value)) < 300
    # a shape tensor of floats is not a shape
    nodes[0] = helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.ones(2, np.float32)))
    with pytest.raises(ModelFormatError, match=r"'r' \(Reshape\): the target shape has dtype float32"):
        load_onnx(_chain_model(nodes, {}, [1, 4], "y"))
    assert MAX_SHAPE_VALUES == 64  # numpy's most dimensions: a longer shape tensor is never a shape


def test_max_elements_caps_one_constant_and_all_weights(rng):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, name="g1"),
             helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1, name="g2")]
    model = _chain_model(nodes, {"w": rng.normal(size=(20, 20)), "b": rng.normal(size=20),
                                 "w2": rng.normal(size=(3, 20))}, [1, 20], "y")
    assert len(load_onnx(model)) == 2 and len(load_onnx(model, max_elements=480)) == 2
    with pytest.raises(ModelFormatError, match=r"'g2' \(Gemm\): B 'w2' of shape \(3, 20\) brings the network's "
                                               r"weights to 480 values, more than the 479"):
        load_onnx(model, max_elements=479)
    with pytest.raises(ModelFormatError, match=r"initializer 'w': the tensor declares 400 values \(shape \[20, 20\]\), "
                                               r"more than the 399"):
        load_onnx(model, max_elements=399)
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(L.errors.ParameterError, match="max_elements"):
            load_onnx(model, max_elements=bad)


def test_external_data_within_the_caps_still_loads(tmp_path, rng):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    w, b = rng.normal(size=(3, 40)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    model = _chain_model(nodes, {"w": w, "b": b}, [1, 40], "y")
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(tmp_path / "m.onnx"),
                                                                               load_external_data=False).graph.initializer)
    net = load_onnx(str(tmp_path / "m.onnx"))
    x = rng.normal(size=(2, 40)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), x @ w.T + b, rtol=1e-5)


def test_pooling_windows_wholly_in_the_padding_are_refused():
    # pads < kernel: loads (ONNX's own rule); pads >= kernel: refused, naming the node
    ok = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    assert isinstance(load_onnx(_chain_model([ok], {}, [1, 1, 4, 4], "y"))[0], L.AvgPool2d)
    for op in ("AveragePool", "MaxPool"):
        bad = helper.make_node(op, ["x"], ["y"], name="p", kernel_shape=[2, 3], pads=[0, 3, 0, 0])
        with pytest.raises(UnsupportedLayerError, match=rf"'p' \({op}\): pads \[0, 0, 3, 0\] \(top, bottom, left, "
                                                        rf"right\): each must be smaller than the kernel \[2, 3\]"):
            load_onnx(_chain_model([bad], {}, [1, 1, 4, 4], "y"))
    # dilated taps that skip the whole input even with pads < kernel (2 x 2 input, taps at -1 and 2)
    dilated = helper.make_node("AveragePool", ["x"], ["y"], name="d", kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                               dilations=[3, 3], count_include_pad=0)
    with pytest.raises(UnsupportedLayerError, match=r"'d' \(AveragePool\): .* every tap in the padding"):
        load_onnx(_chain_model([dilated], {}, [1, 1, 2, 2], "y"))


def test_lrpnumpy_pseudo_operators_are_not_read_from_files():
    node = helper.make_node("ChannelShuffle", ["x"], ["y"], name="cs", groups=2)
    with pytest.raises(UnsupportedLayerError, match=r"'cs' \(ChannelShuffle\): not an ONNX operator"):
        load_onnx(_chain_model([node], {}, [1, 4, 2, 2], "y"))


def test_an_axis_no_array_can_have_is_refused_even_in_an_empty_constant():
    nodes = [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([0, 2 ** 63 - 1]))),
             helper.make_node("ConstantOfShape", ["s"], ["w"], name="empty"),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    with pytest.raises(ModelFormatError, match=r"'empty' \(ConstantOfShape\): the constant has a dimension over "
                                               r"2147483647: \[0, 9223372036854775807\]"):
        load_onnx(_chain_model(nodes, {}, [1, 4], "y"))


def test_negative_pool_pads_are_named_as_negative():
    node = helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2], pads=[-1, 0, 0, 0])
    with pytest.raises(ModelFormatError, match=r"'p' \(MaxPool\): negative pads \[-1, 0, 0, 0\]"):
        load_onnx(_chain_model([node], {}, [1, 1, 4, 4], "y"))


def test_external_data_reads_only_what_the_shape_declares(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "w.bin").write_bytes(w.tobytes() + bytes(10 ** 6))  # a data file far longer than the tensor

    def model(**entries):
        init = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[4, 3])
        init.data_location = onnx.TensorProto.EXTERNAL
        for k, v in dict(location="w.bin", **entries).items():
            init.external_data.add(key=k, value=v)
        (tmp_path / "m.onnx").write_bytes(_chain_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {},
                                                       [1, 4], "y").SerializeToString())
        m = onnx.load(str(tmp_path / "m.onnx"))
        m.graph.initializer.append(init)
        return m
    m = model()  # no length: exactly 48 bytes are read
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    np.testing.assert_array_equal(load_onnx(str(tmp_path / "m.onnx"))[0].weight, w.T)
    m = model(length=str(10 ** 6))
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(ModelFormatError, match=r"initializer 'w': external data length '1000000'; its shape \[4, 3\] "
                                               r"needs 48 bytes"):
        load_onnx(str(tmp_path / "m.onnx"))
    with pytest.raises(ModelFormatError, match="external files; give the model's file path"):
        load_onnx(model().SerializeToString())  # bytes: no folder to read from


def test_a_huge_constant_view_is_free_until_something_would_copy_it():
    import tracemalloc
    big = [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([20000, 20000]))),
           helper.make_node("ConstantOfShape", ["s"], ["big"], name="big")]
    tracemalloc.start()
    try:
        net = load_onnx(_chain_model(big + [helper.make_node("Relu", ["x"], ["y"])], {}, [1, 4], "y"))
        assert [type(layer).__name__ for layer in net] == ["ReLU"]  # unused: never copied
        fold = [helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.array([4 * 10 ** 8]))),
                helper.make_node("Reshape", ["big", "t"], ["flat"], name="r"),
                helper.make_node("Relu", ["x"], ["y"])]
        with pytest.raises(ModelFormatError, match=r"'r' \(Reshape\): the reshaped constant declares 400000000 "
                                                   r"values \(shape \[20000, 20000\]\), more than the 268435456"):
            load_onnx(_chain_model(big + fold, {}, [1, 4], "y"))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 << 20


def test_the_onnx_loader_is_a_package_of_short_documented_modules_with_the_same_public_names():
    import importlib
    import pkgutil

    import lrpnumpy.io.onnx as pkg
    from lrpnumpy.io.onnx import (FOLDED, MAX_BLOCK_NODES, MAX_ELEMENTS, MAX_SHAPE_VALUES, ONNX_WRITERS,  # noqa: F401
                                  SEQUENCE_OPS, SUPPORTED, load_onnx as load, save_onnx)
    from lrpnumpy.io.onnx.graph import HANDLERS
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert modules == {"reading", "graph", "folding", "cnn", "sequence", "transformer", "vit", "write"}
    for name in sorted(modules) + [None]:
        module = importlib.import_module(f"lrpnumpy.io.onnx.{name}") if name else pkg
        assert module.__doc__ and len(module.__doc__.split()) >= 10, name
        with open(module.__file__) as f:
            assert len(f.readlines()) <= 400, name
    assert L.io.load_onnx is load is load_onnx and L.io.save_onnx is save_onnx
    # an operator outside the set: the message lists every operator some family or the folding takes
    with pytest.raises(UnsupportedLayerError, match=r"'e' \(Erf\): operator not supported; supported: Conv, ") as e:
        load_onnx(_chain_model([helper.make_node("Erf", ["x"], ["y"], name="e")], {}, [1, 4], "y"))
    listed = str(e.value).split("supported: ")[1].split(", ")
    assert len(listed) == len(set(listed)), "an operator is listed twice"
    assert set(listed) == set(SUPPORTED) == set(HANDLERS) | set(SEQUENCE_OPS) | set(FOLDED) | {"Constant"}
