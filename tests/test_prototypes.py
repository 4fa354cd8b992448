"""Interpreting models: activation maximization, experts, decoders, MMD-critic, surrogates, influence."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import evaluate as E, prototypes as P
from lrpnumpy.errors import LRPError


def linear_model(rng, d=6, k=3):
    net = L.Sequential(L.Flatten(), L.Linear(d, k, rng=rng))
    net[1].bias = rng.normal(size=k)
    return net


def test_am_ascends_monotonically_on_a_concave_problem_and_keeps_bounds(rng):
    """log p(c | x) of a linear model is concave in x, and so is -lambda ||x||^2: small steps never
    lower the objective."""
    net = linear_model(rng)
    x0 = rng.normal(size=(4, 1, 1, 6))
    res = P.activation_maximization(net, [0, 1, 2, 0], x0, l2=0.1, steps=200, lr=0.05)
    assert res.objective.shape == (201, 4)
    assert (np.diff(res.objective, axis=0) >= -1e-12).all()
    assert (res.objective[-1] > res.objective[0]).all()
    # the objective is what it says: log softmax of the target minus the penalty
    z = net.forward(res.x)
    ls = z - np.log(np.exp(z).sum(1, keepdims=True))
    np.testing.assert_allclose(res.objective[-1], ls[np.arange(4), [0, 1, 2, 0]] - 0.1 * (res.x ** 2).sum(axis=(1, 2, 3)),
                               rtol=1e-12)
    boxed = P.activation_maximization(net, 1, x0, steps=50, lr=1.0, bounds=(-0.5, 0.5), objective="logit")
    assert boxed.x.min() >= -0.5 and boxed.x.max() <= 0.5
    # the logit rises until the box stops it: each coordinate at the bound its weight points to
    np.testing.assert_array_equal(np.sign(boxed.x[0].ravel()), np.sign(net[1].weight[1]))


def test_experts_gradients_and_densities(rng):
    from scipy.stats import multivariate_normal
    data = rng.normal(size=(300, 1, 2, 2)) @ np.diag([1.0, 2.0]) + 1.0
    g = P.GaussianExpert(reg=0.05).fit(data)
    flat = data.reshape(300, -1)
    cov = np.cov(flat, rowvar=False) + 0.05 * np.eye(4)
    x = rng.normal(size=(5, 1, 2, 2))
    np.testing.assert_allclose(g.log_prob(x), multivariate_normal(flat.mean(0), cov).logpdf(x.reshape(5, -1)),
                               rtol=1e-10)
    mix = P.GaussianMixtureExpert(k=2, seed=0).fit(np.concatenate([data, data + 5]))
    dens = sum(w * multivariate_normal(m, np.linalg.inv(p)).pdf(x.reshape(5, -1))
               for w, m, p in zip(mix.weights, mix.means, mix.precisions))
    np.testing.assert_allclose(mix.log_prob(x), np.log(dens), rtol=1e-10)
    for expert in (g, mix):  # central finite differences of log_prob
        grad, h = expert.grad_log_prob(x), 1e-6
        for i in range(4):
            e = np.zeros(4)
            e[i] = h
            e = e.reshape(1, 1, 2, 2)
            fd = (expert.log_prob(x + e) - expert.log_prob(x - e)) / (2 * h)
            np.testing.assert_allclose(grad.reshape(5, -1)[:, i], fd, rtol=1e-6, atol=1e-8)


def test_am_with_an_expert_and_in_code_space(rng):
    net = linear_model(rng, d=4, k=2)
    data = rng.normal(size=(200, 1, 2, 2)) * 0.3 + 0.5
    start = P.start_points(data)
    plain = P.activation_maximization(net, 0, start, l2=0.01, steps=100, lr=0.1)
    expert = P.GaussianExpert().fit(data)
    tied = P.activation_maximization(net, 0, start, l2=0.01, steps=100, lr=0.01, expert=expert)
    assert expert.log_prob(tied.x)[0] > expert.log_prob(plain.x)[0]  # the expert keeps it near the data
    assert (np.diff(tied.objective, axis=0) >= -1e-12).all()
    dec = P.PCADecoder(2).fit(data)
    z0 = dec.encode(start)
    coded = P.activation_maximization(net, 0, None, l2=0.01, steps=100, lr=0.1, decoder=dec, z0=z0)
    assert coded.z.shape == (1, 2) and coded.x.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(coded.x, dec.forward(coded.z), rtol=1e-12)  # x stays in the decoder's range
    assert coded.objective[-1, 0] > coded.objective[0, 0]
    assert P.start_points(data.reshape(200, -1), labels=np.arange(200) % 2).shape == (2, 4)
    with pytest.raises(LRPError):
        P.activation_maximization(net, 0, start, lr=-1)
    with pytest.raises(LRPError):
        P.activation_maximization(net, 0, start, expert=object())
    with pytest.raises(LRPError):
        P.activation_maximization(net, [0, 1], start)


def test_pca_decoder_reconstructs_data_in_its_span(rng):
    basis = rng.normal(size=(3, 12))
    data = (rng.normal(size=(50, 3)) @ basis + 2.0).reshape(50, 1, 3, 4)
    dec = P.PCADecoder(3).fit(data)
    np.testing.assert_allclose(dec.forward(dec.encode(data)), data, rtol=1e-10, atol=1e-10)
    g = rng.normal(size=(5, 1, 3, 4))
    z = rng.normal(size=(5, 3))
    # backward is the adjoint of the linear part: <g, V^T z> = <V g, z>
    np.testing.assert_allclose((g * (dec.forward(z) - dec.forward(np.zeros_like(z)))).sum(),
                               (dec.backward(g) * z).sum(), rtol=1e-10)


def test_autoencoder_learns_and_decodes_for_am(rng):
    data = (rng.normal(size=(256, 2)) @ rng.normal(size=(2, 16))).reshape(256, 1, 4, 4)
    enc, dec, losses = P.train_autoencoder(data, code=2, hidden=32, epochs=30, batch_size=32, lr=3e-3)
    assert losses[-1] < 0.2 * losses[0]
    decoder = P.NetworkDecoder(dec, (1, 4, 4))
    net = linear_model(rng, d=16, k=2)
    res = P.activation_maximization(net, 1, None, steps=20, lr=0.05, decoder=decoder, z0=enc.forward(data[:2]))
    assert res.x.shape == (2, 1, 4, 4) and (res.objective[-1] > res.objective[0]).all()


def test_mmd_critic_picks_the_cluster_centres():
    """Three blobs, each a centre point and a ring of points around it: the prototypes are the three
    centres.  The first criticism is the point where the witness function is largest in magnitude."""
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.5
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([np.concatenate([c[None], c + ring]) for c in centres])
    outliers = np.array([[5.0, 5.0], [20.0, 20.0]])
    data = np.concatenate([points, outliers])[rng.permutation(len(points) + 2)]
    protos, critics = P.mmd_critic(data, 3, 2, gamma=1.0)
    assert sorted(map(tuple, data[protos])) == sorted(map(tuple, centres))
    K = np.exp(-((data[:, None] - data[None]) ** 2).sum(-1))
    witness = np.abs(K.mean(0) - K[:, protos].mean(1))
    witness[protos] = -1
    assert witness[critics[0]] == pytest.approx(witness.max(), rel=1e-12) and len(set(critics) | set(protos)) == 5
    with pytest.raises(LRPError):
        P.mmd_critic(data, 100)


def test_surrogate_of_a_threshold_network_is_faithful(rng):
    """A network that predicts class 1 exactly when x_0 > 0.5 is a depth-1 tree: fidelity 1."""
    lin = L.Linear(5, 2, bias=True)
    lin.weight = np.zeros((2, 5))
    lin.weight[1, 0], lin.bias = 2.0, np.array([0.0, -1.0])
    net = L.Sequential(L.Flatten(), lin)
    x, x_test = rng.random((400, 1, 1, 5)), rng.random((200, 1, 1, 5))
    tree, fidelity = P.surrogate_tree(net, x, x_test, max_depth=1)
    assert fidelity == 1.0 and tree.tree_.feature[0] == 0


def test_influence_predicts_leave_one_out_retraining():
    """Koh & Liang's influence on a small softmax layer against actually retraining without each point:
    the predicted change of the test loss ranks the points as retraining does (Spearman >= 0.9)."""
    rng = np.random.default_rng(0)
    n, d, k, l2 = 60, 4, 3, 0.05
    h = rng.normal(size=(n, d))
    y = (h @ rng.normal(size=(d, k)) + rng.normal(size=(n, k))).argmax(1)
    h_test, y_test = rng.normal(size=(3, d)), np.array([0, 1, 2])
    infl, W = P.influence(h, y, h_test, y_test, k, l2=l2)

    def test_loss(weights):
        z = P._augment(h_test) @ weights.T
        z = z - z.max(1, keepdims=True)
        return float((np.log(np.exp(z).sum(1)) - z[np.arange(3), y_test]).sum())
    base = test_loss(W)
    actual = np.array([test_loss(P.fit_last_layer(h, y, k, l2, W0=W, exclude=i)) - base for i in range(n)])
    predicted = -infl / n
    assert E.similarity(predicted[None], actual[None])[0] >= 0.9
    np.testing.assert_allclose(predicted, actual, rtol=0.3, atol=0.3 * np.abs(actual).max())


def test_filter_and_weight_pictures(rng):
    import matplotlib
    matplotlib.use("Agg")
    conv = L.Conv2d(2, 3, 3, rng=rng)
    conv.weight = np.zeros((3, 2, 3, 3))
    conv.weight[0] = 1.0  # all positive: red; filter 1 negative: blue; filter 2 zero: white
    conv.weight[1] = -1.0
    fig = L.viz.filters(conv)
    colours = [ax.get_images()[0].to_rgba(ax.get_images()[0].get_array())[1, 1, :3] for ax in fig.axes[:3]]
    np.testing.assert_allclose(colours[0], [1, 0, 0], atol=0.01)
    np.testing.assert_allclose(colours[1], [0, 0, 1], atol=0.01)
    np.testing.assert_allclose(colours[2], [1, 1, 1], atol=0.01)
    lin = L.Linear(12, 4, rng=rng)
    assert len([ax for ax in L.viz.weights(lin, (3, 4)).axes if ax.get_images()]) == 4
    with pytest.raises(LRPError):
        L.viz.weights(lin, (5, 5))


def _correlated_data(rng, n=400, d=16):
    """``n`` Gaussian points in ``d`` dimensions that vary along two directions (plus a little noise):
    their covariance is nearly singular, so a density expert's gradient has a curvature of about 60."""
    mix = rng.normal(size=(d, 2)) @ rng.normal(size=(2, d)) * 3
    return rng.multivariate_normal(np.zeros(d), mix @ mix.T + 0.01 * np.eye(d), size=n)


