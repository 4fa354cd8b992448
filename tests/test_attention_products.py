"""Attention's per-head products (``attention._products``): a sample's numbers are set by the product's shape
and layout alone, never by the batch; the old per-head formula (both operands copied, then
``_matmul_small``) is kept here as an oracle for the products whose bits did not change; CP-LRP's rule makes
one product per MatMul, not two."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites
from lrpnumpy.errors import ParameterError
from lrpnumpy.kernels import _common, convolution
from lrpnumpy.layers import attention
from lrpnumpy.rules_transformer import HoldConstant


def bitwise(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def old_formula(a, b):
    """The per-head products as they were: each operand copied to rows, then ``_matmul_small``."""
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a, b = np.broadcast_to(a, lead + a.shape[-2:]), np.broadcast_to(b, lead + b.shape[-2:])
    out = np.empty(lead + (a.shape[-2], b.shape[-1]), a.dtype)
    for at in np.ndindex(*lead):
        convolution._matmul_small(np.ascontiguousarray(a[at]), np.ascontiguousarray(b[at]), out[at])
    return out


def _heads(rng, dtype, n, h, t, d, kind):
    """The operands of one of attention's six products, as the layers store them (heads contiguous)."""
    q, v = rng.standard_normal((2, n, h, t, d)).astype(dtype)
    kT = rng.standard_normal((n, h, d, t)).astype(dtype)
    A, G = rng.random((2, n, h, t, t)).astype(dtype)
    Gc = rng.standard_normal((n, h, t, d)).astype(dtype)
    return {"scores": (q, kT), "context": (A, v),  # forward
            "grad q": (G, np.swapaxes(kT, -1, -2)), "grad kT": (np.swapaxes(q, -1, -2), G),  # backward: b, a transposed
            "grad A": (Gc, np.swapaxes(v, -1, -2)), "grad v": (np.swapaxes(A, -1, -2), Gc)}[kind]


