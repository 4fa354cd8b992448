"""The fast paths behind transformers, each equal to the plain form: a Linear on tokens (N, T, K) with
T >= 32 multiplies each sample in one product of its own, MatMul's stacks of per-head products run each
head's product in small blocks on the kernels' threads (both to rounding, and a sample keeps its bits
alone and anywhere in a batch); GELU in chunks, step 2 without zero denominators and the softmax rule in
one array keep the formulas' bits; a frozen block builds its inner graph once."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites, kernels
from lrpnumpy.kernels import _common, convolution
from lrpnumpy.layers import attention, linear
from oracles import stabilized_masked


def bitwise(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


TOL = {np.float64: 1e-12, np.float32: 2e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_on_tokens_one_product_per_sample(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    layer = L.Linear(24, 40, rng=1, dtype=dtype)
    layer.bias = rng.standard_normal(40).astype(dtype)
    x = rng.standard_normal((7, 33, 24)).astype(dtype)
    blocks = []
    real = linear.matmul_rows
    monkeypatch.setattr(linear, "matmul_rows", lambda a, b: blocks.append(a.shape) or real(a, b))
    y = layer.forward(x)
    g = layer.backward(y, layer.forward_trace(x)[1])
    assert blocks == []  # 33 tokens: no blocks of 32 rows
    assert y.base is None and g.base is None  # new arrays (the rules multiply into them)
    scale = np.abs(x).max() * np.abs(layer.weight).sum(axis=1).max()
    np.testing.assert_allclose(y, x @ layer.weight.T + layer.bias, atol=TOL[dtype] * scale, rtol=0)
    np.testing.assert_allclose(g, y @ layer.weight, atol=TOL[dtype] * np.abs(y).max() * 40, rtol=0)
    for i in (0, 3, 6):  # a sample alone and in the batch: the same bits
        assert bitwise(layer.forward(x[i:i + 1])[0], y[i])
        assert bitwise(layer.backward(y[i:i + 1], layer.forward_trace(x[i:i + 1])[1])[0], g[i])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_token_product_is_each_samples_own_matmul(dtype, layout):
    """Each sample's product is ``np.matmul(x_n, w)`` itself, bit for bit, for weights in either layout
    (the forward pass's ``W^T`` view, the backward pass's ``W``): one call per sample, of one shape."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 45, 96)).astype(dtype)
    w = rng.standard_normal((96, 130)).astype(dtype)
    w = w if layout == "C" else np.asfortranarray(w)
    out = linear._matmul(x, w)
    assert out.base is None and out.flags.c_contiguous
    for n in range(len(x)):
        assert bitwise(out[n], np.matmul(x[n], w))


def test_linear_on_few_tokens_keeps_blocks_of_rows(monkeypatch):
    """Below 32 rows a sample stays in matmul_rows' fixed blocks (a row's bits whatever the batch)."""
    layer = L.Linear(8, 5, rng=1)
    x = np.random.default_rng(0).standard_normal((3, 31, 8))
    blocks = []
    real = linear.matmul_rows
    monkeypatch.setattr(linear, "matmul_rows", lambda a, b: blocks.append(a.shape) or real(a, b))
    y = layer.forward(x)
    assert blocks == [(93, 8)]
    assert bitwise(layer.forward(x[1:2])[0], y[1])


def _stack(rng, n, dtype, m=40, k=24, p=36):
    return rng.standard_normal((n, 3, m, k)).astype(dtype), rng.standard_normal((n, 3, k, p)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("transpose", [False, True])
def test_stacked_products_equal_matmul_and_are_batch_invariant(dtype, transpose, monkeypatch):
    monkeypatch.setattr(attention, "_STACK_GEMM", 0)  # these small heads too
    monkeypatch.setattr(convolution, "SMALL_GEMM", 10 ** 4)  # and in blocks, as ViT-B/16's
    rng = np.random.default_rng(2)
    a, b = _stack(rng, 9, dtype)
    if transpose:  # the backward pass's operands: transposed views
        a, b = np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2), np.swapaxes(
            np.ascontiguousarray(np.swapaxes(b, -1, -2)), -1, -2)
    blocks = []
    real = attention._matmul_small
    monkeypatch.setattr(attention, "_matmul_small", lambda x, y, out: blocks.append(x.shape) or real(x, y, out))
    out = attention._products(a, b)
    assert len(blocks) == 27
    np.testing.assert_allclose(out, np.matmul(a, b), atol=TOL[dtype] * 24 * 16, rtol=0)
    for i in (0, 4, 8):
        assert bitwise(attention._products(a[i:i + 1], b[i:i + 1])[0], out[i])
    monkeypatch.setattr(_common, "THREADS", 1)  # every product on the calling thread: the same bits
    assert bitwise(attention._products(a, b), out)


