"""explain_dataset/evaluate_dataset folders record how they were made (manifest.json): another run into the
same folder is refused naming what differs (or starts afresh with overwrite=True), a resume checks every
chunk it reuses, and load() reads only the chunks the manifest names."""

import json
import os
import warnings

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import parallel as P
from lrpnumpy.errors import LRPError, ManifestError, NonFiniteError

N = 10


@pytest.fixture(scope="module")
def setup():
    net = L.io.load(os.path.join(L.datasets.DATA_DIR, "fashion_mlp.npz"), dtype=np.float64)
    return net, L.datasets.sample(np.float64).images[:N]


def _run(setup, folder, **kw):
    net, x = setup
    kw = {"composite": L.EpsilonPlus(), "batch_size": 4, **kw}
    data = kw.pop("data", x)
    return P.explain_dataset(kw.pop("net", net), data, out=str(folder), progress=False, **kw)


@pytest.fixture
def done(setup, tmp_path):
    """A finished run (chunks of 4, 4, 2) and the relevance it should hold."""
    net, x = setup
    folder = tmp_path / "store"
    _run(setup, folder)
    return folder, L.explain(net, x, composite=L.EpsilonPlus()).relevance


def _chunks(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("chunk_"))


def test_the_manifest_records_the_run(done, setup):
    folder, expected = done
    m = json.loads((folder / P.MANIFEST).read_text())
    assert m["batch_size"] == 4 and m["data"]["length"] == N and m["data"]["sample_shape"] == [1, 28, 28]
    assert m["job"]["composite"]["type"] == "lrpnumpy.composites.EpsilonPlus" and m["job"]["method"] is None
    assert m["target"] is None and m["dtype"] == "<f8" and m["lrpnumpy"] == L.__version__
    assert m["kernels"] == L.kernels.BACKEND and len(m["model"]["fingerprint"]) == 64
    assert m["chunks"] == _chunks(folder) == ["chunk_000000000_000000004.npy", "chunk_000000004_000000008.npy",
                                              "chunk_000000008_000000010.npy"]
    assert m["result"] == {"sample_shape": [1, 28, 28], "dtype": "<f8"}
    np.testing.assert_allclose(P.load(folder), expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("change, field", [
    (dict(batch_size=5), "batch_size"),
    (dict(composite=None, method="gradient"), "job.method"),
    (dict(composite=L.EpsilonGammaBox(low=0.0, high=1.0)), "job.composite"),
    (dict(composite=None, rule=L.Epsilon(0.5)), "job.rule"),
    (dict(target=3), "target"),
    (dict(target=np.arange(N) % 10), "target"),
])
def test_another_run_into_the_folder_is_refused(done, setup, change, field):
    """Red team: another --batch-size reported 20 inputs for 10; another method or target returned the old
    chunks."""
    folder, _ = done
    with pytest.raises(ManifestError, match=rf"differs in .*{field.replace('.', '[.]')} \(folder: ") as info:
        _run(setup, folder, **change)
    assert "overwrite" in str(info.value) and len(str(info.value)) < 1000
    assert len(_chunks(folder)) == 3  # nothing touched


def test_another_model_or_data_is_refused(done, setup):
    folder, _ = done
    net, x = setup
    other = net.copy()
    w = other[1].weight.copy()
    w[0, 0] += 1e-12  # one weight, one ulp-scale change
    other[1].weight = w
    with pytest.raises(ManifestError, match=r"model\.fingerprint"):
        _run(setup, folder, net=other)
    y = x.copy()
    y[-1, 0, 0, 0] = 0.5
    with pytest.raises(ManifestError, match=r"data\.fingerprint"):
        _run(setup, folder, data=y)
    with pytest.raises(ManifestError, match=r"data\.length"):
        _run(setup, folder, data=x[:8])


def test_overwrite_starts_afresh(done, setup):
    folder, _ = done
    net, x = setup
    (folder / "notes.txt").write_text("mine")
    assert _run(setup, folder, batch_size=5, method="gradient", composite=None, overwrite=True) == str(folder)
    assert _chunks(folder) == ["chunk_000000000_000000005.npy", "chunk_000000005_000000010.npy"]
    np.testing.assert_array_equal(P.load(folder), L.methods.gradient(net, x).relevance)
    assert (folder / "notes.txt").read_text() == "mine"  # only the run's files are removed


def test_same_run_again_reuses_every_chunk(done, setup, monkeypatch):
    folder, expected = done
    calls = []
    monkeypatch.setattr(P.Job, "explain", lambda self, *a: calls.append(1))
    _run(setup, folder)
    assert calls == []


def _damage(path, how):
    if how == "nan":
        a = np.load(path)
        a[1, 0, 3, 3] = np.nan
        np.save(path, a)
    elif how == "float32":
        np.save(path, np.load(path).astype(np.float32))
    elif how == "shape":
        np.save(path, np.load(path)[:, :, :27])
    elif how == "rows":
        np.save(path, np.load(path)[:3])
    elif how == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    elif how == "text":
        open(path, "w").write("0.1 0.2 0.3\n")
    elif how == "object":
        np.save(path, np.array([None, 1], dtype=object), allow_pickle=True)
    elif how == "strings":
        np.save(path, np.array(["a"] * 4))
    elif how == "fifo":
        os.remove(path)
        os.mkfifo(path)
    elif how == "huge header":  # declares 2**40 float64 values in 128 bytes
        header = "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 1, 524288, 524288), }"
        open(path, "wb").write(b"\x93NUMPY\x01\x00" + len(header.ljust(118)).to_bytes(2, "little")
                               + header.ljust(117).encode() + b"\n")


DAMAGE = ["nan", "float32", "shape", "rows", "truncated", "text", "object", "strings", "huge header", "fifo"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_bad_chunk_is_recomputed_on_resume_and_refused_by_load(done, setup, how):
    """Red team: a NaN chunk passed through, a float32 chunk was mixed in, wrong-shape, truncated, text or object
    chunks gave tracebacks."""
    folder, expected = done
    bad = folder / "chunk_000000004_000000008.npy"
    _damage(bad, how)
    with pytest.raises(ManifestError, match="chunk_000000004_000000008.npy"):
        P.load(folder)
    with pytest.warns(UserWarning, match=r"chunk_000000004_000000008\.npy: .*computing the chunk again"):
        _run(setup, folder)
    got = P.load(folder)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)


def test_load_reads_only_the_chunks_the_manifest_names(done, setup):
    """Red team: a stray chunk file was included."""
    folder, expected = done
    np.save(folder / "chunk_000000010_000000020.npy", np.ones((10, 1, 28, 28)))
    np.save(folder / "chunk_000000002_000000004.npy", np.ones((2, 1, 28, 28)))
    assert len(P.load(folder)) == N
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(setup, folder)  # the same run: the strays are neither reused nor warned about
    np.testing.assert_allclose(P.load(folder), expected, rtol=1e-10, atol=1e-13)


def test_unfinished_run_missing_manifest_and_damaged_manifest(done, setup):
    folder, expected = done
    os.remove(folder / "chunk_000000008_000000010.npy")
    with pytest.raises(ManifestError, match="unfinished: 1 of 3 chunks are missing"):
        P.load(folder)
    m = json.loads((folder / P.MANIFEST).read_text())
    for damaged in ("{not json", json.dumps({**m, "chunks": ["../../etc/passwd"]}),
                    json.dumps({**m, "chunks": m["chunks"][:1] + m["chunks"][2:]}), json.dumps([1, 2])):
        (folder / P.MANIFEST).write_text(damaged)
        with pytest.raises(ManifestError, match="manifest.json"):
            P.load(folder)
        with pytest.raises(ManifestError, match="overwrite"):
            _run(setup, folder)
    os.remove(folder / P.MANIFEST)
    with pytest.raises(ManifestError, match="no manifest.json"):
        P.load(folder)
    with pytest.raises(ManifestError, match="chunk files .* but no manifest.json"):
        _run(setup, folder)
    _run(setup, folder, overwrite=True)
    np.testing.assert_allclose(P.load(folder), expected, rtol=1e-10, atol=1e-13)


def test_a_run_stopped_before_it_recorded_the_result_shape(done, setup):
    """Without the result record (a run that stopped early), the first missing chunk is computed first, and the
    chunks on disk are checked against it."""
    folder, expected = done
    m = json.loads((folder / P.MANIFEST).read_text())
    (folder / P.MANIFEST).write_text(json.dumps({**m, "result": None}))
    os.remove(folder / "chunk_000000008_000000010.npy")
    _damage(folder / "chunk_000000000_000000004.npy", "float32")
    with pytest.warns(UserWarning, match="chunk_000000000_000000004.npy: shape .*float32"):
        _run(setup, folder)
    got = P.load(folder)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)
    assert json.loads((folder / P.MANIFEST).read_text())["result"] == m["result"]


