"""Agreement with Zennit and Captum (marker ``reference``), and the verify command line."""

import json

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites as C, verify
from lrpnumpy.__main__ import main

needs_zennit = pytest.mark.skipif(not verify.available("zennit"),
                                  reason="zennit/torch not installed: pip install -e '.[reference]'")
needs_captum = pytest.mark.skipif(not verify.available("captum"),
                                  reason="captum/torch not installed: pip install -e '.[reference]'")


def _biases(net, rng):
    for layer in net:
        if getattr(layer, "bias", None) is not None:
            layer.bias = rng.normal(scale=0.1, size=layer.bias.shape)
    return net


def make_net(arch, seed, bias):
    rng = np.random.default_rng(seed)
    if arch == "cnn_max_avg":
        net = L.Sequential(
            L.Conv2d(3, 6, 3, stride=2, padding=1, bias=bias, rng=rng), L.ReLU(),
            L.MaxPool2d(3, stride=2, padding=1),
            L.Conv2d(6, 8, 3, padding=1, bias=bias, rng=rng), L.ReLU(), L.AvgPool2d(2),
            L.Flatten(), L.Linear(8 * 2 * 2, 12, bias=bias, rng=rng), L.ReLU(), L.Linear(12, 5, bias=bias, rng=rng))
        shape = (3, 16, 16)
    elif arch == "cnn_sum_groups":
        net = L.Sequential(
            L.Conv2d(2, 4, 3, bias=bias, rng=rng), L.ReLU(), L.SumPool2d(2, scale=0.5),  # as the Toolbox scales it
            L.Conv2d(4, 6, 2, dilation=2, groups=2, bias=bias, rng=rng), L.ReLU(), L.MaxPool2d(2, stride=1),
            L.Flatten(), L.Linear(6, 4, bias=bias, rng=rng), L.Softmax())
        shape = (2, 10, 10)
    else:
        net = L.Sequential(L.Linear(20, 16, bias=bias, rng=rng), L.ReLU(), L.Linear(16, 8, bias=bias, rng=rng),
                           L.ReLU(), L.Dropout(0.5), L.Linear(8, 3, bias=bias, rng=rng))
        shape = (20,)
    x = rng.random((3,) + shape)
    return _biases(net, rng), x


CASES = [(arch, seed, bias) for arch in ("cnn_max_avg", "cnn_sum_groups", "mlp") for seed in (0, 1)
         for bias in (True, False)]