def test_stacked_products_fall_back_to_matmul():
    """Broadcast leading axes and tiny stacks keep NumPy's loop, bit for bit."""
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((5, 2, 6, 4)), rng.standard_normal((1, 2, 4, 3))
    assert bitwise(attention._products(a, b), np.matmul(a, b))
    a, b = rng.standard_normal((2, 2, 6, 4)), rng.standard_normal((2, 2, 4, 3))
    assert bitwise(attention._products(a, b), np.matmul(a, b))
    assert attention._products(a[:0], b[:0]).shape == (0, 2, 6, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vit_with_many_tokens_is_batch_invariant(dtype, monkeypatch):
    """A ViT of 50 tokens (both fast paths; the per-head path in blocks forced for its small heads): a sample's
    output and AttnLRP relevance alone and first, inside or last of batches of 2, 5 and 9, bit for bit."""
    monkeypatch.setattr(attention, "_STACK_GEMM", 0)
    monkeypatch.setattr(convolution, "SMALL_GEMM", 5000)
    rng = np.random.default_rng(6)
    blocks = [L.TransformerEncoderLayer(32, 4, 64, rng=3 + i, dtype=dtype) for i in range(2)]
    net = L.Sequential(L.PatchEmbedding(3, 32, 4, rng=0, dtype=dtype), L.ClassToken(32, rng=1, dtype=dtype),
                       L.PositionEmbedding(50, 32, rng=2, dtype=dtype), *blocks, L.LayerNorm(32, dtype=dtype),
                       L.SelectToken(0), L.Linear(32, 10, rng=9, dtype=dtype)).freeze()
    x = rng.random((9, 3, 28, 28)).astype(dtype)
    attnlrp = composites.get("attnlrp")
    alone = {i: L.explain(net, x[i:i + 1], composite=attnlrp) for i in (0, 4, 8)}
    for order in ([0, 8], [3, 0, 4, 1, 8], list(range(9))):
        e = L.explain(net, x[order], composite=attnlrp)
        for i in alone:
            if i in order:
                pos = order.index(i)
                assert bitwise(e.output[pos], alone[i].output[0]), (order, i)
                assert bitwise(e.relevance[pos], alone[i].relevance[0]), (order, i)


def test_gelu_in_place_keeps_the_formulas_bits():
    import math

    from scipy.special import erf
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        a = (rng.standard_normal(5000) * 6).astype(dtype)
        a[:6] = [0, -0.0, 1e-40, -1e-40, 40, -40]
        t = a.dtype.type
        assert bitwise(L.GELU().forward(a[None])[0], t(0.5) * a * (1 + erf(a / t(math.sqrt(2.0)))))


@pytest.mark.parametrize("make", [lambda: L.MultiheadAttention(8, 2, rng=0),
                                  lambda: L.TransformerEncoderLayer(8, 2, 16, rng=0)], ids=["attention", "block"])
def test_inner_graph_built_once_while_frozen(make):
    """A frozen layer keeps its inner graph between calls; a new parameter (or an unfrozen layer) gets a new one."""
    layer = make()
    x = np.random.default_rng(0).standard_normal((2, 5, 8))
    first = layer.forward_trace(x)[1].state[0]
    assert layer.forward_trace(x)[1].state[0] is not first  # unfrozen: rebuilt, in-place changes seen
    layer.freeze()
    first = layer.forward_trace(x)[1].state[0]
    assert layer.forward_trace(x)[1].state[0] is first
    y = layer.forward(x)
    name = "in_proj_weight" if isinstance(layer, L.MultiheadAttention) else "self_attn.in_proj_weight"
    setattr(layer, name, getattr(layer, name) * 2)  # a new array: the old graph's views are stale
    step = layer.forward_trace(x)[1]
    assert step.state[0] is not first and not np.allclose(step.output, y)
    np.testing.assert_array_equal(step.output, layer.copy().forward(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_on_the_kernels_threads_keeps_the_formulas_bits(dtype, monkeypatch):
    """Large inputs run in chunks on the kernels' threads (elementwise: the same bits however cut); SciPy's
    erf (the numpy backend's: test_kernels_elementwise has the numba backend's float32 kernel)."""
    import math

    from scipy.special import erf
    a = (np.random.default_rng(8).standard_normal((3, 70, 1000)) * 6).astype(dtype)
    t = a.dtype.type
    runs = []
    real = attention.each_sample
    monkeypatch.setattr(attention, "each_sample", lambda n, run, least=1: runs.append(n) or real(n, run, least))
    monkeypatch.setattr(_common, "THREADS", 2)
    monkeypatch.setattr(kernels, "BACKEND", "numpy")
    y = L.GELU().forward(a)
    assert runs == [a.size]
    assert bitwise(y, t(0.5) * a * (1 + erf(a / t(math.sqrt(2.0)))))
    assert bitwise(L.GELU().forward(a[1:2])[0], y[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.1])
@pytest.mark.parametrize("zeros", [False, True])
def test_stabilized_fast_path_keeps_the_formulas_bits(dtype, epsilon, zeros):
    """Without zero denominators step 2 skips its masking passes: the same s and ledger, bit for bit."""
    from lrpnumpy.rules_transformer import _stabilized
    rng = np.random.default_rng(9)
    z, R = rng.standard_normal((2, 3, 4, 5, 6)).astype(dtype)
    if zeros:
        z[0, 1, 2] = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s, ledger = _stabilized(z, R, epsilon)
        s_ref, ledger_ref = stabilized_masked(z, R, epsilon)
    assert bitwise(s, s_ref) and ledger.keys() == ledger_ref.keys()
    assert all(bitwise(ledger[k], ledger_ref[k]) for k in ledger)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scale", [None, 0.5])
def test_stabilized_jitted_pass_keeps_the_formulas_bits(dtype, threads, scale, monkeypatch):
    """Large arrays with epsilon > 0 take one jitted pass (kernels.step2.stabilized_quotient), the samples on
    the kernels' threads: the same s (times scale) and ledger as the masked formula, bit for bit; a
    non-finite denominator or relevance falls back to the NumPy passes, with the same numbers."""
    if kernels.BACKEND != "numba":
        pytest.skip("the numpy backend is forced")
    from lrpnumpy.kernels import step2
    from lrpnumpy.rules_transformer import _stabilized
    calls = []
    real = step2.stabilized_quotient
    monkeypatch.setattr(step2, "stabilized_quotient", lambda *a: calls.append(a[0].shape) or real(*a))
    monkeypatch.setattr(_common, "threads", lambda: threads)  # (whatever the environment says)
    rng = np.random.default_rng(12)
    z, R = rng.standard_normal((2, 5, 4, 70, 70)).astype(dtype)
    z[0, 1, 2, :3] = [0, -0.0, 1e-30]
    for case in ("finite", "nan z", "inf R"):
        if case == "nan z":
            z[1, 2, 5, 5] = np.nan
        elif case == "inf R":
            z[1, 2, 5, 5] = 1
            R[0, 0, 0, 0] = np.inf
        with np.errstate(invalid="ignore"):
            s, ledger = _stabilized(z, R, 1e-6, scale)
            s_ref, ledger_ref = stabilized_masked(z, R, 1e-6)
        if scale is not None:
            s_ref *= s_ref.dtype.type(scale)
        assert bitwise(s, s_ref) and ledger.keys() == ledger_ref.keys() == {"stabilizer"}, case
        assert bitwise(ledger["stabilizer"], ledger_ref["stabilizer"]), case
        assert bitwise(_stabilized(z[1:], R[1:], 1e-6, scale)[1]["stabilizer"], ledger["stabilizer"][1:]), case
    assert calls == [z.shape, z[1:].shape] * 3


def softmax_rule(x, y, R):
    """AttnLRP's softmax rule as its formula, R_in = x (R - y sum R) (masked scores -inf count as 0), and what
    each sample's softmax absorbs (sum R - sum R_in)."""
    x0 = np.where(np.isneginf(x), x.dtype.type(0), x)
    ref = x0 * (R - y * R.sum(axis=-1, keepdims=True))
    return ref, R.reshape(len(R), -1).sum(axis=1) - ref.reshape(len(R), -1).sum(axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_rule_in_one_array_keeps_the_formulas_bits(dtype, causal):
    from lrpnumpy.rules_transformer import SoftmaxRule
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    if causal:
        x = attention.CausalMask().forward(x)
    layer = L.Softmax(axis=-1)
    y, step = layer.forward_trace(x)
    R = rng.standard_normal(y.shape).astype(dtype)
    R_in, ledger = SoftmaxRule().propagate(step, R)
    ref, absorbed = softmax_rule(x, y, R)
    assert bitwise(R_in, ref) and bitwise(ledger["softmax"], absorbed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_large_softmax_and_its_rule_on_the_kernels_threads_keep_the_formulas_bits(dtype, threads, causal,
                                                                                   monkeypatch):
    """Attention-sized softmaxes (forward and AttnLRP's rule) run their samples on the kernels' threads, in one
    array: the formulas' bits, at one thread or two, a sample alone or in the batch."""
    from lrpnumpy.kernels import elementwise
    from lrpnumpy.rules_transformer import SoftmaxRule
    runs, real = [], elementwise.each_sample  # (both share their samples through elementwise.by_samples)
    monkeypatch.setattr(elementwise, "each_sample", lambda n, run, least=1: runs.append(
        real(n, lambda lo, hi: runs.append((lo, hi)) or run(lo, hi), least)))
    monkeypatch.setattr(_common, "threads", lambda: threads)  # (whatever the environment says)
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((6, 4, 100, 100)) * 3).astype(dtype)
    if causal:
        x = attention.CausalMask().forward(x)
    layer = L.Softmax(axis=-1)
    y, step = layer.forward_trace(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    assert bitwise(y, e / e.sum(axis=-1, keepdims=True))
    R = rng.standard_normal(y.shape).astype(dtype)
    R_in, ledger = SoftmaxRule().propagate(step, R)
    ref, absorbed = softmax_rule(x, y, R)
    assert bitwise(R_in, ref) and bitwise(ledger["softmax"], absorbed)
    split = [(0, 6)] if threads == 1 else [(0, 3), (3, 6)]
    assert sorted(r for r in runs if r is not None) == sorted(split * 2)
    y1, step1 = layer.forward_trace(x[3:4])
    assert bitwise(y1[0], y[3]) and bitwise(SoftmaxRule().propagate(step1, R[3:4])[0][0], R_in[3])


@pytest.mark.parametrize("threads", [1, 2])
def test_large_step4_in_place_on_the_kernels_threads(threads, monkeypatch):
    """Step 4 of the rules (``R = x * c`` into ``c``: the transformer rules' and rules_fast's) on
    attention-sized arrays shares the samples among the kernels' threads: the product's bits, in c's memory."""
    from lrpnumpy import rules_fast, rules_transformer
    from lrpnumpy.kernels import elementwise
    runs = []
    real = elementwise.each_sample
    monkeypatch.setattr(elementwise, "each_sample", lambda n, run, least=1: runs.append(
        real(n, lambda lo, hi: runs.append((lo, hi)) or run(lo, hi), least)))
    monkeypatch.setattr(_common, "threads", lambda: threads)  # (whatever the environment says)
    rng = np.random.default_rng(14)
    split = [(0, 6)] if threads == 1 else [(0, 3), (3, 6)]
    for times in (rules_transformer._times, rules_fast._times):
        runs.clear()
        x, c = (rng.standard_normal((6, 4, 100, 100)).astype(np.float32) for _ in range(2))
        want = x * c
        assert times(x, c) is c and bitwise(c, want)
        assert sorted(r for r in runs if r is not None) == split


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_few_tokens_multiply_a_contiguous_transpose(dtype, monkeypatch):
    """Fewer than 32 tokens a sample and a small weight: the forward product reads a contiguous copy of W^T
    (OpenBLAS's small-matrix kernels read the view W.T 1.6-1.8x slower), cached on a frozen layer, with the
    view's bits on the shipped ViT's shapes; many tokens or a large weight keep the view (no copy)."""
    rng = np.random.default_rng(0)
    operands = []
    real = linear.matmul_rows
    monkeypatch.setattr(linear, "matmul_rows", lambda a, b: operands.append(b) or real(a, b))
    for k, n in ((64, 192), (256, 64), (64, 256)):
        layer = L.Linear(k, n, rng=1, dtype=dtype).freeze()
        x = rng.standard_normal((5, 17, k)).astype(dtype)
        operands.clear()
        y, again = layer.forward(x), layer.forward(x)
        assert all(b.flags.c_contiguous for b in operands) and operands[0] is operands[1] and bitwise(y, again)
        assert bitwise(y, real(x.reshape(-1, k), layer.weight.T).reshape(5, 17, n) + layer.bias)
        assert bitwise(y[2:3], layer.forward(x[2:3]))
    layer = L.Linear(64, 192, rng=1, dtype=dtype)
    for x in (rng.standard_normal((3, 40, 64)), rng.standard_normal((3, 64))):  # tokens >= 32; plain (N, K)
        operands.clear()
        layer.forward(x.astype(dtype))
        assert all(b.base is layer.weight for b in operands)
    big = L.Linear(768, 768, rng=1, dtype=dtype)  # 32 x 768 x 768 multiply-adds: the blocked GEMM packs either way
    operands.clear()
    big.forward(rng.standard_normal((2, 17, 768)).astype(dtype))
    assert all(b.base is big.weight for b in operands)
