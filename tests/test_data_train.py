"""Data sets (IDX, Fashion-MNIST, digits, the shipped sample) and training with lrpnumpy's own backward."""

import gzip

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import datasets as D, train as T
from lrpnumpy.errors import DatasetError, RuleParameterError


def _idx(array, code=0x08):
    head = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return head + array.astype({0x08: ">u1", 0x0D: ">f4"}[code]).tobytes()


def test_idx_plain_and_gzip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx(a))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx(a)))
    for name in ("a.idx", "a.idx.gz"):
        got = D.load_idx(tmp_path / name)
        np.testing.assert_array_equal(got, a)
        assert got.dtype == np.uint8
    f = np.linspace(-1, 1, 6).reshape(2, 3)
    (tmp_path / "f.idx").write_bytes(_idx(f, 0x0D))
    np.testing.assert_allclose(D.load_idx(tmp_path / "f.idx"), f, rtol=1e-7)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "truncated or damaged"), (lambda b: b + b"x", "truncated or damaged"),
    (lambda b: b"\x01" + b[1:], "not an IDX file"), (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
    (lambda b: b[:6], "truncated IDX header"), (lambda b: b"", "not an IDX file"),
    (lambda b: gzip.compress(b)[:20], "cannot be read"),
])
def test_idx_errors(tmp_path, damage, message):
    (tmp_path / "bad").write_bytes(damage(_idx(np.zeros((2, 3), np.uint8))))
    with pytest.raises(DatasetError, match=message):
        D.load_idx(tmp_path / "bad")
    with pytest.raises(DatasetError, match="cannot be read"):
        D.load_idx(tmp_path / "missing")


def test_idx_declaring_huge_sizes_allocates_nothing(tmp_path):
    """255 dimensions of 2**32 - 1 (an OverflowError in float arithmetic before) and a gzip file declaring
    more than memory: refused from the header alone."""
    head = bytes([0, 0, 0x0E, 255]) + b"\xff\xff\xff\xff" * 255
    (tmp_path / "dims").write_bytes(head + b"\0" * 64)
    with pytest.raises(DatasetError, match=r"truncated or damaged") as info:
        D.load_idx(tmp_path / "dims")
    assert "255 dimensions" in str(info.value) and len(str(info.value)) < 400
    (tmp_path / "dims.gz").write_bytes(gzip.compress(head))
    with pytest.raises(DatasetError, match="more than this machine's memory"):
        D.load_idx(tmp_path / "dims.gz")
    big = bytes([0, 0, 8, 2]) + np.array([1000, 1000], ">u4").tobytes()  # declares 1e6 bytes, holds 5e6
    (tmp_path / "long.gz").write_bytes(gzip.compress(big + bytes(5_000_000)))
    with pytest.raises(DatasetError, match="truncated or damaged"):
        D.load_idx(tmp_path / "long.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(big + bytes(10)))
    with pytest.raises(DatasetError, match="truncated or damaged"):
        D.load_idx(tmp_path / "short.gz")


def test_fashion_mnist_without_the_files_says_how_to_get_them(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        D.fashion_mnist("test", path=tmp_path)
    with pytest.raises(DatasetError, match="split"):
        D.fashion_mnist("validation")


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8), np.arange(5, dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(labels))
    d = D.fashion_mnist("test", path=tmp_path, dtype=np.float32)
    assert d.images.shape == (5, 1, 28, 28) and d.images.dtype == np.float32
    np.testing.assert_allclose(d.images[:, 0] * 255, images, rtol=1e-6)
    assert d.labels.tolist() == [0, 1, 2, 3, 4] and d.classes[9] == "Ankle boot"


def test_shipped_sample():
    s = D.sample()
    assert s.images.shape == (1000, 1, 28, 28) and s.images.min() >= 0 and s.images.max() <= 1
    assert np.bincount(s.labels).tolist() == [100] * 10 and len(s.classes) == 10


def test_digits():
    pytest.importorskip("sklearn")
    d = D.digits()
    assert d.images.shape == (1797, 1, 8, 8) and 0 <= d.images.min() and d.images.max() == 1
    a, b = D.split(d, 0.25, seed=0)
    assert len(a.labels) + len(b.labels) == 1797 and abs(len(b.labels) - 449) <= 1


def test_cross_entropy_gradient_by_finite_differences(rng):
    z, y = rng.normal(size=(4, 5)), np.array([0, 3, 4, 1])
    loss, grad = T.cross_entropy(z, y)
    h = 1e-6
    for i in np.ndindex(z.shape):
        d = np.zeros_like(z)
        d[i] = h
        fd = (T.cross_entropy(z + d, y)[0] - T.cross_entropy(z - d, y)[0]) / (2 * h)
        assert abs(fd - grad[i]) < 1e-8
    assert np.isclose(loss, np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(4), y]))