@pytest.mark.reference
@needs_zennit
@pytest.mark.parametrize("arch, seed, bias", CASES)
def test_agrees_with_zennit(arch, seed, bias):
    net, x = make_net(arch, seed, bias)
    rows = verify.compare(net, x, against=("zennit",), rtol=1e-10)
    assert {r["method"] for r in rows} == {m for m in verify.default_methods("zennit") if verify._by_default(m, x)}
    failed = [(r["method"], r["max_rel"]) for r in rows if not r["passed"]]
    assert not failed, failed
    for r in rows:
        assert np.isclose(r["sum_lrpnumpy"], r["sum_reference"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r["sums_lrpnumpy"], r["sums_reference"], rtol=1e-9, atol=1e-12)
        assert len(r["sums_lrpnumpy"]) == len(x)


@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("arch, seed, bias", [c for c in CASES if c[0] != "cnn_sum_groups"] +
                         [("cnn_sum_groups", 0, True)])
def test_agrees_with_captum_when_configured(arch, seed, bias):
    net, x = make_net(arch, seed, bias)
    rows = verify.compare(net, x, against=("captum",), rtol=1e-10)
    assert [r["method"] for r in rows] == [m for m in verify.default_methods("captum") if verify._by_default(m, x)]
    failed = [(r["method"], r["max_rel"]) for r in rows if not r["passed"]]
    assert not failed, failed
    assert all("Captum" in r["note"] for r in rows)


@pytest.mark.reference
@needs_zennit
def test_zennit_batchnorm_is_folded_for_both_sides():
    rng = np.random.default_rng(3)
    bn = L.BatchNorm2d(4)
    bn.weight, bn.bias = rng.normal(size=4), rng.normal(size=4)
    bn.running_mean, bn.running_var = rng.normal(size=4), rng.random(4) + 0.5
    net = L.Sequential(L.Conv2d(1, 4, 3, rng=rng), bn, L.ReLU(), L.Flatten(), L.Linear(4 * 4 * 4, 3, rng=rng))
    rows = verify.compare(net, rng.random((2, 1, 6, 6)), methods=["epsilon_plus", "gamma"])
    assert all(r["passed"] for r in rows)


@pytest.mark.reference
@needs_zennit
def test_differences_are_detected():
    """A deliberately different rule must fail the comparison (the check can fail)."""
    net, x = make_net("cnn_max_avg", 0, True)
    import lrpnumpy.verify as V
    original = V._lrpnumpy_rule
    V._lrpnumpy_rule = lambda method, low, high: L.Epsilon(1e-3)
    try:
        rows = V.compare(net, x, methods=["epsilon"])
    finally:
        V._lrpnumpy_rule = original
    assert not rows[0]["passed"] and rows[0]["max_rel"] > 1e-8


@pytest.mark.reference
@needs_zennit
def test_cli_verify_json_and_table(tmp_path, capsys):
    net, x = make_net("cnn_max_avg", 1, True)
    net.input_shape = x.shape[1:]
    L.io.save(net, tmp_path / "net.npz")
    np.save(tmp_path / "x.npy", x)
    code = main(["verify", str(tmp_path / "net.npz"), "--input", str(tmp_path / "x.npy"), "--rules", "epsilon",
                 "epsilon_plus", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["method"] for r in out["rows"]] == ["epsilon", "epsilon_plus"]
    assert out["conservation_method"] == "epsilon_plus" and len(out["conservation"]) == len(net)
    code = main(["verify", str(tmp_path / "net.npz"), "--rules", "zplus", "--plot", str(tmp_path / "c.png")])
    text = capsys.readouterr().out
    assert code == 0 and "zplus" in text and "pass" in text


def test_cli_verify_errors(tmp_path, capsys):
    net, _ = make_net("mlp", 0, True)
    L.io.save(net, tmp_path / "net.npz")
    assert main(["verify", str(tmp_path / "net.npz")]) == 2
    assert "pass --input" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing.npz")]) == 2
    assert "not a readable" in capsys.readouterr().err


def test_to_torch_refuses_asymmetric_padding():
    pytest.importorskip("torch", reason="torch not installed")
    with pytest.raises(L.errors.UnsupportedLayerError, match="asymmetric padding"):
        verify.to_torch(L.Sequential(L.Conv2d(1, 1, 3, padding=(0, 1, 0, 0))))


@pytest.mark.reference
@needs_zennit
def test_agrees_with_zennit_on_ceil_mode_and_global_pooling():
    rng = np.random.default_rng(5)
    net = L.Sequential(L.Conv2d(2, 4, 3, padding=1, rng=rng), L.ReLU(), L.MaxPool2d(3, 2, ceil_mode=True, dilation=2),
                       L.Conv2d(4, 4, 3, rng=rng), L.ReLU(), L.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
                       L.Conv2d(4, 6, 1, rng=rng), L.ReLU(), L.GlobalAvgPool2d(), L.Flatten(), L.Linear(6, 3, rng=rng))
    rows = verify.compare(_biases(net, rng), rng.random((2, 2, 12, 12)), methods=["epsilon_plus", "gamma", "zbox"])
    assert all(r["passed"] for r in rows), [(r["method"], r["max_rel"]) for r in rows]


def _resnet18(eps):
    """A ResNet-18-shaped float64 torchvision network, random weights and BatchNorm statistics, eval mode."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.eps = eps
    return model.double().eval()


def _onnx_graph(model, x):
    import io
    import warnings
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, torch.from_numpy(x[:1]), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return L.io.load_onnx(buf.getvalue())


@needs_zennit
def test_resnet18_against_zennit_with_its_resnet_and_batchnorm_canonizers():
    """Zennit on the torchvision ResNet-18 itself (ResNetCanonizer: BatchNorm merged, each residual sum a Sum
    module with the Norm rule) and lrpnumpy on the same network loaded from ONNX, to 1e-10.

    BatchNorm eps is 1e-30 here: Zennit's merge leaves an identity BatchNorm that still divides by
    sqrt(1 + eps), so with PyTorch's 1e-5 its canonized network is another function (about 1e-5 relative
    on ResNet-18; measured with eps=1e-5: 1.0e-5 for EpsilonPlus).
    """
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus
    from zennit.torchvision import ResNetCanonizer
    model = _resnet18(1e-30)
    x = np.random.default_rng(0).random((2, 3, 32, 32))
    net = _onnx_graph(model, x)
    assert isinstance(net, L.Graph) and sum(isinstance(layer, L.Add) for layer in net) == 8
    assert not any(isinstance(layer, L.BatchNorm2d) for layer in net)  # all folded
    out = net.forward(x)
    np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    target = out.argmax(axis=1)
    seed = np.zeros_like(out)
    seed[np.arange(2), target] = out[np.arange(2), target]
    low, high = float(x.min()), float(x.max())
    t64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    cases = {"epsilon_plus": EpsilonPlus(canonizers=[ResNetCanonizer()]),
             "epsilon_alpha2_beta1": EpsilonAlpha2Beta1(canonizers=[ResNetCanonizer()]),
             "epsilon_gamma_box": EpsilonGammaBox(low=t64(low), high=t64(high), canonizers=[ResNetCanonizer()]),
             "gradient": None}
    for name, composite in cases.items():
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        if composite is None:
            _, theirs = Gradient(model=model)(xt, torch.from_numpy((seed != 0).astype(np.float64)))
            ours = L.methods.gradient(net, x, target).relevance
        else:
            with Gradient(model=model, composite=composite) as attributor:
                _, theirs = attributor(xt, torch.from_numpy(seed))
            ours = L.explain(net, x, target, composite=C.get(name, bounds=(low, high))).relevance
        theirs = theirs.detach().numpy()
        assert np.abs(ours - theirs).max() <= 1e-10 * np.abs(theirs).max(), name


@needs_zennit
def test_resnet18_graph_through_to_torch_and_compare():
    """verify.compare on a Graph: to_torch builds the same function (Add as Zennit's Sum)."""
    model = _resnet18(1e-5)
    x = np.random.default_rng(1).random((1, 3, 32, 32))
    net = _onnx_graph(model, x)
    rows = verify.compare(net, x, methods=["epsilon_plus", "epsilon_gamma_box", "zplus", "gradient"])
    assert all(r["passed"] for r in rows), [(r["method"], r["max_rel"]) for r in rows]


@needs_zennit
@pytest.mark.reference
def test_zoo_resnet50_layout_and_zennit_agreement():
    """zoo.resnet50 has ResNet-50's parameters with the batch norms folded (torchvision's 25,557,032
    less one number per BN channel, 26,560: a BN's scale and shift become the conv's bias), 16
    residual sums, and a small bottleneck network of the same layout agrees with Zennit."""
    from lrpnumpy import zoo
    full = zoo.resnet50(dtype=np.float32)
    assert sum(p.size for layer in full for p in (getattr(layer, "weight", None), getattr(layer, "bias", None))
               if p is not None) == 25_557_032 - 26_560
    assert sum(isinstance(layer, L.Add) for layer in full) == 16
    small = zoo.resnet50(blocks=(1, 1, 1, 1), num_classes=10)
    x = np.random.default_rng(2).random((2, 3, 64, 64))
    rows = verify.compare(small, x, methods=["epsilon_plus", "epsilon_alpha2_beta1", "gradient"])
    assert all(r["passed"] for r in rows), [(r["method"], r["max_rel"]) for r in rows]


@needs_zennit
@pytest.mark.reference
def test_dense_layers_in_row_blocks_give_zennit_the_same_relevance(monkeypatch):
    """compare() hands Zennit large dense layers as blocks of output neurons (to bound its memory);
    the function and every method's relevance stay the same.  The first dense layer of an MLP
    (a composite's first layer) is never split."""
    net = L.Sequential(L.Conv2d(1, 3, 3, rng=0), L.ReLU(), L.Flatten(), L.Linear(108, 50, rng=1), L.ReLU(),
                       L.Linear(50, 7, rng=2))
    x = np.random.default_rng(0).random((3, 1, 8, 8))
    monkeypatch.setattr(verify, "SPLIT_BYTES", 8 * 108 * 7)  # 7 rows a block: 8 blocks for 50 outputs
    t = verify.to_torch(net, copy=False, split_bytes=verify.SPLIT_BYTES)
    blocks = [m for m in t.modules() if type(m).__name__ == "RowBlocks"]
    assert len(blocks) == 1 and [b.out_features for b in blocks[0].blocks] == [7] * 7 + [1]
    import torch
    with torch.no_grad():
        np.testing.assert_allclose(t(torch.from_numpy(x)).numpy(), net.forward(x), rtol=1e-13)
    rows = verify.compare(net, x)
    assert len(rows) == 20 and all(r["passed"] for r in rows), [(r["method"], r["max_rel"]) for r in rows]
    mlp = L.Sequential(L.Flatten(), L.Linear(64, 50, rng=1), L.ReLU(), L.Linear(50, 7, rng=2))
    layers = list(verify.to_torch(mlp, split_bytes=8).layers)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "RowBlocks"]


OTHER_METHODS = ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "deeplift", "guided_backprop",
                 "deconvnet", "occlusion", "grad_cam"]


