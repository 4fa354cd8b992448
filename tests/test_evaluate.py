"""Evaluation metrics against values computed by hand on tiny cases."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import evaluate as E, incremental, methods as M, zoo
from lrpnumpy.errors import LRPError


def pixel_sum_model(h=1, w=3, scale=None):
    """f_0(x) = sum of the pixels (times ``scale`` per pixel); f_1 = 0: a conv with one 1 x 1 kernel."""
    lin = L.Linear(h * w, 2, bias=False)
    lin.weight = np.stack([np.ones(h * w) if scale is None else np.asarray(scale, float), np.zeros(h * w)])
    return L.Sequential(L.Flatten(), lin)


def test_auc_and_aopc_of_a_three_pixel_example():
    """x = (3, 1, 2), f = 2 x_0 + x_1 + 4 x_2, relevance = gradient x input = (6, 1, 8): MoRF removes
    pixel 2 (f: 15 -> 7), then 0 (-> 1), then 1 (-> 0)."""
    net = pixel_sum_model(scale=[2, 1, 4])
    x = np.array([[[[3.0, 1.0, 2.0]]]])
    R = M.gradient_x_input(net, x, 0).relevance
    np.testing.assert_array_equal(R, [[[[6.0, 1.0, 8.0]]]])
    r = E.pixel_flipping(net, x, R, target=0)
    np.testing.assert_array_equal(r.curves, [[15.0, 7.0, 1.0, 0.0]])
    np.testing.assert_array_equal(r.fractions, [0, 1 / 3, 2 / 3, 1])
    # AUC by the trapezoidal rule: 1/3 * ((15 + 7) / 2 + (7 + 1) / 2 + (1 + 0) / 2) = 31 / 6
    np.testing.assert_allclose(r.auc(), [31 / 6], rtol=1e-15)
    # AOPC = 1/4 * ((15 - 15) + (15 - 7) + (15 - 1) + (15 - 0)) = 37 / 4
    np.testing.assert_allclose(r.aopc(), [37 / 4], rtol=1e-15)
    lerf = E.pixel_flipping(net, x, R, target=0, order="lerf")
    np.testing.assert_array_equal(lerf.curves, [[15.0, 14.0, 8.0, 0.0]])
    two = E.pixel_flipping(net, x, R, target=0, features_per_step=2)
    np.testing.assert_array_equal(two.curves, [[15.0, 1.0, 0.0]])
    np.testing.assert_array_equal(two.fractions, [0, 2 / 3, 1])
    one = E.pixel_flipping(net, x, R, target=0, steps=1, fill=1.0)
    np.testing.assert_array_equal(one.curves, [[15.0, 11.0]])  # pixel 2 replaced by 1: 15 - 8 + 4


def test_morf_curve_of_the_pixel_sum_model_is_non_increasing(rng):
    """Scoring the sum of positive pixels, removing positive relevance (gradient x input = x) first:
    every step lowers the score, the largest drops come first."""
    net = pixel_sum_model(6, 6)
    x = rng.random((4, 1, 6, 6))
    R = M.gradient_x_input(net, x, 0).relevance
    r = E.pixel_flipping(net, x, R, target=0, features_per_step=3)
    drops = -np.diff(r.curves, axis=1)
    assert (drops >= 0).all() and (np.diff(drops, axis=1) <= 1e-12).all()
    assert np.allclose(r.curves[:, -1], 0)  # everything removed (fill 0)
    # MoRF falls at least as fast as any other order: its AOPC is the largest
    for order in ("lerf", "random"):
        other = E.pixel_flipping(net, x, R, target=0, features_per_step=3, order=order, rng=0)
        assert (r.aopc() >= other.aopc() - 1e-12).all()


def test_patches_fills_probability_and_chunks(rng):
    net = pixel_sum_model(5, 5)
    x = rng.random((2, 1, 5, 5))
    R = rng.normal(size=x.shape)
    r = E.pixel_flipping(net, x, R, target=0, patch=2)  # a 3 x 3 grid of patches (edges smaller)
    assert r.curves.shape == (2, 10) and r.params["features"] == 9
    feature = np.add.reduceat(np.add.reduceat(R[:, 0], [0, 2, 4], axis=1), [0, 2, 4], axis=2).reshape(2, 9)
    first = np.argmax(feature, axis=1)
    for i in range(2):
        rows, cols = divmod(first[i], 3)
        kept = x[i, 0].copy()
        kept[2 * rows:2 * rows + 2, 2 * cols:2 * cols + 2] = 0
        np.testing.assert_allclose(r.curves[i, 1], kept.sum(), rtol=1e-12)
    np.testing.assert_allclose(E.pixel_flipping(net, x, R, 0, patch=2, batch_size=1).curves, r.curves, rtol=1e-15)
    mean = E.pixel_flipping(net, x, R, 0, fill="mean")
    np.testing.assert_allclose(mean.curves[:, -1], x.sum(axis=(1, 2, 3)), rtol=1e-12)  # all pixels = the mean
    p = E.pixel_flipping(net, x, R, 0, output="probability", steps=2)
    logits = net.forward(x)
    np.testing.assert_allclose(p.curves[:, 0], 1 / (1 + np.exp(logits[:, 1] - logits[:, 0])), rtol=1e-12)
    u1 = E.region_perturbation(net, x, R, 0, patch=2, rng=3)
    u2 = E.region_perturbation(net, x, R, 0, patch=2, rng=3)
    np.testing.assert_array_equal(u1.curves, u2.curves)
    s = E.selectivity(net, x, R, 0, patch=2)
    np.testing.assert_array_equal(s.curves, r.curves)


def _first_layer_nets(rng):
    conv = L.Sequential(L.Conv2d(3, 4, 3, stride=2, padding=(1, 0, 2, 1), dilation=(1, 2), rng=rng), L.ReLU(),
                        L.MaxPool2d(2), L.Flatten(), L.Linear(4 * 2 * 2, 5, rng=rng))
    mlp = L.Sequential(L.Flatten(), L.Linear(3 * 8 * 9, 6, rng=rng), L.ReLU(), L.Linear(6, 4, rng=rng))
    for net in (conv, mlp):
        net[0 if net is conv else 1].bias = rng.normal(size=net[0 if net is conv else 1].bias.shape)
    return conv, mlp


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", [dict(features_per_step=2), dict(features_per_step=1, patch=2, fill="uniform"),
                                     dict(features_per_step=3, fill="blur", order="lerf", steps=9),
                                     dict(features_per_step=5, fill="mean", output="probability", batch_size=7)])
def test_first_layer_updates_equal_recomputing(options, dtype, rng):
    """The incremental first layer (its output plus the effect of each step's changed pixels) gives the
    scores of recomputing every perturbed input, for a strided, dilated, asymmetrically padded conv
    and for Flatten + Linear."""
    x = rng.random((3, 3, 8, 9)).astype(dtype)
    R = rng.normal(size=x.shape).astype(dtype)
    for net in _first_layer_nets(rng):
        net = net.astype(dtype)
        assert incremental.plan(net, x.shape[1:], options["features_per_step"], options.get("patch", 1))
        a = E.pixel_flipping(net, x, R, 1, rng=4, **options)
        b = E.pixel_flipping(net, x, R, 1, rng=4, incremental=False, **options)
        assert a.curves.dtype == b.curves.dtype and a.curves.shape == b.curves.shape
        np.testing.assert_allclose(a.curves, b.curves, rtol=1e-12 if dtype == np.float64 else 2e-5,
                                   atol=(1e-12 if dtype == np.float64 else 2e-5) * np.abs(b.curves).max())


def _local_net(rng):
    """Every local layer kind the perturbation path updates: convolutions (padded, strided, dilated),
    ReLU and Tanh, max pooling (padded, overlapping, ceil mode) and scaled sum pooling."""
    net = L.Sequential(L.Conv2d(2, 3, 3, padding=(1, 0, 2, 1), rng=rng), L.ReLU(),
                       L.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                       L.Conv2d(3, 4, 3, stride=(1, 2), padding=2, dilation=(2, 1), rng=rng), L.Tanh(),
                       L.SumPool2d(2, scale=0.25), L.Conv2d(4, 2, 2, padding=1, rng=rng), L.Flatten())
    for layer in (net[0], net[3], net[6]):
        layer.bias = rng.normal(size=layer.bias.shape)
    return net


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_perturbation_path_equals_the_forward_pass_at_every_step(dtype, rng):
    """After each step, the path's output (each local layer updated where the step's change reaches)
    is the forward pass of the perturbed input (1e-12 float64): one and several pixels per step, a
    fill that leaves some pixels unchanged (those change nothing downstream)."""
    net = _local_net(rng).astype(dtype)
    x = rng.normal(size=(3, 2, 11, 13)).astype(dtype)
    x[:, :, :4] = 0  # pixels already at the fill value
    n, c, h, w = x.shape
    values = np.zeros((n, c, h * w), dtype)
    for per_step in (1, 7):
        removed_at = np.argsort(rng.random((n, h * w)), axis=1) // per_step + 1
        steps = removed_at.max()
        path = incremental.PerturbationPath(net, x, values, removed_at, steps, 7)
        for k in range(1, steps + 1):
            out = path.as_input(path.after(k))
            xk = np.where((removed_at <= k)[:, None, :], values, x.reshape(n, c, -1)).reshape(x.shape)
            expected = net[:7].forward(xk)
            tol = 1e-12 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * np.abs(expected).max(), err_msg=f"step {k}")


@pytest.mark.parametrize("incremental_", [True, False])
@pytest.mark.parametrize("options", [dict(features_per_step=1), dict(features_per_step=3, patch=2, order="lerf"),
                                     dict(features_per_step=2, batch_size=4)])
def test_curves_are_the_scores_of_every_perturbed_input(options, incremental_, rng):
    """Steps that remove only pixels already at the fill value are not scored again (their score is the
    step before's); every point of the curves is still the network's score of that step's input."""
    net = _first_layer_nets(rng)[0]
    x = rng.random((3, 3, 8, 9))
    x[:, :, 3:] = 0  # a black background, filled with black: most steps change nothing
    R = rng.normal(size=x.shape)
    res = E.pixel_flipping(net, x, R, 1, incremental=incremental_, **options)
    n, c, h, w = x.shape
    patch, fps = options.get("patch", 1), options["features_per_step"]
    feature = ((np.arange(h) // patch)[:, None] * -(-w // patch) + np.arange(w) // patch).ravel()
    score = np.zeros((n, feature.max() + 1))
    np.add.at(score.T, feature, R.sum(1).reshape(n, -1).T)
    order = np.argsort(score if options.get("order") == "lerf" else -score, axis=1, kind="stable")
    for k in range(res.curves.shape[1]):
        xk = x.copy()
        for i in range(n):
            gone = np.isin(feature, order[i, :k * fps]).reshape(h, w)
            xk[i][:, gone] = 0
        np.testing.assert_allclose(res.curves[:, k], net.forward(xk)[:, 1], rtol=1e-12, atol=1e-12, err_msg=f"step {k}")


def test_incremental_plan_follows_how_far_a_step_spreads():
    """lenet5 on 28 x 28: one pixel per step reaches few enough positions for conv, ReLU, pool and the
    second conv to be updated (its 7 x 7 of 10 x 10 outputs are not); 16 pixels, the first conv only;
    Flatten + Linear as one; a Graph or a step changing over an eighth of the image, none."""
    net = zoo.lenet5(seed=0)
    assert incremental.plan(net, (1, 28, 28), 1, 1) == 4
    assert incremental.plan(net, (1, 28, 28), 16, 1) == 1
    assert incremental.plan(net, (1, 28, 28), 99, 1) == 0
    assert incremental.plan(net, (1, 28, 28), 4, 5) == 0
    mlp = L.Sequential(L.Flatten(), L.Linear(784, 10), L.ReLU(), L.Linear(10, 2))
    assert incremental.plan(mlp, (1, 28, 28), 16, 1) == 2


def test_taps_and_reached_by_are_transposes(rng):
    """Every (output, tap) pair of a window layer appears once in the input's reached-by table."""
    for layer, (h, w) in [(L.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (7, 8)),
                          (L.Conv2d(1, 1, (3, 2), stride=(2, 1), padding=(2, 0, 1, 1), dilation=(1, 3)), (9, 6))]:
        oh, ow = layer.output_shape((1, 1, h, w))[2:]
        taps = incremental._taps(incremental._geometry(layer, h, w), h, w, oh, ow)
        table = incremental._reached_by(taps, h * w)
        pairs = {(int(i), int(o)) for o, row in enumerate(taps) for i in row if i >= 0}
        assert pairs == {(i, int(o)) for i, row in enumerate(table) for o in row if o < oh * ow}
        assert len(pairs) == (table < oh * ow).sum()


def test_pixel_flipping_leaves_its_inputs_alone(rng):
    """One channel: a channels-last copy of x is a view of x unless copied; the path must not write x."""
    net = zoo.lenet5(seed=0)
    x = rng.random((2, 1, 28, 28))
    R = rng.normal(size=x.shape)
    x0, R0 = x.copy(), R.copy()
    E.pixel_flipping(net, x, R, features_per_step=1, steps=20)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(R, R0)


def test_continuity_of_a_linear_models_gradient_x_input(rng):
    """R(x) = w * x for f = w.x, so ||R(x) - R(x')||_1 / ||x - x'||_2 = ||w * d||_1 / ||d||_2, d = x - x'."""
    net = L.Sequential(L.Flatten(), L.Linear(16, 2, rng=rng, bias=False))
    x = rng.random((2, 1, 4, 4))
    res = E.continuity(net, M.gradient_x_input, x, shifts=[(0, 1), (1, 1)], target=0)
    w = net[1].weight[0].reshape(1, 4, 4)
    points = [x, M.shift(x, 0, 1), M.shift(x, 1, 1)]
    expected = np.zeros(2)
    for i in range(3):
        for j in range(i + 1, 3):
            d = points[i] - points[j]
            expected = np.maximum(expected, np.abs(w * d).reshape(2, -1).sum(1) / np.sqrt((d ** 2).reshape(2, -1).sum(1)))
    np.testing.assert_allclose(res["continuity"], expected, rtol=1e-12)
    np.testing.assert_allclose(res["f"][:, 1], net.forward(points[1])[:, 0], rtol=1e-12)
    np.testing.assert_allclose(res["sum_relevance"], res["f"], rtol=1e-12)  # gradient x input is exact here


def test_class_sensitivity_randomization_and_context(rng):
    net = L.Sequential(L.Flatten(), L.Linear(16, 6, rng=rng), L.ReLU(), L.Linear(6, 3, rng=rng))
    x = rng.random((2, 1, 4, 4))
    cs = E.class_sensitivity(net, M.gradient, x)
    assert cs["similarity"].shape == (2, 3, 3) and np.allclose(np.diagonal(cs["similarity"], axis1=1, axis2=2), 1)
    # an explanation that ignores the class has sensitivity 0
    same = E.class_sensitivity(net, lambda model, v, t: L.Explanation(v.copy(), None), x)
    np.testing.assert_allclose(same["sensitivity"], 0, atol=1e-12)
    rc = E.randomization_check(net, M.gradient, x)
    assert rc["layers"] == [3, 1] and rc["similarity"].shape == (2, 2)
    assert (rc["similarity"] <= 1 + 1e-12).all()
    ind = E.randomization_check(net, M.gradient, x, order="independent")
    np.testing.assert_allclose(ind["similarity"][0], rc["similarity"][0])  # the first step is the same
    # Spearman with ties: (1, 2, 2) against (1, 2, 3) -> ranks (0, 1.5, 1.5) and (0, 1, 2)
    np.testing.assert_allclose(E.similarity(np.array([[1.0, 2, 2]]), np.array([[1.0, 2, 3]])), [np.sqrt(3) / 2])
    R = np.zeros((1, 1, 2, 2))
    R[0, 0] = [[3.0, -1.0], [1.0, 0.0]]
    region = np.array([[True, False], [False, False]])
    np.testing.assert_allclose(E.context(R, region), [1 / 4])
    np.testing.assert_allclose(E.context(R, region, kind="absolute"), [2 / 5])
    np.testing.assert_allclose(E.context(R, region, kind="signed"), [0.0])


@pytest.mark.parametrize("call", [
    lambda net, x, R: E.pixel_flipping(net, x, R[:, :, :2]),
    lambda net, x, R: E.pixel_flipping(net, x, R, order="best"),
    lambda net, x, R: E.pixel_flipping(net, x, R, fill="noise"),
    lambda net, x, R: E.pixel_flipping(net, x, R, fill=np.nan),
    lambda net, x, R: E.pixel_flipping(net, x, R, features_per_step=0),
    lambda net, x, R: E.pixel_flipping(net, x, R, patch=-1),
    lambda net, x, R: E.pixel_flipping(net, x, np.full_like(R, np.nan)),
    lambda net, x, R: E.pixel_flipping(net, x, R, target=9),
    lambda net, x, R: E.continuity(net, M.gradient, x, shifts=[]),
    lambda net, x, R: E.class_sensitivity(net, M.gradient, x, classes=[0]),
    lambda net, x, R: E.randomization_check(net, M.gradient, x, order="sideways"),
    lambda net, x, R: E.context(R, np.ones((3, 3), bool)),
])
def test_bad_arguments_raise_lrpnumpy_errors(rng, call):
    net = pixel_sum_model(4, 4)
    x = rng.random((2, 1, 4, 4))
    with pytest.raises(LRPError):
        call(net, x, rng.normal(size=x.shape))


def _quantus():
    try:
        import quantus  # noqa: F401
        from lrpnumpy import verify
        return verify.available("zennit") or verify.available("captum")
    except Exception:  # noqa: BLE001 - any import failure: not available
        return False


@pytest.mark.reference
@pytest.mark.skipif(not _quantus(), reason="quantus and torch are not installed (the 'reference' extra)")
def test_against_quantus():
    """Quantus 0.6 on the same torch model (to_torch, float32: Quantus casts inputs to float32), inputs and
    attributions: PixelFlipping, RegionPerturbation and Selectivity give lrpnumpy's curves with
    output="probability" (Quantus applies softmax) and fill = each image's minimum (its "black")."""
    import warnings
    import quantus
    from lrpnumpy import verify, zoo
    warnings.simplefilter("ignore")
    net = zoo.lenet5(seed=0).astype(np.float32)
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 28, 28)).astype(np.float32)
    y = net.forward(x).argmax(1)
    R = L.explain(net, x, y, composite=L.EpsilonPlus()).relevance
    tnet = verify.to_torch(net).float().eval()
    black = np.broadcast_to(x.min(axis=(1, 2, 3), keepdims=True), x.shape).copy()
    kw = dict(model=tnet, x_batch=x, y_batch=y, a_batch=R, device="cpu", softmax=True)

    def close(ours, theirs):
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 2e-6 * np.abs(theirs).max(), np.abs(ours - theirs).max()
    pf = E.pixel_flipping(net, x, R, y, features_per_step=28, output="probability", fill=black)
    theirs = np.array(quantus.PixelFlipping(features_in_step=28, disable_warnings=True)(**kw))
    close(pf.curves[:, 1:], theirs)  # Quantus's curve leaves out the unperturbed score
    # (Quantus's return_auc_per_sample is np.trapz(curve, dx=1), which NumPy 2.4 removed: it fails here)
    rp = E.region_perturbation(net, x, R, y, patch=4, steps=20, output="probability", fill=black)
    theirs = np.array(quantus.RegionPerturbation(patch_size=4, regions_evaluation=20, disable_warnings=True)(**kw))
    close(rp.curves[:, :1] - rp.curves[:, 1:], theirs)  # Quantus reports the drops
    sel = E.selectivity(net, x, R, y, patch=4, output="probability", fill=black)
    close(sel.curves[:, 1:], np.array(quantus.Selectivity(patch_size=4, disable_warnings=True)(**kw)))
    # the randomisation check's similarity: Quantus's Spearman correlation
    a, b = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))
    np.testing.assert_allclose(E.similarity(a, b), [quantus.similarity_func.correlation_spearman(u, v)
                                                    for u, v in zip(a, b)], rtol=1e-12)