KINDS = ["scores", "context", "grad q", "grad kT", "grad A", "grad v"]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_vit_b_head_products_alone_and_in_a_batch(dtype, kind):
    """ViT-B/16's head (197 tokens, 64 features: 2.5e6 multiply-adds, in blocks): one sample, one head alone
    (calling thread) and in a stack of 3 x 2 heads (the kernels' threads): the same bits, matmul's numbers.
    All keep the old formula's bits."""
    rng = np.random.default_rng(KINDS.index(kind))
    a, b = _heads(rng, dtype, 3, 2, 197, 64, kind)
    out = attention._products(a, b)
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=0, atol=TOL[dtype] * 197)
    for n, h in [(0, 0), (1, 1), (2, 0)]:
        assert bitwise(attention._products(a[n:n + 1, h:h + 1], b[n:n + 1, h:h + 1])[0, 0], out[n, h])
        assert bitwise(attention._products(a[n:n + 1], b[n:n + 1])[0], out[n])
    assert bitwise(out, old_formula(a, b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_products_keep_their_calls_in_any_stack(dtype):
    """50 x 50 x 16 with a transposed ``b``: alone, among 4 heads (NumPy's loop) and among 1,200 (the kernels'
    threads), the same one call per matrix, so the same bits.  (It took the copied path in the large stack
    before, and its last bits changed with the batch.)"""
    rng = np.random.default_rng(3)
    G = rng.standard_normal((300, 4, 50, 50)).astype(dtype)
    B = rng.standard_normal((300, 4, 16, 50)).astype(dtype)
    big = attention._products(G, np.swapaxes(B, -1, -2))
    assert 300 * 4 * 50 * 50 * 16 >= attention._STACK_GEMM
    for i in (0, 150, 299):
        assert bitwise(attention._products(G[i:i + 1], np.swapaxes(B[i:i + 1], -1, -2))[0], big[i])
        assert bitwise(np.matmul(G[i], np.swapaxes(B[i], -1, -2)), big[i])


def test_single_head_stack_takes_blocks_whatever_the_batch(monkeypatch):
    """One head of ViT-B/16's shape alone (lead (1, 1)): below ``_STACK_GEMM`` in all, yet in blocks as in a
    batch of 3 (it was one whole call before, possibly on BLAS's two threads: another path)."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 1, 197, 64)), rng.standard_normal((3, 1, 64, 197))
    assert 197 * 64 * 197 < attention._STACK_GEMM
    calls = []
    real = attention._matmul_small
    monkeypatch.setattr(attention, "_matmul_small", lambda x, y, out: calls.append(x.shape) or real(x, y, out))
    out = attention._products(a, b)
    one = attention._products(a[1:2], b[1:2])
    assert len(calls) == 4 and bitwise(one[0], out[1])


def test_broadcast_stack_takes_the_same_calls():
    """A ``b`` broadcast along the batch (lead (1, H)): each sample's product as with ``b`` repeated."""
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((5, 2, 197, 64)).astype(np.float32), rng.standard_normal((1, 2, 64, 197)).astype(np.float32)
    out = attention._products(a, b)
    assert bitwise(out, attention._products(a, np.repeat(b, 5, axis=0)))
    assert bitwise(out[3], attention._products(a[3:4], b)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("heads,width,blocks", [(2, 128, False), (1, 64, False), (4, 48, True)])
def test_attention_alone_and_in_a_batch(dtype, heads, width, blocks, monkeypatch):
    """MultiheadAttention over 197 tokens (heads of 64: ViT-B/16's; one head: its stack alone is below
    ``_STACK_GEMM``; heads of 12 with blocks forced): output, input gradient, AttnLRP's and
    CP-LRP's relevance of a sample alone and at three places in a batch of 4, bit for bit, with one thread
    and with two."""
    if blocks:
        monkeypatch.setattr(convolution, "SMALL_GEMM", 20000)
    rng = np.random.default_rng(heads)
    attn = L.MultiheadAttention(width, heads, rng=1, dtype=dtype)
    attn.in_proj_bias = (0.1 * rng.standard_normal(3 * width)).astype(dtype)
    net = L.Sequential(attn, L.SelectToken(0), L.Linear(width, 3, rng=2, dtype=dtype)).freeze()
    x = rng.standard_normal((4, 197, width)).astype(dtype)

    def everything(x):
        y, trace = net.forward_trace(x)
        step = trace[0]
        g = attn.backward(np.cos(step.output), step)
        rel = [L.explain(net, x, composite=composites.get(c)).relevance for c in ("attnlrp", "cp_lrp")]
        return [y, g, *rel]

    for threads in (2, 1):
        monkeypatch.setattr(_common, "THREADS", threads)
        batch = everything(x)
        for i in (0, 2, 3):
            alone = everything(x[i:i + 1])
            for whole, one in zip(batch, alone):
                assert bitwise(whole[i], one[0]), (threads, i)


class _HoldConstantTwoProducts(HoldConstant):
    """The rule as it was: both products of the backward pass, one of them thrown away (the oracle)."""

    def _propagate(self, step, R):
        from lrpnumpy.rules_transformer import _stabilized
        z = step.output
        s, ledger = _stabilized(z, R, self.epsilon)
        c = step.layer.backward(s, step)[1 - self.constant]
        free = step.inputs[1 - self.constant]
        zero = np.zeros(step.inputs[self.constant].shape, R.dtype)
        return ((zero, free * c) if self.constant == 0 else (free * c, zero)), ledger


@pytest.mark.parametrize("layer,shapes", [(L.MatMul(), [(2, 3, 5, 4), (1, 3, 4, 6)]), (L.Mul(), [(2, 3, 4), (1, 3, 4)])])
def test_input_grad_is_backwards_own_part(layer, shapes):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s) for s in shapes)
    y, step = layer.forward_trace(a, b)
    g = rng.standard_normal(y.shape)
    both = layer.backward(g, step)
    for i in (0, 1):
        assert bitwise(layer.input_grad(g, step, i), both[i])
    with pytest.raises(ParameterError, match="inputs 0 and 1"):
        layer.input_grad(g, step, 2)


@pytest.mark.parametrize("constant", [0, 1])
def test_hold_constant_makes_one_product(constant, monkeypatch):
    """CP-LRP's rule on MatMul: the free input's product only (half the backward pass's), the same bits as
    the rule that made both."""
    rng = np.random.default_rng(4)
    layer = L.MatMul()
    a, b = rng.random((2, 3, 20, 16)), rng.standard_normal((2, 3, 16, 20))
    y, step = layer.forward_trace(a, b)
    R = rng.standard_normal(y.shape)
    old = _HoldConstantTwoProducts(constant, 1e-6).propagate(step, R)
    calls = []
    real = attention._products
    monkeypatch.setattr(attention, "_products", lambda x, w: calls.append(1) or real(x, w))
    new = HoldConstant(constant, 1e-6).propagate(step, R)
    assert len(calls) == 1
    for o, n in zip(old[0], new[0]):
        assert bitwise(o, n)
