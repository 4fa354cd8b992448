"""PyTorch models into lrpnumpy: from_torch (torch.fx), the layers it needed, and checkpoints read without torch."""

import inspect
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import LayerParameterError, ModelFormatError, UnsupportedLayerError
from lrpnumpy.io import from_torch, load_state_dict, read_state_dict
from test_layers import fd_check

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ----- the layers from_torch needed -----

NEW_LAYERS = {
    "hardtanh": (lambda: L.Hardtanh(-0.5, 0.8), lambda x: F.hardtanh(x, -0.5, 0.8), (2, 3, 4, 4)),
    "relu6": (lambda: L.ReLU6(), lambda x: F.relu6(x), (2, 7)),
    "leaky_relu": (lambda: L.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2), (2, 3, 3, 3)),
    "adaptive_down_overlapping": (lambda: L.AdaptiveAvgPool2d((3, 2)), lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
                                  (2, 2, 5, 7)),
    "adaptive_up": (lambda: L.AdaptiveAvgPool2d(7), lambda x: F.adaptive_avg_pool2d(x, 7), (1, 2, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(NEW_LAYERS))
def test_new_layers_match_torch_and_their_backward_is_the_gradient(name, rng):
    make, ref, shape = NEW_LAYERS[name]
    layer = make()
    x = rng.normal(size=shape) * 3  # many entries beyond the clipping bounds
    np.testing.assert_allclose(layer.forward(x), ref(_t(x)).numpy(), rtol=1e-14, atol=1e-15)
    fd_check(layer, x, rng)
    # the gradient equals torch's (at random points, away from the kinks)
    xt = _t(x).requires_grad_()
    g = rng.normal(size=layer.output_shape(shape))
    (ref(xt) * _t(g)).sum().backward()
    y, step = layer.forward_trace(x)
    np.testing.assert_allclose(layer.backward(g, step), xt.grad.numpy(), rtol=1e-13, atol=1e-15)
    back = type(layer).from_config(json.loads(json.dumps(layer.config())))
    assert repr(back) == repr(layer) and L.Layer.registry[type(layer).__name__] is type(layer)
    assert layer.forward(x.astype(np.float32)).dtype == np.float32


def test_clipping_gradient_is_zero_at_the_bounds_as_in_torch():
    x = np.array([[-1.0, -0.5, 0.0, 0.8, 1.0]])
    layer = L.Hardtanh(-0.5, 0.8)
    _, step = layer.forward_trace(x)
    xt = _t(x).requires_grad_()
    F.hardtanh(xt, -0.5, 0.8).sum().backward()
    np.testing.assert_array_equal(layer.backward(np.ones_like(x), step), xt.grad.numpy())


def test_the_new_layers_go_back_to_torch(rng):
    net = L.Sequential(L.Conv2d(2, 3, 3, rng=0), L.ReLU6(), L.AdaptiveAvgPool2d((3, 2)), L.LeakyReLU(0.3),
                       L.Hardtanh(-0.2, 0.4), L.Flatten(), L.Linear(6 * 3 * 2 // 2, 4, rng=1))
    x = rng.normal(size=(2, 2, 6, 7)) * 4
    with torch.no_grad():
        np.testing.assert_allclose(L.verify.to_torch(net)(_t(x)).numpy(), net.forward(x), rtol=1e-12, atol=1e-12)


def test_adaptive_pool_defaults_to_the_norm_rule_and_bad_parameters_are_refused():
    assert isinstance(L.composites.default_rule(L.AdaptiveAvgPool2d(2)), L.Norm)
    for make in (lambda: L.Hardtanh(1, 1), lambda: L.Hardtanh(0, np.inf), lambda: L.LeakyReLU("a"),
                 lambda: L.AdaptiveAvgPool2d(0)):
        with pytest.raises(LayerParameterError):
            make()


# ----- from_torch on torchvision's models -----

X32 = np.random.default_rng(7).normal(size=(1, 3, 32, 32))
MODELS = {"resnet18": ("layer1.0.conv1", L.Add), "vgg11": ("features.0", L.AdaptiveAvgPool2d),
          "densenet121": ("features.denseblock1.denselayer1.conv1", L.Concat),
          "mobilenet_v2": ("features.1.conv.0.0", L.ReLU6)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_models_convert_exactly_and_explain(name, tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None).eval()
    for m in model.modules():  # batch norms that are not the identity, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net = from_torch(model, X32)
    node, kind = MODELS[name]
    assert isinstance(net, L.Graph) and node in net.names and any(isinstance(layer, kind) for layer in net)
    with torch.no_grad():
        want = model.double()(_t(X32)).numpy()
    got = net.forward(X32)
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    kept = [n for n, layer in zip(net.names, net) if isinstance(layer, L.BatchNorm2d)]
    assert set(kept) | {v[0] for v in net.meta["torch"]["folded"].values()} == set(bns)
    if name == "densenet121":  # batch norms after a concatenation cannot be folded; they stay, named
        assert "features.denseblock1.denselayer1.norm1" in kept and "features.norm5" in kept
    else:
        assert kept == []
    if name in ("resnet18", "mobilenet_v2"):  # their checkpoints, read without torch, refold to the same numbers
        torch.save(model.state_dict(), str(tmp_path / "model.pt"))
        blank = net.copy()
        for layer in blank:
            for p in layer.params:
                if getattr(layer, p) is not None:
                    setattr(layer, p, np.zeros_like(getattr(layer, p)))
        np.testing.assert_array_equal(load_state_dict(blank, str(tmp_path / "model.pt")).forward(X32), got)
    e = L.explain(net, X32, composite=L.EpsilonPlusFlat())
    report = e.conservation()
    assert np.isfinite(e.relevance).all() and np.isfinite(report.residual()).all()
    assert np.abs(report.residual()).max() <= 1e-8 * abs(float(e.output.max()))


# ----- hand-written modules -----

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding="same", bias=False)
        self.branch = nn.Conv2d(4, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        a = F.relu(self.bn1(self.conv1(x)))
        b = self.conv2(a)
        s = a + b
        s = torch.add(s, F.leaky_relu(b, 0.1))
        y = torch.cat([s, self.branch(s)], dim=1)
        y = self.pool(y).contiguous()
        y = y.view(y.size(0), -1)
        return self.fc(self.drop(y))


def test_a_module_with_plus_in_forward_converts_with_its_names(rng):
    torch.manual_seed(1)
    model = Residual().eval()
    model.bn1.running_mean.uniform_(-1, 1)
    x = rng.normal(size=(2, 3, 8, 8))
    net = from_torch(model, x)
    assert net.names == ["conv1", "relu", "conv2", "add", "leaky_relu", "add_1", "branch", "cat", "pool", "view",
                         "drop", "fc"]
    assert isinstance(net["add"], L.Add) and net.inputs["add"] == ("relu", "conv2")
    assert net.meta["torch"]["folded"] == {"conv1": ["bn1", 1e-5]}
    with torch.no_grad():
        want = model.double()(_t(x)).numpy()
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-12, atol=1e-12)
    e = L.explain(net, x, composite=L.EpsilonPlus())
    split = e.conservation().split("add")
    assert set(split) == {"relu", "conv2"} and np.isfinite(list(split.values())).all()
    unfolded = from_torch(model, x, fold_batchnorm=False)
    assert isinstance(unfolded["bn1"], L.BatchNorm2d) and unfolded.meta["torch"]["batchnorm"] == ["bn1"]
    np.testing.assert_allclose(unfolded.forward(x), want, rtol=1e-12, atol=1e-12)
    single = from_torch(model, x.astype(np.float32), dtype=np.float32)
    assert single.dtype == np.float32
    assert model.conv1.weight.dtype == torch.float64  # .double() above; from_torch itself left it alone


def test_from_torch_leaves_the_module_alone():
    model = Residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from_torch(model, np.zeros((1, 3, 8, 8), np.float32))
    assert model.training and model.conv1.weight.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        x = self.conv(x)
        x = torch.sigmoid(x)
        return x.flatten(1)


class Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(x) + x


def _line(cls, text):
    src, start = inspect.getsourcelines(cls.forward)
    return start + next(i for i, s in enumerate(src) if text in s)


def test_unsupported_ops_are_named_with_the_line_of_forward():
    with pytest.raises(UnsupportedLayerError) as info:
        from_torch(Gated(), np.zeros((1, 1, 5, 5)))
    msg = str(info.value)
    assert "torch.sigmoid" in msg or "sigmoid" in msg
    assert f"test_io_torch.py, line {_line(Gated, 'torch.sigmoid')}, in forward: x = torch.sigmoid(x)" in msg
    with pytest.raises(UnsupportedLayerError) as info:
        from_torch(Gelu(), np.zeros((1, 4)))
    msg = str(info.value)
    assert "GELU module 'act'" in msg and f"line {_line(Gelu, 'self.act(x)')}" in msg


def test_an_unsupported_layer_in_torchvision_code_is_named_with_torchvision_s_line():
    tv = pytest.importorskip("torchvision")
    with pytest.raises(UnsupportedLayerError) as info:
        from_torch(tv.models.efficientnet_b0(weights=None), np.zeros((1, 3, 32, 32)))
    msg = str(info.value)
    assert "SiLU module 'features.0.2'" in msg
    assert re.search(r"torchvision[/\\]models[/\\]efficientnet\.py, line \d+, in _forward_impl: x = self\.features\(x\)",
                     msg)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class TracedDifferently(nn.Module):
    """What fx records is not what the module computes: the conversion must notice."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(x)
        layer = self.a if torch.fx._symbolic_trace.is_fx_tracing() else self.b
        return layer(x)


def test_untraceable_and_differing_modules_are_refused():
    with pytest.raises(UnsupportedLayerError, match="torch.fx cannot trace Branchy"):
        from_torch(Branchy(), np.ones((1, 4)))
    with pytest.raises(UnsupportedLayerError) as info:
        from_torch(TracedDifferently(), np.ones((2, 4)))
    msg = str(info.value)
    assert "differs from the module" in msg and "max |difference|" in msg
    assert "every node's output agrees, so the module's forward does something its fx trace does not record" in msg


def test_a_difference_names_the_first_node_that_differs(monkeypatch):
    monkeypatch.setattr(L.ReLU, "_forward", lambda self, a: np.maximum(a, 0.01))  # a wrong ReLU
    with pytest.raises(UnsupportedLayerError) as info:
        from_torch(Residual().eval(), np.ones((1, 3, 8, 8)))
    assert "the first node whose output differs is 'relu' (ReLU(), from fx node 'relu' (function " \
           "torch.nn.functional.relu, called at" in str(info.value)


class Biased(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.shift = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.fc(x) + self.shift


def test_tensors_used_outside_layers_are_refused():
    with pytest.raises(UnsupportedLayerError, match="its input is the module's tensor 'shift'"):
        from_torch(Biased(), np.zeros((1, 3)))


def test_batch_norm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(UnsupportedLayerError, match="track_running_stats=False"):
        from_torch(model, np.zeros((1, 1, 5, 5)))


# ----- checkpoints read without torch -----

def _checkpoint_pair(seed):
    torch.manual_seed(seed)
    model = Residual().eval()
    model.bn1.running_mean.uniform_(-1, 1)
    model.bn1.running_var.uniform_(0.5, 2)
    model.bn1.weight.data.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("fold", [True, False])
def test_checkpoints_load_into_a_converted_graph(tmp_path, rng, fmt, fold):
    x = rng.normal(size=(1, 3, 8, 8))
    net = from_torch(_checkpoint_pair(0), x, fold_batchnorm=fold)
    trained = _checkpoint_pair(1)
    path = str(tmp_path / f"model.{fmt}")
    if fmt == "pt":
        torch.save(trained.state_dict(), path)
    else:
        safetensors = pytest.importorskip("safetensors.torch")
        safetensors.save_file(trained.state_dict(), path)
    assert load_state_dict(net, path) is net
    expected = from_torch(trained, x, fold_batchnorm=fold)
    np.testing.assert_array_equal(net.forward(x), expected.forward(x))
    with torch.no_grad():
        np.testing.assert_allclose(net.forward(x), trained.double()(_t(x)).numpy(), rtol=1e-12, atol=1e-12)


def test_a_converted_graph_saved_natively_still_reads_checkpoints(tmp_path, rng):
    x = rng.normal(size=(1, 3, 8, 8))
    net = from_torch(_checkpoint_pair(0), x)
    L.io.save(net, str(tmp_path / "net.npz"))
    back = L.io.load(str(tmp_path / "net.npz"))
    assert back.names == net.names and back.meta == net.meta
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    trained = _checkpoint_pair(1)
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, str(tmp_path / "ckpt.pt"))  # a wrapped one
    load_state_dict(back, str(tmp_path / "ckpt.pt"))
    np.testing.assert_array_equal(back.forward(x), from_torch(trained, x).forward(x))


def test_sequential_by_torch_indices_with_batch_norm_buffers_and_a_mapping(tmp_path, rng):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    path = str(tmp_path / "seq.pth")
    torch.save(model.state_dict(), path)
    net = L.Sequential(L.Conv2d(2, 3, 3), L.BatchNorm2d(3), L.ReLU(), L.Flatten(), L.Linear(27, 4))
    load_state_dict(net, path)
    np.testing.assert_array_equal(net[1].running_var, model[1].running_var.numpy())
    x = rng.normal(size=(2, 2, 5, 5))
    with torch.no_grad():
        want = model.double()(_t(x)).numpy()
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-12)
    # fewer layers (batch norm folded into the conv, no Flatten module): named by a mapping
    folded = L.Sequential(L.Conv2d(2, 3, 3), L.ReLU(), L.Flatten(), L.Linear(27, 4))
    load_state_dict(folded, path, mapping={0: ("0", "1"), 3: "4"})
    np.testing.assert_allclose(folded.forward(x), want, rtol=1e-12)
    float32 = L.Sequential(L.Conv2d(2, 3, 3), L.BatchNorm2d(3), L.ReLU(), L.Flatten(), L.Linear(27, 4)).astype(
        np.float32)
    assert load_state_dict(float32, path)[0].weight.dtype == np.float32


def test_checkpoints_are_read_without_torch(tmp_path):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    model[0].weight.data[0, 0] = 1.25
    torch.save(model.state_dict(), str(tmp_path / "m.pt"))
    code = ("import sys; sys.modules['torch'] = None\n"
            "import lrpnumpy as L\n"
            "from lrpnumpy.io import load_state_dict\n"
            "net = L.Sequential(L.Linear(3, 2), L.ReLU(), L.Linear(2, 2))\n"
            f"load_state_dict(net, {str(tmp_path / 'm.pt')!r})\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "print(net[0].weight[0, 0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.25"


def test_half_precision_and_strided_tensors_decode_like_torch(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    values = torch.linspace(-3, 3, 12)
    sd = {"h": values.half(), "b": values.bfloat16(), "t": values.reshape(3, 4).t(), "i": torch.arange(5)}
    torch.save(sd, str(tmp_path / "a.pt"))
    safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "a.safetensors"))
    for name in ("a.pt", "a.safetensors"):
        got = read_state_dict(str(tmp_path / name))
        for k, v in sd.items():
            np.testing.assert_array_equal(got[k], v.float().numpy() if v.is_floating_point() else v.numpy())


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    Evil.marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pt")
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Evil()}, path)
    net = L.Sequential(L.Linear(2, 2))
    with pytest.raises(ModelFormatError, match=r"asks for (posix|os|nt)\.system.*refused \(nothing was run\)"):
        load_state_dict(net, path)
    assert not os.path.exists(Evil.marker)
    # a hand-written data.pkl naming builtins.eval inside a torch archive
    _rewrite_zip(path, str(tmp_path / "eval.pt"), lambda name, b: b"cbuiltins\neval\n(S'1+1'\ntR." if
                 name.endswith("data.pkl") else b)
    with pytest.raises(ModelFormatError, match=r"asks for builtins\.eval"):
        read_state_dict(str(tmp_path / "eval.pt"))
    # a bare pickle (the legacy format) is not unpickled at all
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ModelFormatError, match="bare pickle"):
        read_state_dict(str(tmp_path / "evil.pkl"))
    assert not os.path.exists(Evil.marker)


def _rewrite_zip(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, change(item.filename, zin.read(item.filename)))


def test_truncated_and_oversized_files_are_refused(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    st, pt = str(tmp_path / "a.safetensors"), str(tmp_path / "a.pt")
    safetensors.save_file(sd, st)
    torch.save(sd, pt)
    data = open(st, "rb").read()
    n = int.from_bytes(data[:8], "little")
    cases = {
        "short": data[:5],
        "header_past_end": (len(data)).to_bytes(8, "little") + data[8:],
        "data_cut": data[:-4],
        "not_json": data[:8] + b"{" * n + data[8 + n:],
        "offsets_past_end": data[:8] + data[8:8 + n].replace(b"[0,24]", b"[0,48]") + data[8 + n:],
        "size_mismatch": data[:8] + data[8:8 + n].replace(b"[2,3]", b"[2,2]") + data[8 + n:],
    }
    assert b"[0,24]" in data and b"[2,3]" in data  # the float32 tensor's 24 bytes, as the cases assume
    messages = {}
    for name, blob in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(ModelFormatError) as info:
            read_state_dict(str(path))
        messages[name] = str(info.value)
    assert "shorter than the 8-byte" in messages["short"]
    assert "header declares 96 bytes, but the file holds 88" in messages["header_past_end"]
    assert "data_offsets [0, 24]; expected [begin, end] within the 20 data bytes" in messages["data_cut"]
    assert "not JSON" in messages["not_json"]
    assert "within the 24 data bytes" in messages["offsets_past_end"]
    assert "needs 16 bytes, its data_offsets span 24" in messages["size_mismatch"]
    open(tmp_path / "cut.pt", "wb").write(open(pt, "rb").read()[:300])
    with pytest.raises(ModelFormatError, match="damaged PyTorch checkpoint|without exactly one data.pkl"):
        read_state_dict(str(tmp_path / "cut.pt"))
    # a storage that declares more elements than the archive holds
    _rewrite_zip(pt, str(tmp_path / "short.pt"), lambda name, b: b[:8] if name.endswith("data/0") else b)
    with pytest.raises(ModelFormatError, match="declares 6 FloatStorage elements \\(24 bytes\\), the archive holds 8"):
        read_state_dict(str(tmp_path / "short.pt"))


def test_missing_extra_and_misshapen_entries_are_named_and_change_nothing(tmp_path):
    net = L.Sequential(L.Linear(3, 2), L.ReLU(), L.Linear(2, 2))
    before = net[0].weight.copy()
    good = {"0.weight": np.ones((2, 3)), "0.bias": np.ones(2), "2.weight": np.ones((2, 2)), "2.bias": np.ones(2)}
    with pytest.raises(ModelFormatError, match="no entry '2.bias' for layer '2'"):
        load_state_dict(net, {k: v for k, v in good.items() if k != "2.bias"})
    with pytest.raises(ModelFormatError, match=r"entries no layer of the network reads: \['extra.weight'\]"):
        load_state_dict(net, dict(good, **{"extra.weight": np.ones(1)}))
    with pytest.raises(ModelFormatError, match=r"layer '2'.*from '2'.*shape \(3, 2\)"):
        load_state_dict(net, dict(good, **{"2.weight": np.ones((3, 2))}))
    np.testing.assert_array_equal(net[0].weight, before)
    load_state_dict(net, dict(good, **{"extra.weight": np.ones(1)}), strict=False)
    np.testing.assert_array_equal(net[0].weight, np.ones((2, 3)))


def test_damaged_checkpoints_raise_model_format_errors_only(tmp_path):
    """Byte flips and cuts anywhere in either format: a state dict or ModelFormatError, nothing else."""
    safetensors = pytest.importorskip("safetensors.torch")
    sd = {"a.weight": torch.arange(12.0).reshape(3, 4), "a.bias": torch.ones(3, dtype=torch.float64)}
    torch.save(sd, str(tmp_path / "c.pt"))
    safetensors.save_file(sd, str(tmp_path / "c.safetensors"))
    gen = np.random.default_rng(5)
    for name in ("c.pt", "c.safetensors"):
        data = open(tmp_path / name, "rb").read()
        for k in range(150):
            blob = bytearray(data)
            if k % 3 == 0:
                blob = blob[:int(gen.integers(0, len(blob)))]
            else:
                for i in gen.integers(0, len(blob), size=1 + k % 4):
                    blob[i] = int(gen.integers(0, 256))
            path = tmp_path / f"bad_{k}_{name}"
            path.write_bytes(bytes(blob))
            try:
                out = read_state_dict(str(path))
            except ModelFormatError:
                continue
            assert isinstance(out, dict) and all(isinstance(v, np.ndarray) for v in out.values())