def test_compare_makes_one_table(rng, tmp_path):
    net = L.Sequential(L.Conv2d(1, 3, 3, padding=1, rng=rng), L.ReLU(), L.Flatten(), L.Linear(3 * 36, 4, rng=rng))
    x = rng.random((3, 1, 6, 6))
    methods = {"lrp": lambda m, v, t: L.explain(m, v, t, composite=L.EpsilonPlus()), "gradient": M.gradient,
               "random": E.random_relevance}
    table = E.compare(net, x, methods, metrics=["pixel_flipping", "selectivity", "continuity"],
                      options={"pixel_flipping": {"features_per_step": 4}, "selectivity": {"patch": 2}})
    assert [r["method"] for r in table.rows] == ["lrp", "gradient", "random"]
    assert list(table.rows[0]) == ["method", "pixel_flipping_aopc", "pixel_flipping_auc", "selectivity_aopc",
                                   "selectivity_auc", "continuity"]
    t = net.forward(x).argmax(1)
    pf = E.pixel_flipping(net, x, M.gradient(net, x, t).relevance, t, features_per_step=4)
    np.testing.assert_allclose(table.per_sample["gradient"]["pixel_flipping_aopc"], pf.aopc(), rtol=1e-12)
    assert table.rows[1]["pixel_flipping_aopc"] == pytest.approx(pf.aopc().mean(), rel=1e-12)
    assert "gradient" in str(table) and table.to_csv().count("\n") == 4
    assert E.compare(net, x, methods, metrics=["class_sensitivity"]).rows[0]["class_sensitivity"] >= 0
    table.to_json(tmp_path / "t.json")
    fig = table.plot()
    assert len(fig.axes[0].lines) == 3
    with pytest.raises(LRPError):
        E.compare(net, x, methods, metrics=["accuracy"])
    with pytest.raises(LRPError):
        E.compare(net, x, {}, metrics=["pixel_flipping"])


