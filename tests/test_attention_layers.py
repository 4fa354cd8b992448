"""Transformer layers: Linear on tokens, LayerNorm, RMSNorm, GELU, SiLU, MatMul, Mul, MultiheadAttention.

Every backward pass against central differences (float64), and against torch autograd on the same
weights to 1e-12 (``reference`` marker); bad input raises lrpnumpy errors.
"""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import LayerParameterError, NonFiniteError, ShapeError
from lrpnumpy.layers import CausalMask, Graph, MergeHeads, Scale, SplitHeads
from test_layers import numeric_grad


def _fd_one(layer, x, rng, params=()):
    """backward and param_grads of a one-input layer against central differences of <layer(x), g>."""
    y, step = layer.forward_trace(x)
    g = rng.normal(size=y.shape)
    f = lambda: np.sum(layer.forward(x) * g)  # noqa: E731
    np.testing.assert_allclose(layer.backward(g, step), numeric_grad(f, x), rtol=1e-6, atol=1e-8)
    grads = layer.param_grads(g, step)
    for name in params:
        np.testing.assert_allclose(grads[name], numeric_grad(f, getattr(layer, name)), rtol=1e-6, atol=1e-8)


def _randomised(layer, rng):
    for name in layer.params:
        p = getattr(layer, name)
        if p is not None:
            setattr(layer, name, rng.normal(size=p.shape))
    return layer


ONE_INPUT = {
    "linear_tokens": (lambda r: _randomised(L.Linear(5, 4, rng=r), r), (2, 3, 5)),
    "linear_rank4": (lambda r: _randomised(L.Linear(3, 2, rng=r), r), (2, 2, 3, 3)),
    "layernorm": (lambda r: _randomised(L.LayerNorm(6), r), (2, 3, 6)),
    "layernorm_2axes": (lambda r: _randomised(L.LayerNorm((3, 4), eps=1e-3), r), (2, 3, 4)),
    "layernorm_plain": (lambda r: L.LayerNorm(5, elementwise_affine=False), (3, 5)),
    "rmsnorm": (lambda r: _randomised(L.RMSNorm(6), r), (2, 3, 6)),
    "gelu": (lambda r: L.GELU(), (3, 7)),
    "gelu_tanh": (lambda r: L.GELU(approximate="tanh"), (3, 7)),
    "silu": (lambda r: L.SiLU(), (3, 7)),
    "softmax_last": (lambda r: L.Softmax(axis=-1), (2, 3, 5)),
    "scale": (lambda r: Scale(0.5), (2, 4)),
    "causal_mask": (lambda r: Graph([("m", CausalMask(), "input"), ("s", L.Softmax(-1), "m")]), (2, 4, 4)),
    "split_heads": (lambda r: SplitHeads(2), (2, 3, 6)),
    "split_heads_t": (lambda r: SplitHeads(3, transpose=True), (2, 3, 6)),
    "merge_heads": (lambda r: MergeHeads(), (2, 2, 3, 4)),
    "mha": (lambda r: _randomised(L.MultiheadAttention(6, 2, rng=r), r), (2, 4, 6)),
    "mha_causal_nobias": (lambda r: _randomised(L.MultiheadAttention(6, 3, bias=False, causal=True, rng=r), r),
                          (2, 4, 6)),
}


@pytest.mark.parametrize("case", sorted(ONE_INPUT))
def test_backward_matches_finite_differences(case, rng):
    make, shape = ONE_INPUT[case]
    layer = make(rng)
    x = rng.normal(size=shape)
    if isinstance(layer, Graph):
        y, trace = layer.forward_trace(x)
        g = rng.normal(size=y.shape)
        back = trace.reverse(g, lambda s, v: s.layer.backward(v, s))
        np.testing.assert_allclose(back, numeric_grad(lambda: np.sum(layer.forward(x) * g), x), rtol=1e-6, atol=1e-8)
        return
    _fd_one(layer, x, rng, [p for p in layer.params if getattr(layer, p) is not None])