def test_am_with_an_expert_on_correlated_data_does_not_diverge():
    """The issue's setup: a random 16-input MLP, 400 correlated Gaussian points, steps=200, lr=0.05 and a
    GaussianExpert.  Plain gradient ascent (by hand below) runs away to 1e56 with an objective of -1e115;
    activation_maximization halves the step where it would lower the objective, so the objective never
    falls, the prototype stays near the data, and the result says whether and why it converged."""
    rng = np.random.default_rng(0)
    net = L.Sequential(L.Linear(16, 32, rng=1), L.ReLU(), L.Linear(32, 3, rng=2))
    data = _correlated_data(rng)
    x0 = data.mean(axis=0, keepdims=True)
    expert = P.GaussianExpert().fit(data)
    plain = x0.copy()
    with np.errstate(all="ignore"):
        for _ in range(200):
            _, g = P._model_term(net, plain, np.array([1]), "log_softmax")
            plain = plain + 0.05 * (g + expert.grad_log_prob(plain))
    assert np.abs(plain).max() > 1e40  # what the ascent did before
    res = P.activation_maximization(net, 1, x0, steps=200, lr=0.05, expert=expert)
    assert np.isfinite(res.x).all() and np.abs(res.x).max() < np.abs(data).max()
    assert (np.diff(res.objective, axis=0) >= 0).all() and res.objective[-1, 0] > res.objective[0, 0]
    assert res.step_size[0] < 0.05  # halved: 0.05 is unstable for a curvature of about 60
    assert res.converged.dtype == bool and res.converged.shape == (1,)
    assert len(res.reason) == 1 and res.reason[0]
    if not res.converged[0]:
        assert res.reason[0].startswith(("not converged", "stuck"))
    # the objective is what it says at the point returned
    z = net.forward(res.x)
    ls = z - np.log(np.exp(z).sum(1, keepdims=True))
    np.testing.assert_allclose(res.objective[-1], ls[:, 1] + expert.log_prob(res.x), rtol=1e-12)


