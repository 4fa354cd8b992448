"""A sample's output, gradient and relevance do not depend on the batch it is in, bit for bit.

Alone, first or last of batches of 2, 7 and 64 (256 once), on real shipped Fashion-MNIST images
(zeros and exact ties in the max pools are where a one-ulp difference becomes a different
winner), for the shipped models, the zoo's lenet5 and toolbox_lenet and a residual graph with max
pools, in both dtypes and on both kernel backends.  Before the convolutions and Linear layers
chose their BLAS calls from one sample's shape, every case here failed (BLAS's sums depend on the
shapes it is called with).
"""

import os

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites, datasets, kernels, methods, rules, zoo
from lrpnumpy.io import load_model

from lrpnumpy.datasets import DATA_DIR as DATA  # the shipped package data
SHIPPED = ("fashion_mlp", "fashion_cnn_sumpool", "fashion_cnn_maxpool")
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("numba") is None, reason="numba is not installed"))]


@pytest.fixture(params=BACKENDS)
def backend(request):
    previous = kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(previous)


@pytest.fixture(scope="module")
def images():
    """256 shipped test images of all ten classes, in a fixed mixed order."""
    x = datasets.sample().images
    return x[np.random.default_rng(0).permutation(len(x))[:256]]


def bitwise(a, b):
    """Equal bit for bit (signed zeros included)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def assert_invariant(f, x, sizes=(2, 7, 64), what=""):
    """``f(batch)[k]`` equals ``f(sample alone)[0]`` bit for bit, for x[0] first and x[1] last of each size."""
    alone = [np.asarray(f(x[i:i + 1]))[0] for i in (0, 1)]
    for n in sizes:
        out = np.asarray(f(np.concatenate([x[:1], x[2:n], x[1:2]])))
        assert len(out) == n
        for pos, ref in ((0, alone[0]), (n - 1, alone[1])):
            assert bitwise(out[pos], ref), (f"{what}: position {pos} of a batch of {n} differs from the sample alone "
                                            f"by up to {np.abs(out[pos] - ref).max():.3g}")


def _residual(dtype, coefficients=None):
    """The shipped max-pool CNN with a residual block (3 x 3, 16 -> 16, seeded, plus the skip path)
    after its first max pool: a Graph with an Add node (weighted by ``coefficients``) and two max pools."""
    cnn = load_model(os.path.join(DATA, "fashion_cnn_maxpool.npz"), dtype=dtype)
    layers = list(cnn)
    block = L.Conv2d(16, 16, 3, padding=1, rng=3, dtype=dtype)
    block.weight = block.weight * dtype(0.3)
    nodes = [("conv1", layers[0], "input"), ("relu1", layers[1], "conv1"), ("pool1", layers[2], "relu1"),
             ("block", block, "pool1"), ("add", L.Add(coefficients), ["block", "pool1"]), ("relu_add", L.ReLU(), "add")]
    prev = "relu_add"
    for i, layer in enumerate(layers[3:], start=3):
        nodes.append((f"l{i}", layer, prev))
        prev = f"l{i}"
    return L.Graph(nodes, input_shape=(1, 28, 28))


def model(name, dtype):
    if name in SHIPPED:
        return load_model(os.path.join(DATA, name + ".npz"), dtype=dtype)
    if name == "residual":
        return _residual(dtype)
    return zoo.MODELS[name](seed=0, dtype=dtype)


def inputs(name, images, dtype):
    x = images.astype(dtype)
    return np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))) if name == "toolbox_lenet" else x


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", SHIPPED + ("lenet5", "toolbox_lenet", "residual"))
def test_output_gradient_and_relevance(name, dtype, backend, images):
    net, x = model(name, dtype), inputs(name, images, dtype)
    assert_invariant(net.forward, x, what="output")
    assert_invariant(lambda b: methods.gradient(net, b, target=3).relevance, x, sizes=(2, 64), what="gradient")
    egb = composites.get("epsilon_gamma_box", low=0.0, high=1.0)
    assert_invariant(lambda b: L.explain(net, b, composite=egb).relevance, x, sizes=(7,), what="epsilon_gamma_box")


@pytest.mark.parametrize("name", ["fashion_cnn_maxpool", "residual"])
def test_every_composite(name, backend, images):
    net, x = model(name, np.float32), inputs(name, images, np.float32)
    for key in sorted(composites.REGISTRY):
        comp = composites.get(key, bounds=(0.0, 1.0))
        assert_invariant(lambda b: L.explain(net, b, target=0, composite=comp).relevance, x, sizes=(7,), what=key)


@pytest.mark.parametrize("name", ["lenet5", "toolbox_lenet"])
def test_rules(name, backend, images):
    net, x = model(name, np.float64), inputs(name, images, np.float64)
    for rule in (L.Epsilon(0.25), L.LRP0(), L.ZPlus(), L.AlphaBeta(2, 1), L.Gamma(0.25), L.Flat(), L.WSquare()):
        assert_invariant(lambda b: L.explain(net, b, rule=rule).relevance, x, sizes=(7,), what=repr(rule))


GRADIENT_METHODS = {
    "gradient": {}, "sensitivity": {}, "gradient_x_input": {}, "interior_gradients": {},
    "integrated_gradients": {"n": 4}, "deconvnet": {}, "guided_backprop": {}, "deeplift": {},
    "grad_cam": {}, "simple_taylor": {},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gradient_based_methods(dtype, backend, images):
    net, x = model("fashion_cnn_maxpool", dtype), inputs("fashion_cnn_maxpool", images, dtype)
    for key, kwargs in GRADIENT_METHODS.items():
        method = methods.REGISTRY[key]
        assert_invariant(lambda b: method(net, b, target=5, **kwargs).relevance, x, sizes=(7,), what=key)


def test_batch_of_256(backend, images):
    net = model("lenet5", np.float32)
    x = images.astype(np.float32)
    assert_invariant(net.forward, x, sizes=(256,), what="output")
    assert_invariant(lambda b: L.explain(net, b, composite=L.EpsilonPlus()).relevance, x, sizes=(256,),
                     what="epsilon_plus")


def test_weighted_residual_sum(backend, images):
    """An Add with coefficients (Caffe's Eltwise SUM) adds its terms one by one, in input order (as
    one tensordot, a gemv over the whole batch's values, its sums changed with the batch's length)."""
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        odd = L.Graph([("flat", L.Flatten(), "input"), ("a", L.Linear(784, 7, rng=rng, dtype=dtype), "flat"),
                       ("b", L.Linear(784, 7, rng=rng, dtype=dtype), "flat"),
                       ("add", L.Add([1.0, 0.7]), ["a", "b"]), ("out", L.Linear(7, 10, rng=rng, dtype=dtype), "add")],
                      input_shape=(1, 28, 28))
        assert_invariant(odd.forward, images.astype(dtype), sizes=(2, 3, 5, 7, 64), what="output")
        net, x = _residual(dtype, coefficients=[1.0, 0.7]), images.astype(dtype)
        assert_invariant(net.forward, x, sizes=(7, 64), what="output")
        assert_invariant(lambda b: L.explain(net, b, composite=L.EpsilonPlus()).relevance, x, sizes=(7,),
                         what="epsilon_plus")


def _sequence_models():
    rng = np.random.default_rng(7)
    lstm = L.Sequential(L.LSTM(16, 12, bidirectional=True, output="last", rng=0), L.Linear(24, 3, rng=1))
    gru = L.Sequential(L.GRU(16, 12, output="last", rng=0), L.Linear(12, 3, rng=1))
    attention = L.Sequential(L.MultiheadAttention(8, 2, rng=0), L.LayerNorm(8), L.GELU(), L.Flatten(),
                             L.Linear(40, 3, rng=1))
    return [("lstm", lstm, rng.normal(size=(1, 9, 16)), "lrp_all"), ("gru", gru, rng.normal(size=(1, 9, 16)), "lrp_all"),
            ("attention", attention, rng.normal(size=(1, 5, 8)), "attnlrp"),
            ("attention_cp", attention, rng.normal(size=(1, 5, 8)), "cp_lrp")]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("case", _sequence_models(), ids=lambda c: c[0])
def test_sequence_and_attention_models_are_batch_invariant(case, backend):
    """Recurrent layers (their products through time) and attention blocks: a sequence alone and inside
    batches of 2, 7 and 64 gives the same output, gradient and relevance (the recurrent layers'
    products once ran on the whole batch and differed by ~1e-17)."""
    _, net, x, composite = case
    previous = kernels.set_backend(backend)
    try:
        rng = np.random.default_rng(3)
        for n, pos in ((2, 1), (7, 3), (64, 63)):
            others = rng.normal(size=(n - 1,) + x.shape[1:])
            batch = np.concatenate([others[:pos], x, others[pos:]])
            for run in (lambda v: L.explain(net, v, composite=L.composites.get(composite)),
                        lambda v: L.methods.gradient(net, v)):
                a, b = run(x), run(batch)
                assert a.output[0].tobytes() == b.output[pos].tobytes()
                assert a.relevance[0].tobytes() == b.relevance[pos].tobytes(), (n, pos)
    finally:
        kernels.set_backend(previous)


def _ledger(explanation):
    """The conservation report's per-sample columns, (N, layers, columns)."""
    report = explanation.conservation()
    return np.stack([np.stack([np.asarray(row[c]) for c in report.columns]) for row in report.rows]).transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["fashion_cnn_maxpool", "residual"])
