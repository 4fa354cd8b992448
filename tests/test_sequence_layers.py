"""Sequence layers: Embedding, Transpose, Sigmoid, Conv1d and 1-D pools, LSTM and GRU.

Exact gradients (finite differences in float64, torch autograd to 1e-12), the 1-D layers equal to
their 2-D counterparts with height 1, ragged batches (lengths=) equal to each sample alone, bad
input refused, saving and loading, and the gradient methods on small sequence models.
"""

import numpy as np
import pytest

import lrpnumpy as lp
from lrpnumpy import methods
from lrpnumpy.errors import DTypeError, LayerParameterError, ShapeError

RNG = np.random.default_rng


def finite_differences(f, x, h=1e-6):
    """d sum(f(x) * w) / dx for a fixed random w, by central differences; returns (w, grad)."""
    w = RNG(99).normal(size=f(x).shape)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = ((f(xp) - f(xm)) * w).sum() / (2 * h)
    return w, g


def check_backward(layer, x, **kw):
    y, step = layer.forward_trace(x, **kw)
    w, g = finite_differences(lambda v: layer.forward(v, **kw), x)
    np.testing.assert_allclose(layer.backward(w, step), g, rtol=1e-6, atol=1e-8)


RECURRENT = [(cls, bi, out) for cls in ("LSTM", "GRU") for bi in (False, True) for out in ("sequence", "last")]


@pytest.mark.parametrize("cls,bi,out", RECURRENT)
def test_recurrent_backward_is_the_gradient(cls, bi, out):
    layer = getattr(lp, cls)(3, 4, bidirectional=bi, output=out, rng=0)
    x = RNG(1).normal(size=(2, 4, 3))
    check_backward(layer, x)
    check_backward(layer, x, lengths=[2, 4])


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_recurrent_param_grads_by_finite_differences(cls):
    layer = getattr(lp, cls)(2, 3, bidirectional=True, rng=8)
    x = RNG(9).normal(size=(2, 3, 2))
    y, step = layer.forward_trace(x, lengths=[3, 2])
    w = RNG(10).normal(size=y.shape)
    grads = layer.param_grads(w, step)
    for name in layer.params:
        value = getattr(layer, name)
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            up, down = value.copy(), value.copy()
            up[idx] += 1e-6
            down[idx] -= 1e-6
            setattr(layer, name, up)
            f_up = (layer.forward(x, lengths=[3, 2]) * w).sum()
            setattr(layer, name, down)
            fd[idx] = (f_up - (layer.forward(x, lengths=[3, 2]) * w).sum()) / 2e-6
            setattr(layer, name, value)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls,bi,out", RECURRENT)
def test_lengths_equal_each_sample_alone(cls, bi, out):
    layer = getattr(lp, cls)(3, 5, bidirectional=bi, output=out, rng=2)
    x = RNG(3).normal(size=(3, 6, 3))
    lengths = np.array([6, 2, 4])
    y, step = layer.forward_trace(x, lengths=lengths)
    g = RNG(4).normal(size=y.shape)
    dx = layer.backward(g, step)
    for n, L in enumerate(lengths):
        ya, sa = layer.forward_trace(x[n:n + 1, :L])
        if out == "sequence":
            np.testing.assert_allclose(y[n, :L], ya[0], rtol=0, atol=1e-14)
            assert (y[n, L:] == 0).all()
            ga = g[n:n + 1, :L]
        else:
            np.testing.assert_allclose(y[n], ya[0], rtol=0, atol=1e-14)
            ga = g[n:n + 1]
        np.testing.assert_allclose(dx[n, :L], layer.backward(ga, sa)[0], rtol=0, atol=1e-14)
        assert (dx[n, L:] == 0).all()
    # the same through a network and the context manager
    net = lp.Sequential(layer)
    with lp.sequence_lengths(lengths):
        np.testing.assert_array_equal(net.forward(x), y)
    assert not np.array_equal(net.forward(x), y)  # the context is gone after the block