@pytest.mark.parametrize("layer, shapes", [
    (L.MatMul(), [(2, 3, 4), (2, 4, 5)]),
    (L.MatMul(), [(2, 1, 3, 4), (3, 4, 2)]),   # broadcast leading axes
    (L.Mul(), [(2, 3, 4), (2, 3, 4)]),
    (L.Mul(), [(2, 3, 4), (1, 3, 1)]),          # broadcast: the gradient is summed back
])
def test_two_input_backward(layer, shapes, rng):
    a, b = (rng.normal(size=s) for s in shapes)
    y, step = layer.forward_trace(a, b)
    np.testing.assert_allclose(y, a @ b if isinstance(layer, L.MatMul) else a * b)
    g = rng.normal(size=y.shape)
    ga, gb = layer.backward(g, step)
    assert ga.shape == a.shape and gb.shape == b.shape
    f = lambda: np.sum(layer.forward(a, b) * g)  # noqa: E731
    np.testing.assert_allclose(ga, numeric_grad(f, a), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, numeric_grad(f, b), rtol=1e-6, atol=1e-8)


def test_two_input_layers_in_a_graph(rng):
    """A gated MLP (SwiGLU) as a Graph: Mul of two branches, the gradient through both."""
    net = Graph([("gate", L.Linear(4, 6, rng=1), "input"), ("act", L.SiLU(), "gate"),
                 ("up", L.Linear(4, 6, rng=2), "input"), ("prod", L.Mul(), ["act", "up"]),
                 ("down", L.Linear(6, 3, rng=3), "prod")])
    x = rng.normal(size=(2, 5, 4))
    y, trace = net.forward_trace(x)
    g = rng.normal(size=y.shape)
    back = trace.reverse(g, lambda s, v: s.layer.backward(v, s))
    np.testing.assert_allclose(back, numeric_grad(lambda: np.sum(net.forward(x) * g), x), rtol=1e-6, atol=1e-8)


def test_attention_graph_shows_the_primitives():
    mha = L.MultiheadAttention(8, 2, causal=True, rng=0)
    assert mha.graph().names == ["q", "k", "v", "q_heads", "k_heads", "v_heads", "scores", "scaled", "masked",
                                 "attention", "context", "merged", "out_proj"]
    assert mha.out_proj.weight is mha.out_proj_weight
    assert L.MultiheadAttention.from_config(mha.config()).config() == mha.config()


def test_causal_attention_ignores_the_future(rng):
    mha = _randomised(L.MultiheadAttention(4, 2, causal=True, rng=0), rng)
    x = rng.normal(size=(1, 5, 4))
    x2 = x.copy()
    x2[:, 3:] += 1.0
    np.testing.assert_allclose(mha.forward(x)[:, :3], mha.forward(x2)[:, :3], rtol=1e-13)
    assert not np.allclose(mha.forward(x)[:, 3:], mha.forward(x2)[:, 3:])