@needs_zennit
@needs_captum
@pytest.mark.reference
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_other_methods_against_captum_and_zennit(seed, bias):
    """Captum's Saliency, InputXGradient, IntegratedGradients, NoiseTunnel, DeepLift, GuidedBackprop,
    Deconvolution, Occlusion, LayerGradCam and Zennit's GuidedBackprop/DeconvNet composites and Occlusion
    attributor, on random networks with conv (stride, padding), max and average pooling and linear layers:
    1e-10 relative (Captum's occlusion, which it rounds to float32: 1e-6)."""
    import sys
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from test_methods import cnn
    rng = np.random.default_rng(seed)
    net, x = cnn(rng, bias), rng.random((3, 2, 8, 8))
    rows = verify.compare(net, x, against=("captum", "zennit"), methods=OTHER_METHODS)
    assert {(r["against"], r["method"]) for r in rows} == \
        {("captum", m) for m in OTHER_METHODS} | {("zennit", m) for m in OTHER_METHODS[:4] + OTHER_METHODS[5:8]}
    for r in rows:
        bound = 1e-6 if (r["against"], r["method"]) == ("captum", "occlusion") else 1e-10
        assert r["passed"] and r["max_rel"] <= bound, (r["against"], r["method"], r["max_rel"])
    # a wrong convention is caught: Zennit's occlusion against lrpnumpy's default (Captum's) convention
    target = L.methods.gradient(net, x).target
    ctx = __import__("types").SimpleNamespace(net=net, tnet=verify.to_torch(net), x=x, target=target,
                                              onehot=np.eye(3)[target])
    theirs = verify.CASES[("zennit", "occlusion")]["theirs"](ctx)
    ours = L.methods.occlusion(net, x, ctx.target, window=3, stride=2).relevance
    assert np.abs(ours - theirs).max() > 0.1 * np.abs(theirs).max()