def _torch_rnn(layer):
    import torch
    tcls = torch.nn.LSTM if isinstance(layer, lp.LSTM) else torch.nn.GRU
    tm = tcls(layer.input_size, layer.hidden_size, batch_first=True, bidirectional=layer.bidirectional).double()
    with torch.no_grad():
        for k in range(layer.dirs):
            sfx = "_l0" + ("_reverse" if k else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(tm, name + sfx).copy_(torch.tensor(getattr(layer, name)[k]))
    return tm


@pytest.mark.reference
@pytest.mark.parametrize("cls,bi,out", RECURRENT)
def test_recurrent_equals_torch(cls, bi, out):
    import torch
    layer = getattr(lp, cls)(3, 4, bidirectional=bi, output=out, rng=5)
    tm = _torch_rnn(layer)
    x = RNG(6).normal(size=(3, 5, 3))
    lengths = np.array([5, 2, 3])
    for L in (None, lengths):
        xt = torch.tensor(x, requires_grad=True)
        if L is None:
            o, hn = tm(xt)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(L), batch_first=True,
                                                             enforce_sorted=False)
            po, hn = tm(packed)
            o = torch.nn.utils.rnn.pad_packed_sequence(po, batch_first=True, total_length=5)[0]
        hn = hn[0] if cls == "LSTM" else hn
        ref = o if out == "sequence" else hn.permute(1, 0, 2).reshape(3, -1)
        y, step = layer.forward_trace(x, lengths=L)
        np.testing.assert_allclose(y, ref.detach().numpy(), rtol=0, atol=1e-12)
        g = RNG(7).normal(size=y.shape)
        ref.backward(torch.tensor(g))
        np.testing.assert_allclose(layer.backward(g, step), xt.grad.numpy(), rtol=0, atol=1e-12)
        pg = layer.param_grads(g, step)
        for k in range(layer.dirs):
            sfx = "_l0" + ("_reverse" if k else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p = getattr(tm, name + sfx)
                np.testing.assert_allclose(pg[name][k], p.grad.numpy(), rtol=0, atol=1e-12)
                p.grad = None


@pytest.mark.reference
def test_conv1d_pools_embedding_equal_torch():
    import torch
    import torch.nn.functional as F
    x = RNG(8).normal(size=(2, 4, 11))
    conv = lp.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, rng=9)
    conv.bias = RNG(10).normal(size=6)
    xt = torch.tensor(x, requires_grad=True)
    ref = F.conv1d(xt, torch.tensor(conv.weight), torch.tensor(conv.bias), stride=2, padding=1, dilation=2, groups=2)
    y, step = conv.forward_trace(x)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=0, atol=1e-12)
    g = RNG(11).normal(size=y.shape)
    ref.backward(torch.tensor(g))
    np.testing.assert_allclose(conv.backward(g, step), xt.grad.numpy(), rtol=0, atol=1e-12)
    for layer, fn in ((lp.MaxPool1d(3, 2, 1), lambda t: F.max_pool1d(t, 3, 2, 1)),
                      (lp.AvgPool1d(3, 2, 1), lambda t: F.avg_pool1d(t, 3, 2, 1)),
                      (lp.GlobalMaxPool1d(), lambda t: t.max(dim=2).values)):
        xt = torch.tensor(x, requires_grad=True)
        ref = fn(xt)
        y, step = layer.forward_trace(x)
        np.testing.assert_allclose(y, ref.detach().numpy(), rtol=0, atol=1e-12)
        g = RNG(12).normal(size=y.shape)
        ref.backward(torch.tensor(g))
        np.testing.assert_allclose(layer.backward(g, step), xt.grad.numpy(), rtol=0, atol=1e-12)
    emb = lp.Embedding(7, 3, rng=13)
    ids = np.array([[0, 6, 2], [3, 3, 1]])
    np.testing.assert_array_equal(emb.forward(ids), F.embedding(torch.tensor(ids), torch.tensor(emb.weight)).numpy())
    sig = lp.Sigmoid()
    np.testing.assert_allclose(sig.forward(x), torch.sigmoid(torch.tensor(x)).numpy(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("make", [lambda: lp.Conv1d(2, 3, 3, padding=(1, 2), rng=0), lambda: lp.MaxPool1d(2),
                                  lambda: lp.AvgPool1d(3, 1, 1), lambda: lp.SumPool1d(2, 1),
                                  lambda: lp.GlobalMaxPool1d(), lambda: lp.Sigmoid(),
                                  lambda: lp.Transpose((0, 2, 1))])
def test_one_d_layers_backward_is_the_gradient(make):
    check_backward(make(), RNG(14).normal(size=(2, 2, 6)))


def _as2d(layer):
    if isinstance(layer, lp.Conv1d):
        c = lp.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                      groups=layer.groups, dilation=layer.dilation)
        c.weight, c.bias = layer.weight[:, :, None].copy(), layer.bias.copy()
        return c
    if isinstance(layer, lp.GlobalMaxPool1d):
        return None
    cls = {lp.MaxPool1d: lp.MaxPool2d, lp.AvgPool1d: lp.AvgPool2d, lp.SumPool1d: lp.SumPool2d}[type(layer)]
    return cls(layer.kernel_size, layer.stride, layer.padding)


@pytest.mark.parametrize("make", [lambda: lp.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, rng=0),
                                  lambda: lp.MaxPool1d(3, 2, 1), lambda: lp.AvgPool1d(3, 2, 1),
                                  lambda: lp.SumPool1d(2)])