def test_roar_and_kar_on_digits():
    """Digits (scikit-learn, 8 x 8): removing the pixels LRP ranks highest hurts a retrained model more
    than removing random ones; keeping them keeps more accuracy than keeping random ones."""
    pytest.importorskip("sklearn")
    tr, te = L.datasets.split(L.datasets.digits(), 0.25, seed=0)
    (xtr, ytr), (xte, yte) = (tr.images, tr.labels), (te.images, te.labels)

    def make(seed):
        return L.Sequential(L.Flatten(), L.Linear(64, 32, rng=seed), L.ReLU(), L.Linear(32, 10, rng=seed + 1))

    def lrp(model, x, t):
        return L.explain(model, x, t, composite=L.EpsilonPlus())
    kw = dict(fractions=[0.1], epochs=8, seed=0)
    explain_model = make(0)
    L.train.fit(explain_model, xtr, ytr, epochs=8, seed=0, progress=False)
    common = dict(explain_model=explain_model, progress=False, **kw)
    removed = E.roar(make, (xtr, ytr), (xte, yte), lrp, **common)
    removed_random = E.roar(make, (xtr, ytr), (xte, yte), E.random_relevance, **common)
    kept = E.kar(make, (xtr, ytr), (xte, yte), lrp, **common)
    kept_random = E.kar(make, (xtr, ytr), (xte, yte), E.random_relevance, **common)
    assert removed["original_accuracy"] > 0.85
    assert removed["accuracy"][0] < removed_random["accuracy"][0]
    assert kept["accuracy"][0] > kept_random["accuracy"][0]
    with pytest.raises(LRPError):
        E.roar(make, (xtr, ytr), (xte, yte), lrp, fractions=[1.5])