@pytest.fixture(scope="module")
def digit_sets():
    pytest.importorskip("sklearn")
    return D.split(D.digits(), 0.25, seed=0)


def test_training_on_digits_reaches_95_percent(digit_sets):
    tr, te = digit_sets
    net = L.Sequential(L.Conv2d(1, 8, 3, padding=1, rng=0), L.ReLU(), L.SumPool2d(2), L.Flatten(),
                       L.Linear(8 * 16, 10, rng=1), L.Softmax())
    h = T.fit(net, tr.images, tr.labels, epochs=10, batch_size=32, optimizer=T.SGD(0.05, 0.9),
              validation=(te.images, te.labels), seed=0, nonpositive_bias=True, progress=False)
    assert h.accuracy[-1] >= 0.95 and h.loss[-1] < h.loss[0]
    assert T.accuracy(net, te.images, te.labels) == h.accuracy[-1]
    assert all(layer.bias.max() <= 0 for layer in net if getattr(layer, "bias", None) is not None)
    mlp = L.Sequential(L.Flatten(), L.Linear(64, 64, rng=0), L.ReLU(), L.Linear(64, 10, rng=1))
    h = T.fit(mlp, tr.images, tr.labels, epochs=15, batch_size=32, optimizer=T.Adam(3e-3, weight_decay=1e-4),
              validation=(te.images, te.labels), progress=False)
    assert h.accuracy[-1] >= 0.95


def test_same_seed_same_weights(digit_sets):
    tr, _ = digit_sets
    nets = []
    for _ in range(2):
        net = L.Sequential(L.Flatten(), L.Linear(64, 10, rng=3))
        T.fit(net, tr.images[:200], tr.labels[:200], epochs=2, seed=7, progress=False)
        nets.append(net)
    np.testing.assert_array_equal(nets[0][1].weight, nets[1][1].weight)
    other = L.Sequential(L.Flatten(), L.Linear(64, 10, rng=3))
    T.fit(other, tr.images[:200], tr.labels[:200], epochs=2, seed=8, progress=False)
    assert not np.array_equal(other[1].weight, nets[0][1].weight)


def test_a_shared_layer_gets_the_sum_of_its_gradients(rng):
    lin = L.Linear(4, 4, rng=0)
    net = L.Sequential(lin, L.ReLU(), lin)
    x, y = rng.normal(size=(8, 4)), rng.integers(0, 4, 8)
    out, trace = net.forward_trace(x)
    _, grad = T.cross_entropy(out, y)
    _, grads = net.backward(grad, trace, param_grads=True)
    w0 = lin.weight.copy()
    T.SGD(lr=0.1, momentum=0.0).step(T._gathered(trace, grads))
    np.testing.assert_allclose(lin.weight, w0 - 0.1 * (grads[0]["weight"] + grads[2]["weight"]), rtol=1e-12)


def test_training_errors(rng):
    net = L.Sequential(L.Linear(3, 2)).freeze()
    with pytest.raises(RuleParameterError, match="frozen"):
        T.fit(net, rng.random((4, 3)), np.zeros(4, int), progress=False)
    with pytest.raises(L.errors.ShapeError, match="labels"):
        T.fit(L.Sequential(L.Linear(3, 2)), rng.random((4, 3)), np.zeros(3, int), progress=False)
    with pytest.raises(RuleParameterError):
        T.SGD(lr=-1)
    with pytest.raises(RuleParameterError):
        T.fit(L.Sequential(L.Linear(3, 2)), rng.random((4, 3)), np.zeros(4, int), epochs=0)