def test_one_d_layers_equal_their_two_d_counterparts(make):
    layer = make()
    if getattr(layer, "bias", None) is not None:
        layer.bias = RNG(15).normal(size=layer.bias.shape)
    two = _as2d(layer)
    x = RNG(16).normal(size=(2, 4, 9))
    y, step = layer.forward_trace(x)
    y2, step2 = two.forward_trace(x[:, :, None])
    np.testing.assert_array_equal(y, y2[:, :, 0])
    g = RNG(17).normal(size=y.shape)
    np.testing.assert_array_equal(layer.backward(g, step), two.backward(g[:, :, None], step2)[:, :, 0])
    rules = [lp.Epsilon(0.1), lp.Norm()] if layer.weight is None else [lp.Epsilon(0.1), lp.ZPlus(), lp.Gamma(0.5),
                                                                      lp.AlphaBeta(2, 1), lp.Flat()]
    for rule in rules:
        np.testing.assert_allclose(rule.relevance(step, g), rule.relevance(step2, g[:, :, None])[:, :, 0],
                                   rtol=1e-13, atol=1e-15)
    if isinstance(layer, lp.Conv1d):
        pg, pg2 = layer.param_grads(g, step), two.param_grads(g[:, :, None], step2)
        np.testing.assert_allclose(pg["weight"], pg2["weight"][:, :, 0], rtol=1e-13)
        np.testing.assert_allclose(pg["bias"], pg2["bias"], rtol=1e-13)


def test_global_max_pool_is_max_over_time_and_winner_takes_all():
    x = RNG(18).normal(size=(3, 4, 7))
    layer = lp.GlobalMaxPool1d()
    y, step = layer.forward_trace(x)
    np.testing.assert_array_equal(y, x.max(axis=2))
    R = RNG(19).normal(size=y.shape)
    R_in = lp.WinnerTakesAll().relevance(step, R)
    expected = np.zeros_like(x)
    for n, c in np.ndindex(3, 4):
        expected[n, c, x[n, c].argmax()] = R[n, c]
    np.testing.assert_array_equal(R_in, expected)
    # Norm and Flat see the sum over the whole length
    x = np.abs(x) + 0.1
    y, step = layer.forward_trace(x)
    np.testing.assert_allclose(lp.Norm(0.0).relevance(step, R), x * (R / x.sum(axis=2))[:, :, None], rtol=1e-13)
    np.testing.assert_allclose(lp.Flat(0.0).relevance(step, R), np.repeat(R[:, :, None] / 7, 7, axis=2), rtol=1e-13)