@pytest.mark.parametrize("incremental_", [True, False])
def test_pixel_flipping_interrupted_returns_the_steps_it_finished(incremental_, rng, monkeypatch):
    """Ctrl-C during a run (here: the third batch of scores) returns the steps scored before it, equal
    to the same steps of a full run, marked interrupted; the progress bar runs and closes."""
    net = _first_layer_nets(rng)[0]
    x = rng.random((3, 3, 8, 9))
    R = rng.normal(size=x.shape)
    full = E.pixel_flipping(net, x, R, 1, features_per_step=2, batch_size=4, incremental=incremental_)
    import lrpnumpy.evaluate.perturbation as P  # the scoring path's module
    calls, scores = [0], P._scores

    def interrupted_third(*args):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return scores(*args)
    monkeypatch.setattr(P, "_scores", interrupted_third)
    part = E.pixel_flipping(net, x, R, 1, features_per_step=2, batch_size=4, incremental=incremental_, progress=True)
    assert part.interrupted and not full.interrupted
    done = part.curves.shape[1]
    assert 1 < done < full.curves.shape[1] and len(part.fractions) == done
    np.testing.assert_allclose(part.curves, full.curves[:, :done], rtol=1e-12)


def _three_feature_model():
    """f_0 = x_0 + 2 x_1 - 3 x_2 + 0.5, f_1 = 0: one Linear layer on three features."""
    lin = L.Linear(3, 2)
    lin.weight, lin.bias = np.array([[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]]), np.array([0.5, 0.0])
    return lin