def test_bad_input():
    with pytest.raises(LayerParameterError, match=r"num_heads \(3\) must divide embed_dim \(8\)"):
        L.MultiheadAttention(8, 3)
    x = np.ones((2, 3, 4))
    x[1, 2, 0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        L.LayerNorm(4).forward(x)
    with pytest.raises(NonFiniteError, match="NaN"):
        L.RMSNorm(4).forward(x)
    with pytest.raises(ShapeError, match="length 0"):
        L.Softmax(axis=-1).forward(np.ones((2, 0)))
    with pytest.raises(ShapeError, match="normalises the last axes"):
        L.LayerNorm(5).forward(np.ones((2, 4)))
    with pytest.raises(ShapeError, match="expects tokens"):
        L.MultiheadAttention(4, 2).forward(np.ones((2, 4)))
    with pytest.raises(ShapeError, match="must match"):
        L.MatMul().forward(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ShapeError, match="do not broadcast"):
        L.Mul().forward(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(LayerParameterError, match="approximate"):
        L.GELU("erf")
    with pytest.raises(LayerParameterError, match="eps"):
        L.LayerNorm(4, eps=-1.0)


# ----- torch autograd on the same weights ------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def _compare(torch, ours_forward, ours_backward, theirs, x, params_ours=None, params_theirs=None, rng=None):
    """Outputs, input gradients and parameter gradients of ours and torch's on x, to 1e-12."""
    y, step = ours_forward(x)
    g = rng.normal(size=y.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    gx, pg = ours_backward(g, step)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    for name, tp in (params_theirs or {}).items():
        np.testing.assert_allclose(pg[name], tp.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def _plain(layer):
    return layer.forward_trace, lambda g, step: (layer.backward(g, step), layer.param_grads(g, step))


@pytest.mark.reference
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_activations_match_torch(approximate, rng):
    torch = _torch()
    x = rng.normal(size=(3, 4, 5)) * 3
    _compare(torch, *_plain(L.GELU(approximate)), torch.nn.GELU(approximate=approximate), x, rng=rng)
    _compare(torch, *_plain(L.SiLU()), torch.nn.SiLU(), x, rng=rng)
    _compare(torch, *_plain(L.Softmax(axis=1)), torch.nn.Softmax(dim=1), x, rng=rng)


@pytest.mark.reference
def test_norms_and_linear_match_torch(rng):
    torch = _torch()
    x = rng.normal(size=(2, 3, 6)) * 2 + 1
    ln = _randomised(L.LayerNorm(6, eps=1e-5), rng)
    tln = torch.nn.LayerNorm(6, eps=1e-5).double()
    tln.weight.data, tln.bias.data = torch.tensor(ln.weight), torch.tensor(ln.bias)
    _compare(torch, *_plain(ln), tln, x, params_theirs={"weight": tln.weight, "bias": tln.bias}, rng=rng)
    rms = _randomised(L.RMSNorm(6), rng)
    trms = torch.nn.RMSNorm(6, eps=1e-6).double()
    trms.weight.data = torch.tensor(rms.weight)
    _compare(torch, *_plain(rms), trms, x, params_theirs={"weight": trms.weight}, rng=rng)
    lin = _randomised(L.Linear(6, 4, rng=0), rng)
    tlin = torch.nn.Linear(6, 4).double()
    tlin.weight.data, tlin.bias.data = torch.tensor(lin.weight), torch.tensor(lin.bias)
    _compare(torch, *_plain(lin), tlin, x, params_theirs={"weight": tlin.weight, "bias": tlin.bias}, rng=rng)


@pytest.mark.reference
def test_two_input_layers_match_torch(rng):
    torch = _torch()
    for layer, op, shapes in ((L.MatMul(), torch.matmul, [(2, 1, 3, 4), (3, 4, 2)]),
                              (L.Mul(), torch.mul, [(2, 3, 4), (1, 3, 1)])):
        a, b = (rng.normal(size=s) for s in shapes)
        y, step = layer.forward_trace(a, b)
        g = rng.normal(size=y.shape)
        at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        op(at, bt).backward(torch.tensor(g))
        for ours, theirs in zip(layer.backward(g, step), (at.grad, bt.grad)):
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.reference
@pytest.mark.parametrize("causal, bias", [(False, True), (True, True), (False, False)])
def test_multihead_attention_matches_torch(causal, bias, rng):
    torch = _torch()
    E, H, T = 8, 2, 5
    mha = _randomised(L.MultiheadAttention(E, H, bias=bias, causal=causal, rng=0), rng)
    tm = torch.nn.MultiheadAttention(E, H, bias=bias, batch_first=True).double()
    tm.in_proj_weight.data = torch.tensor(mha.in_proj_weight)
    tm.out_proj.weight.data = torch.tensor(mha.out_proj_weight)
    theirs = {"in_proj_weight": tm.in_proj_weight, "out_proj_weight": tm.out_proj.weight}
    if bias:
        tm.in_proj_bias.data = torch.tensor(mha.in_proj_bias)
        tm.out_proj.bias.data = torch.tensor(mha.out_proj_bias)
        theirs.update(in_proj_bias=tm.in_proj_bias, out_proj_bias=tm.out_proj.bias)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64) if causal else None

    def run(xt):
        return tm(xt, xt, xt, attn_mask=mask, need_weights=False)[0]
    _compare(torch, *_plain(mha), run, rng.normal(size=(3, T, E)), params_theirs=theirs, rng=rng)


def test_transformer_layers_train_and_save(tmp_path, rng):
    """train.fit updates the attention's and the norms' parameters through param_grads; the native
    format saves and loads them."""
    from lrpnumpy import io, train
    net = L.Sequential([L.LayerNorm(4), L.MultiheadAttention(4, 2, rng=0), L.RMSNorm(4), L.Linear(4, 4, rng=1),
                        L.GELU(), L.Flatten(), L.Linear(12, 2, rng=2)])
    x = rng.normal(size=(64, 3, 4))
    y = (x[:, 0, 0] > x[:, 2, 1]).astype(int)
    before = net[1].in_proj_weight.copy(), net[0].bias.copy()
    history = train.fit(net, x, y, epochs=8, batch_size=16, progress=False)
    assert history.loss[-1] < history.loss[0]
    assert not np.allclose(net[1].in_proj_weight, before[0]) and not np.allclose(net[0].bias, before[1])
    io.save(net, tmp_path / "t.npz")
    back = io.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.forward(x), net.forward(x))


@pytest.mark.parametrize("case", sorted(set(ONE_INPUT) - {"causal_mask"}))
def test_config_shape_and_float32(case, rng):
    """config() through JSON rebuilds the layer; output_shape without running; float32 stays float32."""
    import json
    make, shape = ONE_INPUT[case]
    layer = make(rng)
    params = {p: getattr(layer, p) for p in layer.params if getattr(layer, p) is not None}
    back = type(layer).from_config(json.loads(json.dumps(layer.config())), params or None)
    assert repr(back) == repr(layer) and L.Layer.registry[type(layer).__name__] is type(layer)
    x = rng.normal(size=shape)
    np.testing.assert_array_equal(back.forward(x), layer.forward(x))
    assert layer.output_shape(shape) == layer.forward(x).shape
    y32 = layer.astype(np.float32).forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, layer.forward(x), rtol=1e-4, atol=1e-5)


@pytest.mark.reference
def test_an_encoder_block_graph_equals_torchs_encoder_layer(rng):
    """A Graph of these layers is torch's TransformerEncoderLayer (norm_first, GELU): outputs and input
    gradients to 1e-12, with the weights copied by torch's parameter names."""
    torch = _torch()
    from test_attnlrp import encoder_block
    net = encoder_block(rng)
    t = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True,
                                         norm_first=True).double().eval()
    ours = {"self_attn.in_proj_weight": net["attn"].in_proj_weight, "self_attn.in_proj_bias": net["attn"].in_proj_bias,
            "self_attn.out_proj.weight": net["attn"].out_proj.weight, "self_attn.out_proj.bias": net["attn"].out_proj.bias,
            "linear1.weight": net["fc1"].weight, "linear1.bias": net["fc1"].bias,
            "linear2.weight": net["fc2"].weight, "linear2.bias": net["fc2"].bias,
            "norm1.weight": net["ln1"].weight, "norm1.bias": net["ln1"].bias,
            "norm2.weight": net["ln2"].weight, "norm2.bias": net["ln2"].bias}
    t.load_state_dict({k: torch.tensor(v) for k, v in ours.items()})
    x = rng.normal(size=(2, 5, 8))
    y, trace = net.forward_trace(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)  # the input needs a gradient, so torch takes its plain (not the fused) path
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = rng.normal(size=y.shape)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(net.backward(g, trace), xt.grad.numpy(), rtol=1e-11, atol=1e-12)
