"""ONNX sequence models: torch text classifiers (embeddings, 1-D convolutions, LSTM, GRU) exported and loaded.

torch's exporter writes recurrent nodes sequence first ((T, N, D) in, Y (T, dirs, N, H), Y_h (dirs, N, H)
out) with Transpose / Squeeze / Gather / Concat nodes around them and shape arithmetic (Shape, Gather,
Concat, Expand) for the zero initial states; the loader must give torch's outputs.
"""

import io
import warnings

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import LRPError, ModelFormatError, UnsupportedLayerError

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from lrpnumpy.io import load_onnx  # noqa: E402
from lrpnumpy.verify import to_torch  # noqa: E402

V, D, H, C, T = 20, 6, 5, 3, 7


class RNNClassifier(torch.nn.Module):
    """Embedding -> (bi)LSTM/GRU -> final state(s) or the sequence pooled over time -> Linear."""

    def __init__(self, cell="LSTM", bidirectional=True, use="last"):
        super().__init__()
        self.emb = torch.nn.Embedding(V, D)
        self.rnn = getattr(torch.nn, cell)(D, H, batch_first=True, bidirectional=bidirectional)
        self.fc = torch.nn.Linear(H * (2 if bidirectional else 1), C)
        self.use = use

    def forward(self, x):
        out, h = self.rnn(self.emb(x))
        if self.use == "sequence":  # the sequence output, squashed and max-pooled over time
            return self.fc(torch.sigmoid(out.transpose(1, 2)).max(dim=2).values)
        if self.use == "step":  # one time step of the sequence: not supported
            return self.fc(out[:, -1])
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(torch.cat([h[-2], h[-1]], dim=1) if self.rnn.bidirectional else h[-1])