def test_embedding_and_transpose():
    emb = lp.Embedding(5, 3, rng=0)
    ids = np.array([[4, 0, 2]])
    np.testing.assert_array_equal(emb.forward(ids), emb.weight[[[4, 0, 2]]])
    np.testing.assert_array_equal(emb.forward(ids.astype(np.float64)), emb.forward(ids))
    y, step = emb.forward_trace(ids.astype(np.float64))
    assert (emb.backward(np.ones_like(y), step) == 0).all()
    R, _ = lp.TokenSum().propagate(step, y)
    np.testing.assert_allclose(R, y.sum(-1))
    pg = emb.param_grads(np.ones_like(y), step)["weight"]
    assert pg[4].sum() == 3 and pg[1].sum() == 0
    t = lp.Transpose((0, 2, 1))
    a = RNG(1).normal(size=(2, 3, 4))
    y, step = t.forward_trace(a)
    assert y.shape == (2, 4, 3)
    np.testing.assert_array_equal(lp.Pass().relevance(step, y), a)


def test_bad_input_is_refused():
    emb = lp.Embedding(5, 3)
    with pytest.raises(ShapeError, match="out of range"):
        emb.forward(np.array([[0, 5]]))
    with pytest.raises(ShapeError, match="out of range"):
        emb.forward(np.array([[-1, 2]]))
    with pytest.raises(DTypeError, match="whole numbers"):
        emb.forward(np.array([[0.5, 2.0]]))
    with pytest.raises(DTypeError, match="whole numbers"):
        emb.forward(np.array([[np.nan, 2.0]]))
    with pytest.raises(ShapeError, match="empty"):
        emb.forward(np.zeros((2, 0), int))
    with pytest.raises(ShapeError, match=r"\(N, T\)"):
        emb.forward(np.zeros((2, 3, 1), int))
    lstm = lp.LSTM(3, 2)
    with pytest.raises(ShapeError, match=r"3-D input \(N, T, 3\)"):
        lstm.forward(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="empty"):
        lstm.forward(np.zeros((2, 0, 3)))
    with pytest.raises(ShapeError, match=r"lengths .* \[1, T = 4\]"):
        lstm.forward(np.zeros((2, 4, 3)), lengths=[5, 2])
    with pytest.raises(ShapeError, match=r"lengths .* \[1, T = 4\]"):
        lstm.forward(np.zeros((2, 4, 3)), lengths=[0, 2])
    with pytest.raises(ShapeError, match="one length per sample"):
        lstm.forward(np.zeros((2, 4, 3)), lengths=[2])
    with pytest.raises(DTypeError, match="whole"):
        lstm.forward(np.zeros((2, 4, 3)), lengths=[2.5, 2])
    with pytest.raises(LayerParameterError):
        lp.LSTM(3, 2, output="all")
    with pytest.raises(LayerParameterError):
        lp.GRU(0, 2)
    with pytest.raises(LayerParameterError):
        lp.Transpose((1, 0, 2))
    with pytest.raises(ShapeError, match=r"\(N, 2, L\)"):
        lp.Conv1d(2, 3, 3).forward(np.zeros((1, 3, 5)))
    with pytest.raises(ShapeError):
        lp.MaxPool1d(2).forward(np.zeros((1, 3, 5, 5)))


def _all_layers_net(dtype=np.float64):
    return lp.Sequential(lp.Embedding(9, 4, rng=0), lp.LSTM(4, 3, bidirectional=True, rng=1),
                         lp.Transpose((0, 2, 1)), lp.Conv1d(6, 5, 3, padding=1, rng=2), lp.Sigmoid(),
                         lp.AvgPool1d(2, 1), lp.SumPool1d(1), lp.MaxPool1d(2, 1),
                         lp.GlobalMaxPool1d(), lp.Linear(5, 8, rng=3), lp.Tanh(), lp.Linear(8, 2, rng=4),
                         input_shape=(6,)).astype(dtype)


