"""Data sets as users store them (.npy, .npy shards, IDX, zarr, image folders): each worker reads its own
chunk, the result is the serial run's bit for bit, a killed worker changes nothing, a corrupt image is
named (or skipped and listed), and the automatic batch size is recorded and kept on resume."""

import json
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import parallel as P
from lrpnumpy import sources as S
from lrpnumpy.errors import DatasetError, LRPError

N = 48


@pytest.fixture(scope="module")
def net():
    return L.io.load(os.path.join(L.datasets.DATA_DIR, "fashion_mlp.npz"), dtype=np.float64)


@pytest.fixture(scope="module")
def pixels():
    """N shipped images as uint8 (N, 28, 28): what the file formats store."""
    return np.round(L.datasets.sample(np.float64).images[:N, 0] * 255).astype(np.uint8)


def _write_idx(path, a):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape))
        f.write(a.tobytes())


@pytest.fixture(scope="module")
def stored(tmp_path_factory, pixels):
    """The same inputs in every format, and the float64 array they all read as."""
    from PIL import Image
    root = tmp_path_factory.mktemp("stored")
    x = pixels[:, None].astype(np.float64)
    np.save(root / "x.npy", x)
    (root / "shards").mkdir()
    for k, (a, b) in enumerate([(0, 20), (20, 21), (21, N)]):  # uneven shards, one of a single input
        np.save(root / "shards" / f"part{k}.npy", x[a:b])
    _write_idx(root / "images.idx3-ubyte", pixels)
    zarr = pytest.importorskip("zarr", reason="zarr is not installed (the 'data' extra)")
    z = zarr.open_array(str(root / "x.zarr"), mode="w", shape=x.shape, chunks=(7, 1, 28, 28), dtype="f8")
    z[:] = x
    for i, p in enumerate(pixels):  # two classes; 'a' sorts first
        folder = root / "images" / ("a" if i % 3 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(folder / f"{i:03d}.png")
    return root, x


def _kinds(root):
    return {"npy": S.NpySource(root / "x.npy"), "shards": S.NpyShards(root / "shards"),
            "idx": S.IDXSource(root / "images.idx3-ubyte", dtype=np.float64),
            "zarr": S.ZarrSource(root / "x.zarr"),
            "images": S.ImageFolder(root / "images", 28, mode="L", dtype=np.float64)}


def _image_order(root, x):
    src = S.ImageFolder(root / "images", 28, mode="L", dtype=np.float64)
    return np.stack([x[int(os.path.basename(f)[:3])] / 255 for f in src.files])


def test_every_source_reads_what_was_stored(stored):
    root, x = stored
    for kind, src in _kinds(root).items():
        expected = _image_order(root, x) if kind == "images" else x
        assert len(src) == N and src.sample_shape == (1, 28, 28), kind
        np.testing.assert_array_equal(src.read(0, N), expected, err_msg=kind)
        np.testing.assert_array_equal(src.read(19, 22), expected[19:22], err_msg=kind)  # across shards
        np.testing.assert_array_equal(src[5:9], expected[5:9], err_msg=kind)
        assert len(pickle.dumps(src)) < 20_000, kind  # a path and a few numbers, never the data
        pickle.dumps(src.read(0, 2))
        again = pickle.loads(pickle.dumps(src))  # (after reading: the open memory map is not pickled)
        np.testing.assert_array_equal(again.read(3, 5), expected[3:5], err_msg=kind)
        assert src.fingerprint() == again.fingerprint()
    src = S.ImageFolder(root / "images", 28, mode="L")
    assert src.classes == ["a", "b"] and src.labels.tolist() == sorted(src.labels.tolist())
    assert S.as_source(str(root / "x.zarr")).describe()["kind"] == "zarr"
    assert S.as_source(str(root / "shards")).describe()["kind"] == "npy_shards"
    assert S.as_source(str(root / "x.npy")).describe()["kind"] == "npy"


def test_each_source_on_a_cluster_equals_the_serial_run_and_survives_a_killed_worker(stored, net, tmp_path):
    distributed = pytest.importorskip("distributed")
    root, x = stored
    composite = L.EpsilonPlus()
    serial = P.explain_dataset(net, x, composite=composite, batch_size=8, progress=False)
    images = P.explain_dataset(net, _image_order(root, x), composite=composite, batch_size=8, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        for kind, src in _kinds(root).items():
            expected = images if kind == "images" else serial
            for scheduler in (None, "threads", client):
                out = P.explain_dataset(net, src, composite=composite, batch_size=8, scheduler=scheduler,
                                        progress=False)
                np.testing.assert_array_equal(out, expected, err_msg=f"{kind} on {scheduler}")
        # workers write their chunks themselves; one is killed in the middle of the run
        def slow(model, v, t=None):
            time.sleep(0.1)
            return L.explain(model, v, t, composite=composite).relevance
        folder, result = str(tmp_path / "killed"), {}
        job = threading.Thread(target=lambda: result.setdefault("out", P.explain_dataset(
            net, S.NpySource(root / "x.npy"), method=slow, batch_size=2, scheduler=client, out=folder,
            progress=False)))
        job.start()
        deadline = time.time() + 60
        while time.time() < deadline and (not os.path.isdir(folder) or len(os.listdir(folder)) < 5):
            time.sleep(0.01)
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        job.join(timeout=240)
        assert not job.is_alive() and result["out"] == folder
        assert len(P.load(folder)) == N and len(os.listdir(folder)) == N // 2 + 1
        np.testing.assert_array_equal(P.load(folder), serial)
        manifest = json.loads(open(os.path.join(folder, P.MANIFEST)).read())
        assert manifest["data"]["source"]["kind"] == "npy" and manifest["data"]["length"] == N


def test_process_scheduler_reads_a_file_source(stored, tmp_path):
    import subprocess
    import sys
    root, _ = stored
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np, lrpnumpy as L\n"
        "from lrpnumpy import parallel as P, sources as S\n"
        "if __name__ == '__main__':\n"
        "    net = L.zoo.lenet5(seed=0)\n"
        "    src = S.NpyShards(sys.argv[1])\n"
        "    a = P.explain_dataset(net, src, method='gradient', batch_size=16, scheduler='processes')\n"
        "    b = P.explain_dataset(net, src.read(0, len(src)), method='gradient', batch_size=16)\n"
        "    print(np.array_equal(a, b))\n")
    out = subprocess.run([sys.executable, str(script), str(root / "shards")], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.split()[-1:] == ["True"], out.stderr[-2000:]


def test_a_corrupt_image_is_named_or_skipped_and_listed(stored, net, tmp_path):
    import shutil
    root, _ = stored
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    bad = images / "b" / "009.png"
    assert bad.exists()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image")
    src = S.ImageFolder(images, 28, mode="L", dtype=np.float64)
    with pytest.raises(DatasetError, match=r"009\.png: cannot be decoded as an image .*on_error='skip'"):
        P.explain_dataset(net, src, composite=L.EpsilonPlus(), batch_size=8, progress=False)
    skipping = S.ImageFolder(images, 28, mode="L", dtype=np.float64, on_error="skip")
    assert len(skipping) == N - 1 and [os.path.basename(p) for p, _ in skipping.skipped] == ["009.png"]
    out = P.explain_dataset(net, skipping, composite=L.EpsilonPlus(), batch_size=8, progress=False,
                            out=str(tmp_path / "run"))
    manifest = json.loads(open(os.path.join(out, P.MANIFEST)).read())
    assert manifest["data"]["source"]["skipped"] == [os.path.join("b", "009.png")]
    assert len(P.load(out)) == N - 1
    with pytest.raises(LRPError, match="on_error"):
        S.ImageFolder(images, 28, on_error="ignore")


def test_bad_files_are_named(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"a\.npy: not a \.npy array"):
        S.NpySource(tmp_path / "a.npy")
    _write_idx(tmp_path / "short.idx", np.zeros((4, 3, 3), np.uint8))
    with open(tmp_path / "short.idx", "ab") as f:
        f.write(b"x")
    with pytest.raises(DatasetError, match=r"short.idx: holds 53 bytes, its header \(shape \(4, 3, 3\)"):
        S.IDXSource(tmp_path / "short.idx")
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "0.npy", np.zeros((2, 3)))
    np.save(tmp_path / "shards" / "1.npy", np.zeros((2, 4)))
    with pytest.raises(DatasetError, match=r"1\.npy: shape \(2, 4\)"):
        S.NpyShards(tmp_path / "shards")


def test_the_automatic_batch_size_bounds_the_overhead_and_is_kept_on_resume(net, stored, tmp_path, monkeypatch):
    _, x = stored
    job = P.Job(composite=L.EpsilonPlus())
    b = P.choose_batch_size(job, net, x, overhead=0.05)
    b = P.choose_batch_size(job, net, x, overhead=0.002)
    assert (b & (b - 1) == 0 or b == N) and 1 <= b <= N  # a power of two (or all inputs)
    small = P.choose_batch_size(job, net, x, overhead=1e-6)
    assert small == 1 and P.choose_batch_size(job, net, x, overhead=100.0) == N
    folder = str(tmp_path / "auto")
    monkeypatch.setattr(P, "choose_batch_size", lambda *a, **k: 16)
    P.explain_dataset(net, x, composite=L.EpsilonPlus(), out=folder, progress=False)
    assert json.loads(open(os.path.join(folder, P.MANIFEST)).read())["batch_size"] == 16
    os.remove(os.path.join(folder, "chunk_000000016_000000032.npy"))
    monkeypatch.setattr(P, "choose_batch_size", lambda *a, **k: 8)  # another machine, another measurement
    P.explain_dataset(net, x, composite=L.EpsilonPlus(), out=folder, progress=False)  # resumes, not refused
    np.testing.assert_array_equal(P.load(folder), P.explain_dataset(net, x, composite=L.EpsilonPlus(),
                                                                     batch_size=16, progress=False))


def test_the_cli_sends_a_path_not_the_data(stored, net, tmp_path):
    """explain-dataset's .npy data travel to a worker as a path (a few hundred bytes), read there, and are
    fingerprinted by content as before (a folder made from the array in memory resumes)."""
    from lrpnumpy.__main__ import _read_dataset
    root, x = stored
    np.save(tmp_path / "u8.npy", np.round(x * 0).astype(np.uint8) + 7)
    for name in ("x.npy", "u8.npy"):
        path = str((root if name == "x.npy" else tmp_path) / name)
        data = _read_dataset(path, net)
        inner = data.data if name == "u8.npy" else data  # (converted to the network's dtype on reading)
        assert len(pickle.dumps(inner)) < 5_000, name
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(data))[3:9], data[3:9])
    folder = str(tmp_path / "run")
    P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=16, out=folder, progress=False)
    P.explain_dataset(net, _read_dataset(str(root / "x.npy"), net), composite=L.EpsilonPlus(), batch_size=16,
                      out=folder, progress=False)  # the same manifest: not refused