class TextCNN(torch.nn.Module):
    """Embedding -> Conv1d -> ReLU -> max over time -> Linear (Kim's text CNN)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, D)
        self.conv = torch.nn.Conv1d(D, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, C)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.emb(x).transpose(1, 2))).max(dim=2).values)


def export(module, x, **kwargs):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), f, dynamo=kwargs.pop("dynamo", False), **kwargs)
    return f.getvalue()


def ids(n=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, V, (n, T)))


MODELS = {
    "bilstm_last": lambda: RNNClassifier("LSTM", True),
    "lstm_last": lambda: RNNClassifier("LSTM", False),
    "gru_last": lambda: RNNClassifier("GRU", False),
    "bigru_last": lambda: RNNClassifier("GRU", True),
    "bilstm_sequence": lambda: RNNClassifier("LSTM", True, "sequence"),
    "gru_sequence": lambda: RNNClassifier("GRU", False, "sequence"),
    "text_cnn": TextCNN,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_text_models_load_and_give_torchs_outputs(name):
    torch.manual_seed(0)
    module = MODELS[name]()
    x = ids()
    data = export(module, x)
    net = load_onnx(data)
    kinds = {type(layer).__name__ for layer in net}
    assert "Embedding" in kinds and ({"LSTM", "GRU", "Conv1d"} & kinds)
    got = net.forward(x.numpy().astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=0, atol=1e-5)
    # float64: the same weights in torch and lrpnumpy agree to rounding
    net64 = load_onnx(data, dtype=np.float64)
    want64 = module.double()(x).detach().numpy()
    np.testing.assert_allclose(net64.forward(x.numpy().astype(np.float64)), want64, rtol=0, atol=1e-12)
    # and the network rebuilt in torch (verify's to_torch) is the original module again
    rebuilt = to_torch(net64)(x.double()).detach().numpy()
    np.testing.assert_allclose(rebuilt, want64, rtol=0, atol=1e-12)


def test_dynamic_batch_axis_and_other_batch_sizes():
    torch.manual_seed(1)
    module = RNNClassifier("LSTM", True, "sequence")
    net = load_onnx(export(module, ids(2), input_names=["x"], dynamic_axes={"x": {0: "N"}}))
    x = ids(5, seed=3)
    np.testing.assert_allclose(net.forward(x.numpy().astype(np.float32)), module(x).detach().numpy(), atol=1e-5)


def test_default_exporter():
    pytest.importorskip("onnxscript")
    torch.manual_seed(2)
    for module in (RNNClassifier("LSTM", True), TextCNN()):
        x = ids()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import contextlib
            with contextlib.redirect_stdout(io.StringIO()):
                data = export(module, x, dynamo=True)
        net = load_onnx(data)
        np.testing.assert_allclose(net.forward(x.numpy().astype(np.float32)), module(x).detach().numpy(), atol=1e-5)


def test_loaded_lstm_is_explained():
    torch.manual_seed(3)
    net = load_onnx(export(RNNClassifier("LSTM", True), ids()), dtype=np.float64)
    rec = next(layer for layer in net if isinstance(layer, L.LSTM))
    assert rec.bidirectional and rec.output == "last"
    e = L.explain(net, ids().numpy().astype(np.float64), composite=L.composites.get("lrp_all", epsilon=1e-3))
    assert np.isfinite(e.relevance).all() and np.abs(e.relevance).sum() > 0


def test_to_torch_covers_the_sequence_layers():
    x = np.random.default_rng(0).integers(0, V, (3, 9)).astype(np.float64)
    nets = [
        L.Sequential(L.Embedding(V, D, rng=0), L.LSTM(D, H, bidirectional=True, output="last", rng=1),
                     L.Linear(2 * H, C, rng=2)),
        L.Sequential(L.Embedding(V, D, rng=0), L.GRU(D, H, bidirectional=True, rng=1), L.Sigmoid(),
                     L.Transpose((0, 2, 1)), L.GlobalMaxPool1d(), L.Linear(2 * H, C, rng=2)),
        L.Sequential(L.Embedding(V, D, rng=0), L.Transpose((0, 2, 1)), L.Conv1d(D, 4, 3, padding=1, rng=1), L.ReLU(),
                     L.MaxPool1d(2), L.AvgPool1d(2, padding=1), L.SumPool1d(2, padding=1), L.Flatten(),
                     L.Linear(8, C, rng=2)),
    ]
    for net in nets:
        got = to_torch(net)(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, net.forward(x), rtol=0, atol=1e-12)


def test_unsupported_patterns_are_named():
    torch.manual_seed(4)
    with pytest.raises(UnsupportedLayerError, match=r"\(Gather\): Gather of activations"):
        load_onnx(export(RNNClassifier("LSTM", True, "step"), ids()))

    class WithState(RNNClassifier):
        def forward(self, x):
            h0 = torch.ones(1, x.shape[0], H)
            return self.fc(self.rnn(self.emb(x), h0)[1][-1])
    with pytest.raises(UnsupportedLayerError, match=r"\(GRU\): a non-zero initial_h"):
        load_onnx(export(WithState("GRU", False), ids()))


def _rnn_model(op="GRU", extra_inputs=(), inits=None, r_shape=None, layout=0, **attrs):
    """X (2, 4) ids -> Gather -> Transpose (1, 0, 2) -> op -> Y_h squeezed: a hand-made graph (layout=1: no
    Transpose, the node batch first, both directions' Y_h flattened)."""
    g = 3 if op == "GRU" else 4
    rng = np.random.default_rng(0)
    inits = dict(inits or {})
    inits.update({"E": rng.normal(size=(V, D)).astype(np.float32), "W": rng.normal(size=(1, g * H, D)).astype(np.float32),
                  "R": rng.normal(size=r_shape or (1, g * H, H)).astype(np.float32), "axes": np.array([0], np.int64)})
    nodes = [helper.make_node("Gather", ["E", "x"], ["e"]), helper.make_node("Transpose", ["e"], ["t"], perm=[1, 0, 2]),
             helper.make_node(op, ["t", "W", "R", *extra_inputs], ["Y", "Y_h"], name="rnn", hidden_size=H, **attrs),
             helper.make_node("Squeeze", ["Y_h", "axes"], ["y"])]
    out = H
    if layout:
        for k in ("W", "R"):
            inits[k] = np.concatenate([inits[k], inits[k][:, ::-1]])
        nodes = [nodes[0], helper.make_node(op, ["e", "W", "R", *extra_inputs], ["Y", "Y_h"], name="rnn", hidden_size=H,
                                            layout=1, direction="bidirectional", **attrs),
                 helper.make_node("Flatten", ["Y_h"], ["y"], axis=1)]
        out = 2 * H
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, [2, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, out])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_hand_made_recurrent_nodes(tmp_path):
    from onnx.reference import ReferenceEvaluator
    x = np.random.default_rng(1).integers(0, V, (2, 4))
    for op, attrs in (("GRU", {"linear_before_reset": 1}), ("LSTM", {}), ("LSTM", {"layout": 1}),
                      ("GRU", {"linear_before_reset": 1, "layout": 1})):
        model = _rnn_model(op, **attrs)
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(load_onnx(model).forward(x.astype(np.float32)), want, atol=1e-5)
    with pytest.raises(UnsupportedLayerError, match=r"'rnn' \(GRU\): linear_before_reset=0"):
        load_onnx(_rnn_model("GRU"))
    with pytest.raises(UnsupportedLayerError, match=r"'rnn' \(LSTM\): direction='reverse'"):
        load_onnx(_rnn_model("LSTM", direction="reverse"))
    with pytest.raises(UnsupportedLayerError, match=r"'rnn' \(LSTM\): sequence_lens"):
        load_onnx(_rnn_model("LSTM", ["", "lens"], {"lens": np.array([4, 2], np.int32)}))
    with pytest.raises(ModelFormatError, match=r"'rnn' \(LSTM\): weights W"):
        load_onnx(_rnn_model("LSTM", r_shape=(1, 4 * H, H + 1)))