def test_save_and_load_keep_every_sequence_layer(tmp_path):
    from lrpnumpy.io import load, save
    net = _all_layers_net(np.float32)
    ids = RNG(5).integers(0, 9, size=(3, 6)).astype(np.float32)
    save(net, tmp_path / "m.npz")
    back = load(tmp_path / "m.npz")
    assert [repr(a) for a in back] == [repr(a) for a in net]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.forward(ids), net.forward(ids))
    gru = lp.Sequential(lp.GRU(3, 2, output="last", rng=6))
    save(gru, tmp_path / "g.npz")
    x = RNG(7).normal(size=(2, 4, 3))
    np.testing.assert_array_equal(load(tmp_path / "g.npz").forward(x), gru.forward(x))


def test_lrp_runs_on_a_text_cnn_and_conserves():
    net = _all_layers_net()
    ids = RNG(8).integers(0, 9, size=(3, 6)).astype(np.float64)
    ex = lp.explain(net, ids, target=1, composite=lp.composites.get("lrp_all", epsilon=0.01))
    assert ex.relevance.shape == (3, 6)
    np.testing.assert_allclose(ex.conservation().residual(), 0, atol=1e-10)


# ----- methods on sequence models -----

def _tail_and_embedded(cell="LSTM"):
    emb = lp.Embedding(9, 4, rng=0)
    rec = getattr(lp, cell)(4, 3, bidirectional=True, output="last", rng=1)
    net = lp.Sequential(emb, rec, lp.Linear(6, 2, rng=2))
    ids = RNG(9).integers(0, 9, size=(3, 5)).astype(np.float64)
    return net, net[1:], emb.forward(ids), ids


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_gradient_methods_on_embedded_sequences(cell):
    net, tail, E, ids = _tail_and_embedded(cell)
    grad = methods.gradient(tail, E, target=1)
    g = getattr(grad, "relevance", grad)
    fd_exact = np.zeros_like(E)
    for idx in np.ndindex(E.shape):
        xp, xm = E.copy(), E.copy()
        xp[idx] += 1e-6
        xm[idx] -= 1e-6
        fd_exact[idx] = (tail.forward(xp)[idx[0], 1] - tail.forward(xm)[idx[0], 1]) / 2e-6
    np.testing.assert_allclose(g, fd_exact, rtol=1e-6, atol=1e-8)
    gxi = getattr(methods.gradient_x_input(tail, E, target=1), "relevance", None)
    np.testing.assert_allclose(gxi, g * E, rtol=1e-12)
    ig = methods.integrated_gradients(tail, E, target=1, n=64)
    ig = getattr(ig, "relevance", ig)
    total = ig.reshape(3, -1).sum(1)
    np.testing.assert_allclose(total, tail.forward(E)[:, 1] - tail.forward(np.zeros_like(E))[:, 1], rtol=0.02,
                               atol=1e-3)  # completeness of the Riemann sum
    sg = methods.smoothgrad(tail, E, target=1, n=4, rng=0)
    assert getattr(sg, "relevance", sg).shape == E.shape
    with lp.sequence_lengths([5, 2, 3]):
        ig_l = getattr(methods.integrated_gradients(tail, E, target=1, n=8), "relevance", None)
    assert (ig_l[1, 2:] == 0).all() and np.abs(ig_l[1, :2]).max() > 0


def test_token_occlusion_by_hand_matches_lrp_sign_on_a_linear_bag():
    """Occluding a token (replacing its id by a padding id whose vector is zero) changes the score by
    exactly its LRP-0 relevance when the model is linear in the embedding."""
    emb = lp.Embedding(6, 3, rng=0)
    w = emb.weight.copy()
    w[0] = 0  # id 0: padding
    emb.weight = w
    net = lp.Sequential(emb, lp.Transpose((0, 2, 1)), lp.SumPool1d(4), lp.Flatten(), lp.Linear(3, 2, bias=False,
                                                                                               rng=1))
    ids = np.array([[1.0, 2, 3, 5]])
    ex = lp.explain(net, ids, target=0, composite=lp.Composite([((lp.Linear, lp.SumPool2d), lp.Epsilon(0.0))]))
    base = net.forward(ids)[0, 0]
    for t in range(4):
        occluded = ids.copy()
        occluded[0, t] = 0
        np.testing.assert_allclose(base - net.forward(occluded)[0, 0], ex.relevance[0, t], rtol=1e-12)