def test_conservation_ledger_sums(name, backend, images):
    """The ledger's per-sample sums (relevance in and out, bias, stabilizer, dropped) at every layer:
    step 2 sums them per sample, by NumPy or in the jitted pass, chosen by the call's size; the bias
    column was a product with the whole batch (float32: 7e-9 of 0.076 at batch 7)."""
    for dtype in (np.float32, np.float64):
        net, x = model(name, dtype), inputs(name, images, dtype)
        egb = composites.get("epsilon_gamma_box", low=0.0, high=1.0)
        for comp in (egb, L.EpsilonPlus(), composites.get("epsilon_alpha2_beta1")):
            assert_invariant(lambda b: _ledger(L.explain(net, b, composite=comp)), x, sizes=(7,),
                             what=f"ledger {comp!r} {np.dtype(dtype).name}")
        for rule in (L.Epsilon(0.0), L.Gamma(0.25)):  # epsilon 0: zero denominators drop relevance
            assert_invariant(lambda b: _ledger(L.explain(net, b, rule=rule)), x, sizes=(7,),
                             what=f"ledger {rule!r} {np.dtype(dtype).name}")


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "plain"])
def test_pixel_flipping_curves(incremental, backend, images):
    """A sample's perturbation curve, on the incremental path (the first layers' outputs updated
    where each step's change reaches) and the plain one."""
    from lrpnumpy import evaluate
    for dtype in (np.float32, np.float64):
        net, x = model("fashion_cnn_maxpool", dtype), images.astype(dtype)[:7]
        relevance = methods.gradient_x_input(net, x, target=3).relevance  # each sample's own, batch invariant
        both = np.concatenate([x, relevance], axis=1)

        def curves(b):
            return evaluate.pixel_flipping(net, b[:, :1], b[:, 1:], target=3, features_per_step=9, steps=16,
                                           incremental=incremental, progress=False).curves
        assert_invariant(curves, both, sizes=(7,), what=f"pixel flipping {np.dtype(dtype).name}")