def _folding_model(first):
    """``first`` (a node making ``c`` from the constants ``one``, ``big``, ``nine``) added to the input x (1, 3)."""
    graph = helper.make_graph([first, helper.make_node("Add", ["x", "c"], ["y"], name="add")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(np.ones(1, np.float32), "one"),
                               numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "big"),
                               numpy_helper.from_array(np.array(9, np.int64), "nine")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_folded_constants_are_bounded_before_they_are_made():
    """Shape arithmetic is evaluated at load time; a tiny file cannot make it allocate much."""
    model = _folding_model(helper.make_node("Expand", ["one", "big"], ["e"]))
    model.graph.node.insert(1, helper.make_node("Cast", ["e"], ["c"], to=11, name="cast"))
    model.graph.node[2].input[1] = "c"
    model.graph.node[0].output[0] = "e"
    with pytest.raises(ModelFormatError, match=r"'cast' \(Cast\): the result declares 1099511627776 values"):
        load_onnx(model)
    with pytest.raises(ModelFormatError, match=r"'g' \(Gather\): cannot evaluate"):
        load_onnx(_folding_model(helper.make_node("Gather", ["big", "nine"], ["c"], name="g")))
    with pytest.raises(ModelFormatError, match=r"'r' \(Range\): the result declares"):
        load_onnx(_folding_model(helper.make_node("Range", ["one", "big", "one"], ["c"], name="r")),
                  max_elements=1000)
    # an operator known only on constants, given activations, is named
    with pytest.raises(UnsupportedLayerError, match=r"'root' \(Sqrt\): on activations"):
        load_onnx(_folding_model(helper.make_node("Sqrt", ["x"], ["c"], name="root")))


def test_huge_initial_state_is_bounded_before_it_is_read():
    model = _rnn_model("LSTM", ["", "", "h0"])
    model.graph.node.insert(0, helper.make_node("ConstantOfShape", ["h0shape"], ["h0"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1 << 20, 1 << 20], np.int64), "h0shape"))
    with pytest.raises(ModelFormatError, match=r"'rnn' \(LSTM\): initial_h declares 1099511627776 values"):
        load_onnx(model)


def test_bad_token_ids_are_refused():
    net = load_onnx(export(TextCNN(), ids()))
    with pytest.raises(LRPError, match="out of range"):
        net.forward(np.full((1, T), V, np.float32))