@pytest.mark.reference
def test_captum_on_the_same_torch_lstm():
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, Saliency
    _, tail, E, _ = _tail_and_embedded("LSTM")
    rec, lin = tail[0], tail[1]
    tm = _torch_rnn(rec)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.out = tm, torch.nn.Linear(6, 2).double()
            with torch.no_grad():
                self.out.weight.copy_(torch.tensor(lin.weight))
                self.out.bias.copy_(torch.tensor(lin.bias))

        def forward(self, x):
            _, (hn, _) = self.rnn(x)
            return self.out(hn.permute(1, 0, 2).reshape(x.shape[0], -1))

    model = Model()
    x = torch.tensor(E, requires_grad=True)
    sal = Saliency(model).attribute(x, target=1, abs=False).numpy()
    np.testing.assert_allclose(getattr(methods.gradient(tail, E, target=1), "relevance", None), sal, rtol=0,
                               atol=1e-10)
    ixg = InputXGradient(model).attribute(x, target=1).detach().numpy()
    np.testing.assert_allclose(getattr(methods.gradient_x_input(tail, E, target=1), "relevance", None), ixg,
                               rtol=0, atol=1e-10)
    ig = IntegratedGradients(model).attribute(x, target=1, n_steps=16, method="riemann_right").detach().numpy()
    np.testing.assert_allclose(getattr(methods.integrated_gradients(tail, E, target=1, n=16), "relevance", None), ig,
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("body", ["LSTM", "Conv1d"])
def test_token_occlusion_on_a_sequence_model(body):
    """methods.occlusion on token ids (N, T): each token replaced by the padding id 0, one at a time."""
    emb = lp.Embedding(9, 4, rng=0)
    if body == "LSTM":
        layers = [lp.LSTM(4, 3, bidirectional=True, output="last", rng=1), lp.Linear(6, 2, rng=2)]
    else:
        layers = [lp.Transpose((0, 2, 1)), lp.Conv1d(4, 3, 2, rng=1), lp.ReLU(), lp.GlobalMaxPool1d(),
                  lp.Linear(3, 2, rng=2)]
    net = lp.Sequential(emb, *layers)
    ids = RNG(20).integers(1, 9, size=(2, 5)).astype(np.float64)
    e = methods.occlusion(net, ids, target=1, window=1, stride=1, fill=0.0)
    assert e.relevance.shape == ids.shape
    base = net.forward(ids)[:, 1]
    for t in range(5):
        occluded = ids.copy()
        occluded[:, t] = 0
        np.testing.assert_allclose(e.relevance[:, t], base - net.forward(occluded)[:, 1], rtol=1e-12, atol=1e-15)
    two = methods.occlusion(net, ids, target=1, window=2, stride=1, fill=0.0, average=False)
    assert two.relevance.shape == ids.shape and np.abs(two.relevance).max() > 0
    with pytest.raises(lp.errors.RuleParameterError, match="window"):
        methods.occlusion(net, ids, target=1, window=(1, 2))


def test_train_fits_an_embedding_lstm_model():
    """lrpnumpy's own train reaches the parameters of Embedding and LSTM (their param_grads)."""
    from lrpnumpy import train
    rng = RNG(0)
    ids = rng.integers(1, 10, size=(400, 8)).astype(np.float64)
    y = (np.isin(ids, [3, 4]).sum(1) > 1).astype(int)
    net = lp.Sequential(lp.Embedding(10, 6, rng=0), lp.LSTM(6, 8, bidirectional=True, output="last", rng=1),
                        lp.Linear(16, 2, rng=2))
    before = net[0].weight.copy()
    train.fit(net, ids, y, epochs=15, batch_size=32)
    assert not np.array_equal(net[0].weight, before)
    assert train.accuracy(net, ids, y) > 0.75 > max(np.mean(y), 1 - np.mean(y))