def test_a_non_finite_result_is_refused_and_not_written(setup, tmp_path):
    def nan_method(model, x, target=None):
        return np.full(x.shape, np.nan)
    with pytest.raises(NonFiniteError, match="chunk_000000000_000000004.npy"):
        _run(setup, tmp_path / "nan", composite=None, method=nan_method)
    assert _chunks(tmp_path / "nan") == []
    with pytest.raises(LRPError, match="one row per input"):
        _run(setup, tmp_path / "rows", composite=None, method=lambda model, x, target=None: x[:1])
    with pytest.raises(LRPError, match="int64 values, expected floats"):
        _run(setup, tmp_path / "ints", composite=None, method=lambda model, x, target=None: np.zeros(x.shape, int))


def test_evaluate_dataset_folder_has_a_manifest_too(setup, tmp_path):
    net, x = setup
    folder = str(tmp_path / "ev")
    a = P.evaluate_dataset(net, x, "pixel_flipping", composite=L.EpsilonPlus(), batch_size=4, out=folder,
                           features_per_step=392)
    b = P.evaluate_dataset(net, x, "pixel_flipping", composite=L.EpsilonPlus(), batch_size=4, out=folder,
                           features_per_step=392)
    np.testing.assert_array_equal(a["curves"], b["curves"])
    assert a["curves"].shape == (N, 3)
    with pytest.raises(ManifestError, match=r"job\.metric_kwargs"):
        P.evaluate_dataset(net, x, "pixel_flipping", composite=L.EpsilonPlus(), batch_size=4, out=folder,
                           features_per_step=196)
    with pytest.raises(ManifestError, match=r"kind"):
        P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=4, out=folder)