# Two samples, x = (1, 1, 1) and (2, -1, 1); relevance = gradient x input = (1, 2, -3) and (2, -2, -3).
# MoRF, fill 0, by hand:
#   sample 0: f = 0.5; remove x_1 (R 2): 1 - 3 + 0.5 = -1.5; then x_0 (R 1): -3 + 0.5 = -2.5; then x_2: 0.5
#   sample 1: f = 2 - 2 - 3 + 0.5 = -2.5; remove x_0 (R 2): -2 - 3 + 0.5 = -4.5; then x_1: -2.5; then x_2: 0.5
THREE_X = np.array([[1.0, 1.0, 1.0], [2.0, -1.0, 1.0]])
THREE_MORF = [[0.5, -1.5, -2.5, 0.5], [-2.5, -4.5, -2.5, 0.5]]


@pytest.mark.parametrize("layout", ["vector (N, F)", "sequence (N, C, L)", "sequence (N, T, D)", "image (N, C, H, W)"])
def test_perturbation_curves_of_a_three_feature_model_in_every_layout(layout):
    """The same three features as a tabular vector, a one-channel sequence (positions on the last axis),
    a sequence of one-dimensional steps (channel_axis=2) and a 1 x 3 image: the curves computed by hand
    (above), their AOPC and AUC, LeRF, two features per step, patches and a fill value."""
    lin = _three_feature_model()
    shape, net, kw = {"vector (N, F)": ((2, 3), L.Sequential(lin), {}),
                      "sequence (N, C, L)": ((2, 1, 3), L.Sequential(L.Flatten(), lin), {}),
                      "sequence (N, T, D)": ((2, 3, 1), L.Sequential(L.Flatten(), lin), dict(channel_axis=2)),
                      "image (N, C, H, W)": ((2, 1, 1, 3), L.Sequential(L.Flatten(), lin), {})}[layout]
    x = THREE_X.reshape(shape)
    R = M.gradient_x_input(net, x, 0).relevance
    np.testing.assert_array_equal(R.reshape(2, 3), [[1.0, 2.0, -3.0], [2.0, -2.0, -3.0]])
    for incremental_ in (True, False):
        r = E.pixel_flipping(net, x, R, target=0, incremental=incremental_, **kw)
        np.testing.assert_array_equal(r.curves, THREE_MORF)
    np.testing.assert_array_equal(r.fractions, [0, 1 / 3, 2 / 3, 1])
    # AOPC: 1/4 * sum_k f(x) - f(x^k) = (0 + 2 + 3 + 0) / 4 and (0 + 2 + 0 - 3) / 4
    np.testing.assert_allclose(r.aopc(), [1.25, -0.25], rtol=1e-15)
    # AUC: 1/3 * ((0.5 - 1.5) / 2 + (-1.5 - 2.5) / 2 + (-2.5 + 0.5) / 2) = -7/6; sample 1: -8/3
    np.testing.assert_allclose(r.auc(), [-7 / 6, -8 / 3], rtol=1e-15)
    # LeRF, sample 0: remove x_2 (R -3): 1 + 2 + 0.5 = 3.5; then x_0: 2.5; then x_1: 0.5
    lerf = E.pixel_flipping(net, x, R, target=0, order="lerf", **kw)
    np.testing.assert_array_equal(lerf.curves[0], [0.5, 3.5, 2.5, 0.5])
    # two features per step, sample 0: remove x_1 and x_0: -2.5; then x_2: 0.5
    two = E.pixel_flipping(net, x, R, target=0, features_per_step=2, **kw)
    np.testing.assert_array_equal(two.curves[0], [0.5, -2.5, 0.5])
    np.testing.assert_array_equal(two.fractions, [0, 2 / 3, 1])
    # patches of 2 positions: {x_0, x_1} (R 3 in sample 0) and {x_2} (R -3): -2.5, then 0.5
    patches = E.pixel_flipping(net, x, R, target=0, patch=2, **kw)
    np.testing.assert_array_equal(patches.curves[0], [0.5, -2.5, 0.5])
    np.testing.assert_array_equal(patches.fractions, [0, 0.5, 1])
    # fill -1, one step, sample 0: x_1 becomes -1: 1 - 2 - 3 + 0.5 = -3.5
    np.testing.assert_array_equal(E.pixel_flipping(net, x, R, 0, steps=1, fill=-1.0, **kw).curves[0], [0.5, -3.5])
    # fill "mean" (sample 0's mean over positions is 1: nothing changes) and an array fill of zeros
    np.testing.assert_array_equal(E.pixel_flipping(net, x, R, 0, fill="mean", **kw).curves[0], [0.5] * 4)
    np.testing.assert_array_equal(E.pixel_flipping(net, x, R, 0, fill=np.zeros_like(x), **kw).curves, THREE_MORF)
    empty = E.pixel_flipping(net, x[:0], R[:0], 0, **kw)
    assert empty.curves.shape == (0, 4) and empty.aopc().shape == (0,)