@pytest.mark.parametrize("rule", [L.Gamma(0.25), L.ZPlus(), L.AlphaBeta(2, 1)], ids=repr)
def test_signs_of_zeros(rule, backend):
    """A sample without negative inputs (-0 among them) skips the x- terms alone but not in a batch
    with negative inputs, where their exact zeros are added: relevance equal to the sign of its zeros."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        net = L.Sequential(L.Flatten(), L.Linear(20, 3, rng=rng, dtype=dtype))
        sample = np.abs(rng.normal(size=(1, 20))).astype(dtype)
        sample[0, ::3] = -0.0
        batch = np.concatenate([sample, rng.normal(size=(2, 20)).astype(dtype)])
        alone = L.explain(net, sample, rule=rule, target=1).relevance
        inside = L.explain(net, batch, rule=rule, target=1).relevance
        assert bitwise(alone[0], inside[0]), np.signbit(alone[0]) ^ np.signbit(inside[0])


@pytest.mark.parametrize("rule", [L.ZPlus(), L.AlphaBeta(2, 1), L.Gamma(0.25), rules.ToolboxAlphaBeta(2.0)], ids=repr)
def test_signed_zeros_do_not_depend_on_another_samples_negative_inputs(rule, backend):
    """Issue 25: a first-layer rule that splits its input by sign, on a sample without a negative
    part, explained alone and next to a sample with one: the same bits, the signs of zeros included
    (the fast path used to skip the term on x- only when no sample of the batch had a negative part)."""
    rng = np.random.default_rng(3)
    net = L.Sequential([L.Linear(12, 9, rng=rng), L.ReLU(), L.Linear(9, 5, rng=rng)])
    nonneg = np.maximum(rng.normal(size=(1, 12)), 0)  # about half its inputs exactly zero
    signed = rng.normal(size=(1, 12))
    R = rng.normal(size=(1, 5))  # relevance of both signs: zeros come out as -0 and +0
    alone = L.explain(net, nonneg, rule=rule, relevance_out=R).relevance[0]
    assert np.signbit(alone[alone == 0]).any() and (alone == 0).any()  # the case this is about
    for batch, pos in ((np.concatenate([signed, nonneg]), 1), (np.concatenate([nonneg, signed, signed]), 0)):
        inside = L.explain(net, batch, rule=rule, relevance_out=np.repeat(R, len(batch), axis=0)).relevance[pos]
        assert bitwise(inside, alone), f"{rule!r}: differs in the batch of {len(batch)}"
        np.testing.assert_array_equal(np.signbit(inside), np.signbit(alone))


@pytest.mark.parametrize("rule", [L.ZPlus(), L.AlphaBeta(2, 1), L.Gamma(0.25)], ids=repr)
def test_a_sample_of_zeros_without_bias_keeps_its_bits_in_a_batch(rule, backend):
    """Both split parts of an all-zero sample vanish on a layer without bias: the fast path keeps one
    group's terms rather than none, sample by sample, so alone and next to signed samples agree bit for bit."""
    rng = np.random.default_rng(4)
    net = L.Sequential([L.Linear(6, 5, bias=False, rng=rng), L.ReLU(), L.Linear(5, 3, rng=rng)])
    zeros, signed = np.zeros((1, 6)), rng.normal(size=(2, 6))
    R = -np.ones((1, 3))
    alone = L.explain(net, zeros, rule=rule, relevance_out=R).relevance[0]
    for batch, pos in ((np.concatenate([signed, zeros]), 2), (np.concatenate([zeros, np.maximum(signed, 0)]), 0)):
        inside = L.explain(net, batch, rule=rule, relevance_out=np.repeat(R, len(batch), axis=0)).relevance[pos]
        assert bitwise(inside, alone), f"{rule!r}: differs in the batch of {len(batch)}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
def test_shipped_vit_is_batch_invariant(composite, dtype, backend, images):
    """The shipped ViT (float32: GELU's kernel from 2,048 values a sample, the patches lowering, stabilize's
    and step 2's paths that switch on an array's size): a sample alone and at three places in batches of
    3, 24 and 40 gives the same output, relevance and conservation report, bit for bit."""
    net = zoo.trained("fashion_vit", dtype=dtype)
    x = images.astype(dtype)
    comp = composites.get(composite)
    for i, (n, pos) in enumerate(((3, 0), (24, 11), (40, 39))):
        batch = np.concatenate([x[i + 1:i + n][:pos], x[i:i + 1], x[i + 1:i + n][pos:]])
        a, b = L.explain(net, x[i:i + 1], composite=comp), L.explain(net, batch, composite=comp)
        assert a.output[0].tobytes() == b.output[pos].tobytes()
        assert a.relevance[0].tobytes() == b.relevance[pos].tobytes(), (n, pos)
        assert _ledger(a)[0].tobytes() == _ledger(b)[pos].tobytes(), (n, pos)