def test_am_with_too_large_a_step_converges_on_a_smooth_problem(rng):
    """A linear model (log p(c|x) smooth and concave) with l2, the expert of correlated data and lr=0.05: the
    step is halved to a stable one, the ascent converges (the gradient vanishes), and the reason says so;
    a run of too few steps says it has not converged."""
    net = linear_model(rng, d=16, k=3)
    data = _correlated_data(rng).reshape(400, 1, 4, 4)
    expert = P.GaussianExpert().fit(data)
    start = P.start_points(data)
    res = P.activation_maximization(net, 2, start, l2=0.1, steps=3000, lr=0.05, expert=expert)
    assert (np.diff(res.objective, axis=0) >= 0).all()
    assert res.converged[0] and res.step_size[0] < 0.05 and "halved" in res.reason[0]
    short = P.activation_maximization(net, 2, start, l2=0.1, steps=3, lr=0.05, expert=expert)
    assert not short.converged[0] and short.reason[0].startswith("not converged after 3 steps")
    assert np.array_equal(short.objective, res.objective[:4])  # the same path, stopped early


def test_other_iterative_fits_report_divergence(rng):
    """fit_last_layer (damped Newton) refuses to return an unconverged fit; train_autoencoder reports a
    non-finite loss instead of returning NaN weights."""
    h, y = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    with pytest.raises(L.errors.RuleParameterError, match="did not converge in 1 Newton steps"):
        P.fit_last_layer(h, y, 3, iterations=1)
    W = P.fit_last_layer(h, y, 3)
    assert np.isfinite(W).all()
    with np.errstate(all="ignore"), pytest.raises(L.errors.RuleParameterError, match="diverged"):
        P.train_autoencoder(rng.normal(size=(64, 1, 2, 2)), code=2, hidden=4, epochs=2, lr=1e200)