def test_perturbation_curves_remove_all_channels_of_a_position_together():
    """(N, T, D) = (1, 3, 2), f_0 = x_00 + x_01 + 2 x_10 + 0 x_11 - 3 x_20 + x_21 + 0.5 at x = 1:
    f = 2.5, position relevance (2, 2, -2).  By hand, channel_axis=2 (positions = time steps): remove
    step 0 (first of the tie): 0.5; step 1: -1.5; step 2: 0.5.  channel_axis=None (every value a feature,
    R = (1, 1, 2, 0, -3, 1)): remove x_10: 0.5, x_00: -0.5, x_01: -1.5, x_21: -2.5, x_11: -2.5, x_20: 0.5.
    The default for a 3-D input is (N, C, L): axis 1's three values are one position's channels."""
    lin = L.Linear(6, 2)
    lin.weight, lin.bias = np.array([[1.0, 1.0, 2.0, 0.0, -3.0, 1.0], [0.0] * 6]), np.array([0.5, 0.0])
    net = L.Sequential(L.Flatten(), lin)
    x = np.ones((1, 3, 2))
    R = M.gradient_x_input(net, x, 0).relevance
    steps = E.pixel_flipping(net, x, R, 0, channel_axis=2)
    np.testing.assert_array_equal(steps.curves, [[2.5, 0.5, -1.5, 0.5]])
    assert E.pixel_flipping(net, x, R, 0, channel_axis=-1).curves.tolist() == steps.curves.tolist()
    values = E.pixel_flipping(net, x, R, 0, channel_axis=None)
    np.testing.assert_array_equal(values.curves, [[2.5, 0.5, -0.5, -1.5, -2.5, -2.5, 0.5]])
    np.testing.assert_array_equal(values.fractions, np.arange(7) / 6)
    # default (N, C, L): 3 channels at each of 2 positions, position relevance (1 + 2 - 3, 1 + 0 + 1) = (0, 2)
    np.testing.assert_array_equal(E.pixel_flipping(net, x, R, 0).curves, [[2.5, 0.5, 0.5]])