@needs_zennit
@needs_captum
@pytest.mark.reference
def test_chunks_give_the_same_comparison():
    """compare(chunk=1) explains one sample at a time on both sides (to bound memory): same numbers."""
    net, x = make_net("cnn_max_avg", 0, True)
    methods = ["epsilon_gamma_box", "smoothgrad", "integrated_gradients", "deeplift", "occlusion", "zbox"]
    whole = verify.compare(net, x, against=("zennit", "captum"), methods=methods)
    one = verify.compare(net, x, against=("zennit", "captum"), methods=methods, chunk=1)
    assert [(r["method"], r["against"]) for r in whole] == [(r["method"], r["against"]) for r in one]
    for a, b in zip(whole, one):
        assert a["passed"] and b["passed"], (a["method"], a["max_rel"], b["max_rel"])
        np.testing.assert_allclose(b["sums_lrpnumpy"], a["sums_lrpnumpy"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(b["sums_reference"], a["sums_reference"], rtol=1e-12, atol=1e-15)


def _crp_available():
    try:
        from crp.attribution import CondAttribution  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import failure: not available
        return False


@needs_zennit
@pytest.mark.reference
@pytest.mark.skipif(not _crp_available(), reason="zennit-crp is not installed (see README, Reference implementations)")
@pytest.mark.parametrize("layer, channels", [(3, [2]), (3, [0, 4]), (0, [1])])
def test_filtering_by_channel_agrees_with_zennit_crp(layer, channels):
    """zennit-crp's CondAttribution with a channel condition on a layer is lrpnumpy's explain with a
    channel mask on that layer's output (EpsilonPlus; CRP's heatmap sums the input channels)."""
    import torch
    from crp.attribution import CondAttribution
    import sys
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from test_methods import cnn
    rng = np.random.default_rng(layer)
    net, x = cnn(rng), rng.random((3, 2, 8, 8))
    target = L.methods.gradient(net, x).target
    tnet = verify.to_torch(net)
    name = f"layers.{layer}"  # no Flatten before these layers, so torch's index is lrpnumpy's
    conditions = [{"y": [int(t)], name: channels} for t in target]
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    theirs = CondAttribution(tnet)(xt, conditions, verify._zennit_composite("epsilon_plus", 0.0, 1.0)).heatmap.numpy()
    shape = net[:layer + 1].output_shape((1, 2, 8, 8))[1:]
    ours = L.explain(net, x, target, composite=L.EpsilonPlus(),
                     mask={layer: L.methods.channel_mask(shape, channels)}).relevance.sum(axis=1)
    assert np.abs(ours - theirs).max() <= 1e-10 * np.abs(theirs).max()


# ----- ill-conditioned comparisons, rows a reference cannot run, exit statuses -----

def _mirror(a):
    """``a`` made left-right symmetric (exactly: (u + v) / 2 == (v + u) / 2)."""
    return (a + a[..., ::-1]) / 2


def _residual_on_real_images(mirrored=True, n=3):
    """A small residual Graph with the shipped CNN's first convolution, on shipped Fashion-MNIST images.

    Mirrored, the image and the kernels are symmetric: a pixel's convolution and its mirror image's
    are the same products summed in reverse order, equal in exact arithmetic and a few ulps apart in
    floating point, and a max-pool window with padding 1 holds both (columns 13 and 14).  lrpnumpy
    and PyTorch sum in different orders, so they rank such taps differently in many windows."""
    net = L.io.load_model(L.datasets.DATA_DIR + "/fashion_cnn_maxpool.npz").astype(np.float64)
    rng = np.random.default_rng(0)
    c1 = net[0]
    c2 = L.Conv2d(16, 16, 3, padding=1, rng=rng).astype(np.float64)
    if mirrored:
        c1.weight, c2.weight = _mirror(c1.weight), _mirror(c2.weight)
    g = L.Graph([("conv1", c1, "input"), ("relu1", L.ReLU(), "conv1"), ("conv2", c2, "relu1"),
                 ("add", L.Add(), ["conv2", "relu1"]), ("relu2", L.ReLU(), "add"),
                 ("pool", L.MaxPool2d(2, padding=1), "relu2"), ("flat", L.Flatten(), "pool"),
                 ("fc", L.Linear(16 * 15 * 15, 10, rng=rng).astype(np.float64), "flat")], input_shape=(1, 28, 28))
    x = L.datasets.sample().images[::100][:n]
    return g, (_mirror(x) if mirrored else x)


@pytest.mark.reference
@needs_zennit
@needs_captum
def test_near_ties_make_rows_ill_conditioned_not_failed():
    """The issue's case on shipped images: the max pool's near-ties are ranked differently by lrpnumpy and
    PyTorch, so the gradient and LRP differ by 10-40 %; compare finds the near-ties on both sides (by layer,
    with how many each side decides differently), re-runs the reference on lrpnumpy's forward values (every
    tie broken alike: then they agree to 1e-10) and reports the rows ill-conditioned, not FAIL."""
    g, x = _residual_on_real_images()
    ties = verify.near_ties(g, x)
    [(layer, kind, count, flipped)] = ties["layers"]
    assert (layer, kind) == ("pool (MaxPool2d)", "max-pool windows") and count == ties["total"] > 0
    assert 0 < flipped <= count and len(ties["per_sample"]) == len(x) and all(ties["per_sample"])
    rows = verify.compare(g, x, against=("zennit", "captum"), methods=["gradient", "epsilon_plus"])
    assert [(r["against"], r["method"]) for r in rows] == [("zennit", "gradient"), ("zennit", "epsilon_plus"),
                                                            ("captum", "gradient")]
    for r in rows:
        assert r["max_rel"] > 1e-3  # as computed, far outside rtol 1e-10: FAIL before
        assert r["status"] == "ill-conditioned" and not r["passed"], (r["method"], r["status"], r["reason"])
        assert r["reason"] == f"ill-conditioned ({count} near-ties)" and r["near_ties"] == count
        assert r["max_rel_ties_alike"] <= 1e-10 and r["tie_layers"] == ties["layers"]
    assert verify.exit_status(rows) == 0
    text = verify.format_rows(rows, 1e-10)
    assert f"ill-conditioned ({count} near-ties)" in text and "3 ill-conditioned" in text
    assert f"pool (MaxPool2d): {count} max-pool windows, {flipped} decided differently" in text
    # the images as shipped (not symmetric): here 14 near-ties and 0.12 relative for the gradient, not a FAIL
    g, x = _residual_on_real_images(mirrored=False)
    [row] = verify.compare(g, x, methods=["gradient"])
    assert row["status"] in ("pass", "ill-conditioned"), (row["max_rel"], row["reason"])


@pytest.mark.reference
@needs_zennit
def test_a_wrong_result_still_fails_among_near_ties(monkeypatch):
    """Near-ties do not excuse a genuine difference: with lrpnumpy's gradient perturbed in one pixel the
    row stays FAIL, also with the ties broken alike, and says so."""
    g, x = _residual_on_real_images()
    original = verify._run_lrpnumpy

    def perturbed(*args):
        r = original(*args)
        r[0, 0, 5, 5] += 1e-6 * np.abs(r).max()
        return r
    monkeypatch.setattr(verify, "_run_lrpnumpy", perturbed)
    [row] = verify.compare(g, x, methods=["gradient"])
    assert row["status"] == "FAIL" and not row["passed"] and row["near_ties"] > 0
    assert 1e-7 < row["max_rel_ties_alike"] < 1e-5 and "broken alike too" in row["reason"]
    assert verify.exit_status([row]) == 1 and "failures:" in verify.format_rows([row], 1e-10)


@pytest.mark.reference
@needs_zennit
def test_well_conditioned_real_images_still_pass():
    """The shipped max-pooling CNN on shipped images has no near-ties against PyTorch (exact ties of the
    black background are computed bitwise alike on both sides and not counted): every row passes."""
    net = L.io.load_model(L.datasets.DATA_DIR + "/fashion_cnn_maxpool.npz")
    x = L.datasets.sample().images[::250]
    assert verify.near_ties(net.astype(np.float64), x)["total"] == 0
    rows = verify.compare(net, x, methods=["gradient", "epsilon_plus", "zplus"])
    assert all(r["status"] == "pass" and r["passed"] and r["near_ties"] is None for r in rows), rows
    assert verify.exit_status(rows) == 0


def test_near_tie_criteria():
    """Which decisions count as near-ties: values on both sides of 0 or within their difference of it; a
    max-pool window whose contenders each side ranks differently; not exact ties both sides see alike."""
    eps = np.finfo(np.float64).eps
    a = np.array([1e-17, 0.0, 1.0, 0.0, 0.0, -3e-17])
    b = np.array([-1e-17, 0.0, 1.0 + eps, 1e-18, 0.0, -1e-17])
    near, flip = verify._near_zero(a, b)
    assert near.tolist() == [True, False, False, True, False, True]
    assert flip.tolist() == [True, False, False, True, False, False]
    pool = L.MaxPool2d(2)
    v = 0.1
    up = np.nextafter(v, 1.0)
    ours = np.array([[[[v, up], [0.0, 0.0]], [[v, v], [0.0, 0.0]], [[v, v], [0.0, 0.0]], [[0.5, v], [0.0, 0.0]]]])
    theirs = np.array([[[[up, v], [0.0, 0.0]], [[v, v], [0.0, 1e-18]], [[up, up], [0.0, 0.0]],
                        [[0.5, up], [0.0, 0.0]]]])
    near, flip = verify._pool_ties(pool, ours, theirs)
    # 0: ranked differently; 1: an exact tie both sides see alike (another tap differs); 2: both taps moved
    # alike (still a tie on each side); 3: no contest
    assert near.ravel().tolist() == [True, False, False, False] and flip.ravel().tolist() == [True, False, False,
                                                                                               False]
    windows = verify._pool_windows(L.MaxPool2d(3, 2, padding=1, ceil_mode=True), np.arange(25.0).reshape(1, 1, 5, 5))
    assert windows.shape == (1, 1, 3, 3, 9) and windows[0, 0, 0, 0].tolist().count(-np.inf) == 5
    assert windows[0, 0, 2, 2].max() == 24.0


@pytest.mark.reference
@needs_zennit
@needs_captum
def test_rows_a_reference_cannot_run_say_why(tmp_path, capsys, monkeypatch):
    """A graph with a residual sum: Captum's LRP has no rule for Zennit's Sum module.  Its rows are n/a
    with the reason, the other rows are compared, the table and the exit status follow (0: nothing
    failed).  Any other exception from a reference is reported in its row too; one from lrpnumpy that is
    not an lrpnumpy error is a FAIL."""
    import sys
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from test_graph import graph
    g = graph("residual")
    x = np.random.default_rng(0).random((2, 4, 6, 6))
    rows = verify.compare(g, x, against=("zennit", "captum"), methods=["epsilon", "gamma", "gradient"])
    status = {(r["against"], r["method"]): (r["status"], r["reason"]) for r in rows}
    assert status[("captum", "epsilon")] == status[("captum", "gamma")] == ("n/a", "n/a: captum has no rule for Sum")
    assert status[("captum", "gradient")][0] == status[("zennit", "epsilon")][0] == "pass"
    na = next(r for r in rows if r["status"] == "n/a")
    assert na["max_rel"] is None and not na["passed"] and verify.exit_status(rows) == 0
    assert verify.exit_status([na]) == 1  # nothing compared: not a success
    L.io.save(g, tmp_path / "g.npz")
    np.save(tmp_path / "x.npy", x)
    code = main(["verify", str(tmp_path / "g.npz"), "--input", str(tmp_path / "x.npy"), "--against", "zennit",
                 "captum", "--rules", "epsilon", "gradient"])
    out = capsys.readouterr()
    assert code == 0 and "n/a: captum has no rule for Sum" in out.out and "Traceback" not in out.err
    assert "3 pass, 1 n/a" in out.out

    def broken(*args):
        raise RuntimeError("a reference bug\nwith two lines")
    monkeypatch.setattr(verify, "_run_zennit", broken)
    [row] = verify.compare(g, x, methods=["epsilon"])
    assert row["status"] == "n/a" and row["reason"] == "n/a: zennit cannot run it (RuntimeError: a reference bug " \
                                                       "with two lines)"
    monkeypatch.setattr(verify, "_run_lrpnumpy", lambda *args: np.zeros(3)[5])
    [row] = verify.compare(g, x, methods=["epsilon"])
    assert row["status"] == "FAIL" and row["reason"].startswith("lrpnumpy raised IndexError")
    code = main(["verify", str(tmp_path / "g.npz"), "--input", str(tmp_path / "x.npy"), "--rules", "epsilon"])
    assert code == 1 and "lrpnumpy raised IndexError" in capsys.readouterr().out


def test_verify_names_the_expected_input_shape(tmp_path, capsys):
    """An input the model cannot take: one line naming the model's input shape, exit 2 (no traceback from
    deep inside a layer); inputs of other sizes the model can take are still accepted."""
    assert main(["verify", "toolbox_lenet", "--input", L.datasets.DATA_DIR + "/sample_input.npy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "toolbox_lenet expects 1 x 32 x 32 inputs" in err and "(1, 1, 28, 28)" in err
    with pytest.raises(L.errors.ShapeError, match=r"expects 1 x 32 x 32 per sample"):
        verify.compare(L.zoo.toolbox_lenet(), np.zeros((2, 1, 28, 28)))
    gap = L.Sequential(L.Conv2d(1, 2, 3, rng=0), L.ReLU(), L.GlobalAvgPool2d(), L.Flatten(), L.Linear(2, 2, rng=1),
                       input_shape=(1, 8, 8))
    verify._check_input_shape(gap, np.zeros((1, 1, 12, 12)))  # runs at 12 x 12 too: accepted


def test_near_ties_by_layer_with_a_reference_that_rounds_otherwise():
    """near_ties on a chain whose first output is 0 in exact arithmetic: a reference that computes it as
    1e-17 (as another summation order may) decides its ReLU and its stabilizer's sign differently; both
    are counted, by layer and sample.  Values equal on both sides are not."""
    pytest.importorskip("torch")
    net = L.Sequential(L.Linear(3, 2, rng=0), L.ReLU(), L.Linear(2, 2, rng=1))
    net[0].weight = np.array([[1.0, -1.0, 0.0], [0.5, 0.25, 1.0]])
    net[0].bias = np.zeros(2)
    x = np.array([[0.3, 0.3, 0.1], [0.2, 0.7, 0.4]])

    class Reference:  # lrpnumpy's values, but sample 0's first unit computed as 1e-17
        record = None

        def __call__(self, xt):
            _, trace = net.forward_trace(xt.detach().numpy())
            outputs = [step.output.copy() for step in trace]
            outputs[0][0, 0] = outputs[1][0, 0] = 1e-17
            outputs[2] = net[2].forward(outputs[1])
            self.record.extend(outputs)

    ties = verify.near_ties(net, x, Reference())
    assert net.forward_trace(x)[1][0].output[0, 0] == 0.0
    assert ties["layers"][:2] == [("layer 0 (Linear)", "denominators at 0", 1, 1),
                                  ("layer 1 (ReLU)", "ReLU inputs at 0", 1, 1)]
    assert ties["per_sample"][1] == 0 and ties["per_sample"][0] == ties["total"] >= 2
    assert ties["forward_layer"] and ties["forward_rel"] > 0


@needs_zennit
def test_a_network_without_a_torch_equivalent_gives_na_rows():
    """Asymmetric padding has no PyTorch equivalent: every row against the reference is n/a with the
    reason (a table, exit status 1: nothing was compared), not an exception."""
    net = L.Sequential(L.Conv2d(1, 2, 3, padding=(0, 1, 0, 0), rng=0), L.ReLU(), L.Flatten(),
                       L.Linear(2 * 4 * 5, 3, rng=1))
    rows = verify.compare(net, np.random.default_rng(0).random((2, 1, 6, 6)), methods=["epsilon", "gradient"])
    assert [r["status"] for r in rows] == ["n/a", "n/a"] and verify.exit_status(rows) == 1
    assert all("asymmetric padding has no direct PyTorch equivalent" in r["reason"] for r in rows)
    assert "2 n/a" in verify.format_rows(rows, 1e-10)


_USER_MODULE = '''
import torch


class Net(torch.nn.Module):
    """A user's module: a BatchNorm after the first convolution and a residual `a + b` in forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.conv2(a))
        return self.fc((a + b).flatten(1))


def make():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.weight.uniform_(0.5, 1.5)
        net.bn1.bias.uniform_(-0.3, 0.3)
    return net.eval()
'''


def _user_module(tmp_path):
    import importlib.util
    (tmp_path / "user_net.py").write_text(_USER_MODULE)
    spec = importlib.util.spec_from_file_location("user_net", tmp_path / "user_net.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code.make()


@pytest.mark.reference
@needs_zennit
def test_compare_against_the_users_own_torch_module(tmp_path):
    """verify.compare(..., torch_module=m): Zennit on the user's module, canonized (BatchNorm merged, `a + b`
    made Zennit's Sum), agrees to 1e-10, and the rows say what was applied; uncanonized it does not."""
    import torch
    module = _user_module(tmp_path)
    x = np.random.default_rng(0).random((2, 1, 6, 6))
    net = L.io.from_torch(module, x)
    methods = ["epsilon", "epsilon_plus", "zplus", "gradient"]
    rows = verify.compare(net, x, methods=methods, torch_module=module)
    assert [r["method"] for r in rows] == methods
    assert all(r["status"] == "pass" for r in rows), [(r["method"], r["max_rel"]) for r in rows]
    note = rows[0]["note"]
    assert "NamedMergeBatchNorm): bn1 into conv1" in note and "replaced 1 + by zennit.layer.Sum" in note
    assert module.bn1.running_var.dtype == torch.float32  # the user's module is not changed
    raw = {r["method"]: r for r in verify.compare(net, x, methods=methods, torch_module=module,
                                                  canonize_module=False)}
    assert raw["gradient"]["status"] == "pass"  # the same function: only the rules differ
    assert all(raw[m]["status"] == "FAIL" and raw[m]["max_rel"] > 0.1 for m in ("epsilon", "epsilon_plus", "zplus"))
    assert "Zennit needs it canonized" in raw["epsilon"]["reason"]
    canonized, applied = verify.canonize(module, x)
    assert any(isinstance(m, __import__("zennit.layer", fromlist=["Sum"]).Sum) for m in canonized.modules())
    np.testing.assert_allclose(canonized(torch.from_numpy(x)).detach().numpy(), net.forward(x), rtol=1e-12)
    other = _user_module(tmp_path)
    with torch.no_grad():
        other.fc.bias += 1.0
    with pytest.raises(L.errors.ModelFormatError, match="compute different outputs"):
        verify.compare(net, x, methods=["epsilon"], torch_module=other)


@pytest.mark.reference
@needs_zennit
def test_verify_command_on_a_torch_module_file(tmp_path, capsys):
    _user_module(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 1, 6, 6)))
    spec = f"{tmp_path / 'user_net.py'}:make"
    assert main(["verify", spec, "--input", str(tmp_path / "x.npy"), "--rules", "epsilon_plus", "zplus"]) == 0
    out = capsys.readouterr().out
    assert out.count(" pass") >= 2 and "bn1 into conv1" in out and "zennit.layer.Sum" in out
    assert main(["verify", spec, "--rules", "zplus"]) == 2
    assert "needs --input" in capsys.readouterr().err
    assert main(["verify", f"{tmp_path / 'user_net.py'}:nope", "--input", str(tmp_path / "x.npy")]) == 2
    assert "has no 'nope'" in capsys.readouterr().err


@pytest.mark.reference
@needs_zennit
def test_canonize_says_what_it_left():
    """A + with a parameter is a bias (not rewritten), a broadcasting + is left and said, and a module torch.fx
    cannot trace is used as it is, saying so."""
    import torch

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)
            self.shift = torch.nn.Parameter(torch.ones(1, 2, 4, 4))

        def forward(self, x):
            y = self.conv(x) + self.shift
            return (y + y.mean(dim=(2, 3), keepdim=True)).flatten(1)

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) if x.sum() > 0 else -x.flatten(1)

    x = np.random.default_rng(0).random((2, 1, 6, 6))
    module, applied = verify.canonize(Odd(), x)
    assert applied[0].startswith("nothing to rewrite") and "summands' shapes differ" in applied[1]
    assert not any(type(m).__name__ == "Sum" for m in module.modules())
    module, applied = verify.canonize(Untraceable(), x)
    assert len(applied) == 1 and applied[0].startswith("none: torch.fx cannot trace the module")