def test_a_task_that_writes_its_chunk_returns_only_its_shape(setup, tmp_path):
    """With out=FOLDER nothing large travels back from a worker or stays in the client's memory."""
    net, x = setup
    job = P.Job(composite=L.EpsilonPlus())
    path = str(tmp_path / "chunk_000000000_000000004.npy")
    written = P._task(job, net, x[:4], None, path)
    assert not isinstance(written, np.ndarray) and tuple(written.shape) == (4, 1, 28, 28) and written.dtype == "<f8"
    np.testing.assert_array_equal(np.load(path), P._task(job, net, x[:4], None, None))
    assert P._task(job, net, x[:4], None, path) == written  # a retried task reads the chunk on disk


@pytest.mark.parametrize("scheduler", [None, "threads"])
def test_an_error_in_a_chunk_names_its_inputs(setup, scheduler):
    pytest.importorskip("dask")
    net, x = setup
    y = x.copy()
    y[6, 0, 2, 3] = np.nan
    with pytest.raises(NonFiniteError, match=r"^inputs 4:8: x holds NaN or infinity \(first at index \(2, 0, 2, 3\)\)"):
        P.explain_dataset(net, y, composite=L.EpsilonPlus(), batch_size=4, scheduler=scheduler)


def test_descriptions_tell_methods_and_options_apart():
    import functools
    d = P._describe
    assert d(functools.partial(L.methods.smoothgrad, n=4)) != d(functools.partial(L.methods.smoothgrad, n=8))
    assert d(lambda m, x, t=None: x) != d(lambda m, x, t=None: -x)
    assert d(L.ZBox(np.zeros(20), np.ones(20))) != d(L.ZBox(np.zeros(20), np.r_[np.ones(19), 2.0]))
    assert d({0: L.Epsilon(0.25)}) != d({1: L.Epsilon(0.25)}) and d(L.Epsilon(0.25)) == d(L.Epsilon(0.25))
    assert json.loads(json.dumps(d(L.composites.get("epsilon_gamma_box", low=0.0, high=1.0)))) == \
        d(L.composites.get("epsilon_gamma_box", low=0.0, high=1.0))