def test_perturbation_layout_errors():
    net = L.Sequential(_three_feature_model())
    x = THREE_X
    with pytest.raises(L.errors.RuleParameterError, match="channel_axis"):
        E.pixel_flipping(net, x, x, channel_axis=0)
    with pytest.raises(L.errors.RuleParameterError, match="channel_axis"):
        E.pixel_flipping(net, x, x, channel_axis=2)
    with pytest.raises(L.errors.RuleParameterError, match="blur"):
        E.pixel_flipping(net, x, x, fill="blur")


@pytest.mark.parametrize("batch_size", [None, 1])
def test_an_overflow_on_the_incremental_path_names_the_layer_of_the_whole_network(batch_size, rng):
    """The unperturbed input is finite through the network; filling with 1e10 overflows the first layer,
    a Conv2d.  The incremental path runs that layer itself and the rest as a network of its own, whose
    layer 0 is the ReLU: the error named "layer 0 (ReLU())".  Both paths now name the Conv2d."""
    net = L.Sequential(L.Conv2d(1, 2, 3, padding=1, rng=0), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                       L.Linear(2 * 4 * 4, 3, rng=1))
    net[0].weight = net[0].weight * 1e300
    x = rng.random((2, 1, 8, 8)) * 1e-300
    assert np.isfinite(net.forward(x)).all()
    R = rng.normal(size=x.shape)
    assert incremental.plan(net, x.shape[1:], 1, 1) >= 1  # the Conv2d runs on the path
    for incremental_ in (True, False):
        with np.errstate(all="ignore"), pytest.raises(L.errors.NonFiniteError, match=r"layer 0 \(Conv2d\(1, 2"):
            E.pixel_flipping(net, x, R, fill=1e10, incremental=incremental_, batch_size=batch_size)


def test_evaluate_is_a_package_with_every_old_name():
    """lrpnumpy.evaluate became a package (perturbation curves, metrics, comparison tables, ROAR/KAR
    in modules of their own); every name the single module had is still importable from it."""
    from lrpnumpy.evaluate import metrics, perturbation, retraining, tables
    old = ["PerturbationResult", "pixel_flipping", "region_perturbation", "selectivity", "channel_axis_of",
           "continuity", "class_sensitivity", "similarity", "randomization_check", "context", "random_relevance",
           "METRICS", "Comparison", "compare", "roar", "kar",
           "_scores", "_fill", "_int", "_Layout", "_fill_values", "_relevance", "_cosine", "_ranks"]
    for name in old:
        assert hasattr(E, name), name
    assert E.pixel_flipping is perturbation.pixel_flipping and E.continuity is metrics.continuity
    assert E.compare is tables.compare and E.roar is retraining.roar and E.kar is retraining.kar
    from lrpnumpy.evaluate import context, pixel_flipping  # noqa: F401  (as the README and spray import them)


def test_removal_order_is_the_ranking_by_hand():
    """The ranking part of pixel_flipping: THREE_X's relevance (1, 2, -3) and (2, -2, -3); MoRF removes
    x_1, x_0, x_2 (sample 0) and x_0, x_1, x_2 (sample 1); LeRF the reverse of sample 0's; two per step."""
    from lrpnumpy.evaluate.perturbation import _Layout
    R = np.array([[1.0, 2.0, -3.0], [2.0, -2.0, -3.0]])
    layout = _Layout(R.shape, None, 1)
    removed_at, total = E.removal_order(layout, R, "morf", 1, None)
    np.testing.assert_array_equal(removed_at, [[2, 1, 3], [1, 2, 3]])
    assert total == 3
    np.testing.assert_array_equal(E.removal_order(layout, R, "lerf", 1, None)[0][0], [2, 3, 1])
    removed_at, total = E.removal_order(layout, R, "morf", 2, None)
    np.testing.assert_array_equal(removed_at, [[1, 1, 2], [1, 1, 2]])
    assert total == 2
