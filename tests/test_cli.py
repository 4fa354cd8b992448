"""The command line: demo, explain, train, bench, --help and --version; bad input is exit 2 and one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import datasets
from lrpnumpy.__main__ import main

MODEL = os.path.join(datasets.DATA_DIR, "fashion_mlp.npz")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lrpnumpy", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", [[], ["demo"], ["explain"], ["verify"], ["train"], ["bench"]])
def test_help_on_every_command(command):
    r = _cli(*command, "--help")
    assert r.returncode == 0 and "usage: lrpnumpy" in r.stdout


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"lrpnumpy {L.__version__}"


def test_explain_npy_and_png(tmp_path, capsys):
    from PIL import Image
    s = datasets.sample()
    np.save(tmp_path / "x.npy", s.images[:2])
    np.save(tmp_path / "one.npy", s.images[2])  # one sample: the batch axis is added
    Image.fromarray((s.images[3, 0] * 255).round().astype(np.uint8)).save(tmp_path / "img.png")
    args = ["explain", MODEL, str(tmp_path / "x.npy"), str(tmp_path / "one.npy"), str(tmp_path / "img.png"),
            "--out", str(tmp_path / "h.png"), "--npy", str(tmp_path / "r.npy"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    r = np.load(tmp_path / "r.npy")
    assert r.shape == (4, 1, 28, 28) and (tmp_path / "h.png").exists()
    net = L.io.load(MODEL)
    e = L.explain(net, s.images[:4].astype(net.dtype), composite=L.EpsilonPlus())
    np.testing.assert_allclose(r, e.relevance, rtol=1e-5, atol=1e-6)  # the PNG round trip is exact for 8 bits
    assert [row["predicted"] for row in out["rows"]] == e.output.argmax(1).tolist()
    assert out["rows"][0]["predicted_class"] in datasets.FASHION_MNIST_CLASSES
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--rule", "epsilon:epsilon=0.25", "--target", "3"]) == 0
    assert "target 3" in capsys.readouterr().out
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--method", "gradient"]) == 0
    capsys.readouterr()
    cnn = os.path.join(datasets.DATA_DIR, "fashion_cnn_maxpool.npz")
    for method in ("deeplift", "grad_cam"):  # any registered method, drawn at the input's size
        assert main(["explain", cnn if method == "grad_cam" else MODEL, str(tmp_path / "x.npy"), "--method", method,
                     "--npy", str(tmp_path / f"{method}.npy"), "--out", str(tmp_path / f"{method}.png")]) == 0
        assert np.load(tmp_path / f"{method}.npy").shape == (2, 1, 28, 28)
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--method", "grad_cam"]) == 2  # an MLP has no maps
    np.testing.assert_allclose(np.load(tmp_path / "deeplift.npy"),
                               L.methods.deeplift(net, s.images[:2].astype(net.dtype)).relevance, rtol=1e-12)
    capsys.readouterr()
    assert main(["explain", MODEL, str(tmp_path / "img.png"), "--input-range", "0", "2", "--npy",
                 str(tmp_path / "r2.npy")]) == 0
    x2 = (s.images[3:4] * 2).astype(net.dtype)  # pixels scaled to [0, 2]
    np.testing.assert_allclose(np.load(tmp_path / "r2.npy"), L.explain(net, x2, composite=L.EpsilonPlus()).relevance,
                               rtol=1e-5, atol=1e-6)


def test_bad_input_is_exit_2_and_one_line(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 5, 5)))
    for args in (["explain", MODEL, str(tmp_path / "missing.npy")], ["explain", MODEL, str(tmp_path / "bad.npy")],
                 ["explain", MODEL, str(tmp_path / "bad.npy"), "--rule", "nope"],
                 ["explain", MODEL, str(tmp_path / "bad.npy"), "--rule", "epsilon:epsilon=x"],
                 ["explain", MODEL, str(tmp_path / "bad.npy"), "--composite", "nope"],
                 ["explain", MODEL, str(tmp_path / "bad.npy"), "--method", "lime"],
                 ["evaluate", MODEL, str(tmp_path / "bad.npy")],
                 ["evaluate", MODEL, str(tmp_path / "missing.npy"), "--methods", "lime"],
                 ["explain", str(tmp_path / "none.npz"), str(tmp_path / "bad.npy")],
                 ["train", "nope"], ["demo", "--model", "nope"], ["nope"]):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


@pytest.mark.parametrize("exists", [True, False])
def test_train_regenerates_a_model(tmp_path, monkeypatch, exists):
    """`lrpnumpy train` runs data/make_models.py's recipe (here on a tiny fake data set); --out is created when
    missing."""
    import gzip
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, a in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            head = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes()
            (tmp_path / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(head + a.tobytes()))
    out = tmp_path / "models" if exists else tmp_path / "new" / "models"
    if exists:
        out.mkdir()
    assert main(["train", "fashion_mlp", "--epochs", "1", "--fashion-mnist", str(tmp_path), "--out", str(out)]) == 0
    net = L.io.load(out / "fashion_mlp.npz")
    assert net.meta["classes"][0] == "T-shirt/top" and net.input_shape == (1, 28, 28)


def test_evaluate_prints_one_table(tmp_path, capsys):
    s = datasets.sample()
    np.save(tmp_path / "x.npy", s.images[:3])
    assert main(["evaluate", MODEL, str(tmp_path / "x.npy"), "--methods", "epsilon_plus", "gradient", "random",
                 "--features-per-step", "56", "--json", "--csv", str(tmp_path / "t.csv"), "--plot",
                 str(tmp_path / "c.png")]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["method"] for r in rows] == ["epsilon_plus", "gradient", "random"]
    net = L.io.load(MODEL)
    x = s.images[:3].astype(net.dtype)
    e = L.explain(net, x, composite=L.EpsilonPlus())
    pf = L.evaluate.pixel_flipping(net, x, e.relevance, features_per_step=56)
    np.testing.assert_allclose(rows[0]["pixel_flipping_aopc"], pf.aopc().mean(), rtol=1e-12)
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "method,pixel_flipping_aopc,pixel_flipping_auc"
    assert (tmp_path / "c.png").exists()


def test_explain_dataset_command(tmp_path, capsys):
    pytest.importorskip("dask")
    s = datasets.sample()
    np.save(tmp_path / "x.npy", s.images[:70])
    assert main(["explain-dataset", MODEL, str(tmp_path / "x.npy"), "--batch-size", "32", "--scheduler", "threads",
                 "--out", str(tmp_path / "store"), "--npy", str(tmp_path / "r.npy"), "--quiet"]) == 0
    assert "explained 70 inputs" in capsys.readouterr().out
    net = L.io.load(MODEL)
    expected = L.parallel.explain_dataset(net, s.images[:70].astype(net.dtype), composite=L.EpsilonPlus(),
                                          batch_size=32)
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), expected)
    chunks = sorted(n for n in os.listdir(tmp_path / "store") if n.startswith("chunk_"))
    assert chunks[-1] == "chunk_000000064_000000070.npy"
    r = _cli("explain-dataset", MODEL, str(tmp_path / "x.npy"), "--method", "lime")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def _png(path, width, height):
    """A PNG whose header declares width x height grey pixels (its data are a few bytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def _hostile_inputs(tmp_path):
    s = datasets.sample().images[:4]
    arrays = {"complex": s.astype(complex), "datetime": np.zeros((2, 1, 28, 28), "datetime64[s]"),
              "string": np.array(["a", "b"]), "structured": np.zeros(2, [("a", "f8"), ("b", "i4")]),
              "bool": s > 0.5, "int32": (s * 255).astype(np.int32), "huge": np.full((2, 1, 28, 28), 1e300)}
    for name, a in arrays.items():
        np.save(tmp_path / f"{name}.npy", a)
    np.save(tmp_path / "object.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("0.1 0.2\n")
    whole = (tmp_path / "complex.npy").read_bytes()
    np.save(tmp_path / "ok.npy", s)
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:5000])
    (tmp_path / "header.npy").write_bytes(whole[:60])
    _png(tmp_path / "bomb.png", 100000, 100000)  # Pillow's DecompressionBombError
    _png(tmp_path / "big.png", 10000, 10000)  # above lrpnumpy's limit, Pillow's warning
    (tmp_path / "dims.idx").write_bytes(bytes([0, 0, 0x0E, 255]) + b"\xff\xff\xff\xff" * 255)
    return sorted(list(arrays) + ["object", "text", "truncated", "header"])


def test_hostile_inputs_are_exit_2_and_one_line(tmp_path, capsys):
    """Red team: a PNG declaring 100000 x 100000 pixels, .npy inputs of strings, records, objects, text or a
    truncated file, an IDX file of 255 dimensions: tracebacks; complex and datetime64 inputs silently cast."""
    names = _hostile_inputs(tmp_path)
    cases = [["explain", MODEL, str(tmp_path / f"{n}.npy")] for n in names]
    cases += [["explain-dataset", MODEL, str(tmp_path / f"{n}.npy"), "--quiet"] for n in names]
    cases += [["evaluate", MODEL, str(tmp_path / "complex.npy")], ["verify", MODEL, "--input", str(tmp_path /
                                                                                                 "datetime.npy")],
              ["explain", MODEL, str(tmp_path / "bomb.png")], ["explain", MODEL, str(tmp_path / "big.png")],
              ["explain-dataset", MODEL, str(tmp_path / "dims.idx")]]
    errors = {}
    for args in cases:  # in this process (an exception escaping main fails the test), two in a fresh one
        assert main(args) == 2, args
        err = errors[args[2]] = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lrpnumpy: error: ") and len(err) < 600, err
    for args in cases[:1] + cases[-1:]:
        r = _cli(*args)
        assert r.returncode == 2 and r.stderr.startswith("lrpnumpy: error: ") and "Traceback" not in r.stderr
    for n in ("complex", "datetime", "bool", "int32"):  # refused, naming the dtype, never cast
        assert f"{n}.npy: holds " in errors[str(tmp_path / f"{n}.npy")]
    assert "refused (Image size (10000000000 pixels) exceeds" in errors[str(tmp_path / "bomb.png")]
    assert "refused (Image size (100000000 pixels) exceeds" in errors[str(tmp_path / "big.png")]


def test_the_pixel_limit_holds_without_pillows(tmp_path, monkeypatch, capsys):
    from PIL import Image
    _png(tmp_path / "big.png", 10000, 10000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's check off: lrpnumpy's own still refuses
    assert main(["explain", MODEL, str(tmp_path / "big.png")]) == 2
    assert "declares 10000 x 10000 pixels, more than lrpnumpy reads" in capsys.readouterr().err


def test_uint8_inputs_are_scaled_like_images(tmp_path, capsys):
    """Issue 27: a uint8 0-255 .npy was used unscaled (logit 1664); now it is scaled to the model's input range as
    a PNG is, so the three give the same explanation."""
    from PIL import Image
    s = datasets.sample()
    pixels = (s.images[:2, 0] * 255).round().astype(np.uint8)
    np.save(tmp_path / "u8.npy", pixels[:, None])
    Image.fromarray(pixels[0]).save(tmp_path / "a.png")
    Image.fromarray(pixels[1]).save(tmp_path / "b.png")
    assert main(["explain", MODEL, str(tmp_path / "u8.npy"), "--json", "--npy", str(tmp_path / "r8.npy")]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert main(["explain", MODEL, str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--npy",
                 str(tmp_path / "rp.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "r8.npy"), np.load(tmp_path / "rp.npy"))
    net = L.io.load(MODEL)
    assert max(r["logit"] for r in rows) < 50
    np.testing.assert_allclose([r["logit"] for r in rows], net.forward(s.images[:2].astype(net.dtype)).max(1),
                               rtol=1e-5)
    capsys.readouterr()
    assert main(["explain-dataset", MODEL, str(tmp_path / "u8.npy"), "--quiet", "--npy", str(tmp_path / "d.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), np.load(tmp_path / "rp.npy"), rtol=1e-6, atol=1e-7)
    head = bytes([0, 0, 8, 3]) + np.array(pixels.shape, ">u4").tobytes()  # the same pixels as an IDX file
    (tmp_path / "images.idx").write_bytes(head + pixels.tobytes())
    assert main(["explain-dataset", MODEL, str(tmp_path / "images.idx"), "--quiet", "--npy",
                 str(tmp_path / "i.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), np.load(tmp_path / "d.npy"))


def test_npy_into_a_folder_writes_relevance_npy(tmp_path, capsys):
    """Red team: `--npy DIR/` wrote a hidden DIR/.npy."""
    np.save(tmp_path / "x.npy", datasets.sample().images[:2])
    (tmp_path / "d").mkdir()
    for target in ("d/", "d"):
        assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--npy", str(tmp_path / target)]) == 0
        assert f"wrote {tmp_path / 'd' / 'relevance.npy'}" in capsys.readouterr().out
    assert os.listdir(tmp_path / "d") == ["relevance.npy"]
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--npy", str(tmp_path / "r")]) == 0
    assert f"wrote {tmp_path / 'r.npy'}" in capsys.readouterr().out and (tmp_path / "r.npy").exists()
    r = _cli("explain", MODEL, str(tmp_path / "x.npy"), "--npy", str(tmp_path / "nowhere") + "/")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "nowhere").exists()


def test_explain_dataset_refuses_another_run_into_its_folder(tmp_path, capsys):
    """Red team: another --batch-size into the same folder reported "explained 20 inputs" for 10; --method gradient
    into an epsilon_plus folder printed the old mean."""
    s = datasets.sample()
    np.save(tmp_path / "x.npy", s.images[:10])
    store = str(tmp_path / "store")
    base = ["explain-dataset", MODEL, str(tmp_path / "x.npy"), "--out", store, "--quiet"]
    assert main(base + ["--batch-size", "5"]) == 0
    assert "explained 10 inputs" in capsys.readouterr().out
    for extra, field in ((["--batch-size", "4"], "batch_size"), (["--method", "gradient"], "job.method"),
                         (["--target", "3"], "target")):
        r = _cli(*base, *extra)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"{field} (folder: " in r.stderr and "--overwrite" in r.stderr
    np.save(tmp_path / "chunk_stray.npy", np.zeros(3))
    assert main(base + ["--method", "gradient", "--overwrite", "--batch-size", "4", "--npy", str(tmp_path / "g")]) == 0
    assert "explained 10 inputs" in capsys.readouterr().out
    net = L.io.load(MODEL)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"),
                                  L.methods.gradient(net, s.images[:10].astype(net.dtype)).relevance)
    bad = os.path.join(store, "chunk_000000004_000000008.npy")
    a = np.load(bad)
    a[0, 0, 0, 0] = np.nan
    np.save(bad, a)
    r = _cli(*base, "--method", "gradient", "--batch-size", "4")
    assert r.returncode == 0 and "explained 10 inputs" in r.stdout
    assert r.stderr.strip().splitlines() == [f"lrpnumpy: warning: {bad}: holds NaN or infinity; computing the chunk "
                                             f"again"], r.stderr


def test_workers_without_distributed_names_the_pip_command(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "x.npy", datasets.sample().images[:4])
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    assert main(["explain-dataset", MODEL, str(tmp_path / "x.npy"), "--workers", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrpnumpy: error: --workers needs dask.distributed") and "pip install 'lrpnumpy[dask]'" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_package_is_one_line(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "x.npy", datasets.sample().images[:2])
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.colors"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--out", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrpnumpy: error: cannot import matplotlib") and len(err.strip().splitlines()) == 1


def test_a_cluster_that_cannot_start_is_one_line(tmp_path, monkeypatch, capsys):
    distributed = pytest.importorskip("distributed")
    np.save(tmp_path / "x.npy", datasets.sample().images[:4])

    def broken(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.")
    monkeypatch.setattr(distributed, "LocalCluster", broken)
    assert main(["explain-dataset", MODEL, str(tmp_path / "x.npy"), "--workers", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "lrpnumpy: error: --workers 2: a local Dask cluster cannot start (RuntimeError: Nanny " \
                          "failed to start.)"


def test_a_worker_dying_on_a_chunk_is_one_line(tmp_path):
    """--workers: a chunk that kills its worker every time is the command's one error line (distributed's own
    log lines held back), naming the chunk.  A fresh process, whose stderr is distributed's log stream too."""
    pytest.importorskip("distributed")
    np.save(tmp_path / "x.npy", datasets.sample().images[:8])
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys, dask\n"
        "from lrpnumpy import parallel as P\n"
        "from lrpnumpy.__main__ import main\n"
        "original = P.explain_dataset\n"
        "def dying(net, data, **kw):  # the lambda travels by value to the worker process, and exits it\n"
        "    kw.pop('composite', None)\n"
        "    return original(net, data, **kw, method=lambda model, v, t=None: os._exit(1))\n"
        "P.explain_dataset = dying\n"
        "if __name__ == '__main__':\n"
        "    with dask.config.set({'distributed.scheduler.allowed-failures': 0}):\n"
        f"        sys.exit(main(['explain-dataset', {MODEL!r}, {str(tmp_path / 'x.npy')!r}, '--workers', '1', "
        "'--quiet', '--batch-size', '4']))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("lrpnumpy: error: Dask failed on chunk_00000000") and "KilledWorker" in r.stderr


def test_a_bad_input_range_is_one_line(tmp_path, capsys):
    """A model whose metadata holds input_range "ab" (red team: a traceback when pixels were scaled)."""
    from PIL import Image
    import lrpnumpy.io.native as native
    net = L.io.load(MODEL)
    net.meta["input_range"] = "ab"
    with pytest.raises(L.errors.ModelFormatError, match="input_range"):  # never written by save ...
        L.io.save(net, tmp_path / "m.npz")
    check = native._check_meta
    try:  # ... so write it by hand, as another program could
        native._check_meta = lambda path, meta: None
        L.io.save(net, tmp_path / "m.npz")
    finally:
        native._check_meta = check
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "u8.npy", np.zeros((1, 1, 28, 28), np.uint8))
    for data in ("a.png", "u8.npy"):
        assert main(["explain", str(tmp_path / "m.npz"), str(tmp_path / data)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lrpnumpy: error: ") and "meta 'input_range' must be" in err and err.count("\n") == 1
    assert main(["explain", MODEL, str(tmp_path / "a.png"), "--input-range", "1", "nan"]) == 2
    assert "finite with low <= high" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["verify", "toolbox_lenet", "--input"], ["explain", "toolbox_lenet"]])
def test_wrong_input_size_names_the_models_input(command):
    """A 28 x 28 sample for the 32 x 32 LeNet: exit 2 and one line naming the expected input, not an error
    from inside a SumPool2d."""
    r = _cli(*command, os.path.join(datasets.DATA_DIR, "sample_input.npy"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "expects 1 x 32 x 32 inputs" in r.stderr and "SumPool2d" not in r.stderr


def _x(tmp_path, n=2):
    np.save(tmp_path / "x.npy", datasets.sample().images[:n])
    return str(tmp_path / "x.npy")


@pytest.mark.parametrize("command", ["explain", "evaluate", "verify", "explain-dataset", "spray"])
def test_every_subcommand_lists_the_built_in_models(command):
    from lrpnumpy.zoo import MODELS, TRAINED
    r = _cli(command, "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and all(name in text for name in TRAINED + tuple(MODELS)), text
    assert "RANDOM WEIGHTS" in text


def test_built_in_names_are_accepted_and_random_weights_flagged(tmp_path, capsys):
    x = _x(tmp_path)
    assert main(["explain", "fashion_cnn_maxpool", x, "--json"]) == 0
    out, err = capsys.readouterr()
    net = L.zoo.trained("fashion_cnn_maxpool")
    e = L.explain(net, datasets.sample().images[:2].astype(net.dtype), composite=L.EpsilonPlus())
    assert [r["predicted"] for r in json.loads(out)["rows"]] == e.output.argmax(1).tolist() and err == ""
    assert main(["evaluate", "fashion_mlp", x, "--methods", "gradient", "--features-per-step", "392"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["explain", "lenet5", x]) == 0  # a random-weight model: runs, and one line says so
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrpnumpy: warning: lenet5 has random weights")
    assert main(["demo", "--model", "lenet5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "random weights" in err and "fashion_cnn_maxpool" in err


def test_method_options_use_the_rule_syntax(tmp_path, capsys):
    x = _x(tmp_path)
    net = L.io.load(MODEL)
    xs = datasets.sample().images[:2].astype(net.dtype)
    for spec, expected in (("integrated_gradients:n=5", L.methods.integrated_gradients(net, xs, n=5)),
                           ("interior_gradients:alpha=0.5", L.methods.interior_gradients(net, xs, alpha=0.5)),
                           ("smoothgrad:n=3,noise_level=0.2,rng=1",
                            L.methods.smoothgrad(net, xs, n=3, noise_level=0.2, rng=1))):
        assert main(["explain", MODEL, x, "--method", spec, "--npy", str(tmp_path / "r.npy")]) == 0, spec
        np.testing.assert_allclose(np.load(tmp_path / "r.npy"), expected.relevance, rtol=1e-6, atol=1e-7)
    gradient = L.methods.gradient(net, xs).relevance
    assert not np.allclose(L.methods.interior_gradients(net, xs, alpha=0.5).relevance, gradient)
    assert main(["explain", MODEL, x, "--composite", "epsilon_plus:epsilon=0.5", "--npy", str(tmp_path / "c.npy")]) \
        == 0
    np.testing.assert_allclose(np.load(tmp_path / "c.npy"), L.explain(net, xs, composite=L.EpsilonPlus(0.5)).relevance,
                               rtol=1e-6, atol=1e-7)
    capsys.readouterr()
    for option, spec, accepted in (("--method", "integrated_gradients:steps=64", "accepted: n\n"),
                                   ("--rule", "epsilon:eps=0.1", "accepted: epsilon"),
                                   ("--composite", "epsilon_plus:eps=0.1", "accepted: epsilon"),
                                   ("--method", "gradient:n=3", "accepted: none"),
                                   ("--rule", "zbox:low=0", "accepted options: low, high, epsilon"),
                                   ("--method", "integrated_gradients:n", "options are key=value")):
        assert main(["explain", MODEL, x, option, spec]) == 2, spec
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and accepted in err and "unexpected keyword" not in err, err


def _numbers(text):
    import re
    return [float(v) for v in re.findall(r"-?\d+\.\d+", text)]


@pytest.mark.parametrize("how", [["--rule", "epsilon:epsilon=0.25"], ["--composite", "epsilon_gamma_box"],
                                 ["--rule", "zplus"]])
def test_the_per_image_line_adds_up(tmp_path, capsys, how):
    """The logit = relevance at the input + biases + stabilizer + dropped, in the line (to its printed
    precision) and in --json; with epsilon 0.25 the stabilizer takes a large part."""
    x = _x(tmp_path)
    assert main(["explain", "fashion_cnn_maxpool", x, *how]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    for line in lines:
        logit, *parts = _numbers(line.split("logit", 1)[1])
        signs = [1.0] + [-1.0 if f" - {name}" in line else 1.0 for name in ("biases", "stabilizer", "dropped")]
        assert len(parts) == 4 and "relevance at the input" in line, line
        assert abs(logit - sum(s * p for s, p in zip(signs, parts))) <= 3e-4, line
    assert main(["explain", "fashion_cnn_maxpool", x, *how, "--json"]) == 0
    for row in json.loads(capsys.readouterr().out)["rows"]:
        total = row["relevance_sum"] + row["absorbed_by_biases"] + row["absorbed_by_stabilizer"] + row["dropped"]
        assert abs(total - row["logit"]) <= 1e-5 * abs(row["logit"]), row
        if how[1] == "epsilon:epsilon=0.25":
            assert row["absorbed_by_stabilizer"] > 0.1 * row["logit"]


def test_conservation_tables_say_what_they_sum_and_keep_rule_names():
    net = L.zoo.trained("fashion_cnn_maxpool", dtype=np.float64)
    x = datasets.sample().images[:3]
    report = L.explain(net, x, composite=L.EpsilonGammaBox(0.0, 1.0)).conservation()
    text, one = str(report), report.to_text(sample=1)
    assert "ZBox(low=0.0, high=1.0, epsilon=1e-06)" in text and "..." not in text.split("\n")[3].split("  ZBox")[1]
    assert text.splitlines()[0].startswith("relevance per layer, summed over the batch of 3 samples")
    assert one.splitlines()[0].startswith("relevance per layer, sample 1:")
    head = text.splitlines()[1]
    assert head.index("R at output") < head.index("R at input") and "sum R in" not in text
    row = text.splitlines()[3].split()  # the first layer: R at output = R at input + bias + stabilizer + dropped
    first = report.to_dict()[0]
    assert float(row[-5]) == pytest.approx(first["relevance_out"], rel=1e-4)
    assert float(row[-4]) == pytest.approx(first["relevance_in"], rel=1e-4)
    assert "sums every column over the batch" in " ".join(L.Explanation.conservation.__doc__.split())


def test_evaluate_says_which_way_is_better_plots_every_metric_and_shows_progress(tmp_path, capsys, monkeypatch):
    import lrpnumpy.progress
    import lrpnumpy.viz
    bars, figures = [], []

    class Bar:
        def __init__(self, total, progress=None, unit="batch"):
            self.total, self.done, self.names = total, 0, []
            bars.append(self)

        def set_description(self, name):
            self.names.append(name)

        def update(self, n):
            self.done += n

        def close(self):
            pass
    monkeypatch.setattr(lrpnumpy.progress, "bar", lambda total, progress=None, unit="batch":
                        Bar(total) if unit == "method" else None)
    monkeypatch.setattr(lrpnumpy.viz, "save", lambda fig, path, dpi=120: figures.append(fig))
    x = _x(tmp_path, 2)
    methods = ["epsilon_plus", "grad_cam", "epsilon:epsilon=0.25", "integrated_gradients:n=4", "random"]
    metrics = ["pixel_flipping", "continuity", "randomization"]
    assert main(["evaluate", "fashion_cnn_maxpool", x, "--methods", *methods, "--metrics", *metrics,
                 "--features-per-step", "196", "--plot", str(tmp_path / "p.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    head, better = lines[0].split(), lines[1].split()
    assert head == ["method", "pixel_flipping_aopc", "pixel_flipping_auc", "continuity", "randomization"]
    assert " ".join(better) == "(better) higher lower lower nearer 0"
    assert [line.split()[0] for line in lines[3:8]] == methods
    assert any(line.startswith("note: random's continuity is 0") for line in lines)
    assert [b.total for b in bars] == [5] and bars[0].done == 5 and bars[0].names == methods
    titles = [ax.get_title() for ax in figures[0].axes]
    assert len(titles) == 3 and titles[0].startswith("pixel flipping") and "lower is better" in titles[1]
    assert main(["evaluate", "fashion_cnn_maxpool", x, "--methods", "gradient", "random", "--metrics", "continuity",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["better"] == {"continuity": "lower"} and "random's continuity" in out["notes"][0]
    net = L.zoo.trained("fashion_cnn_maxpool")
    xs = datasets.sample().images[:2].astype(net.dtype)
    expected = L.evaluate.continuity(net, L.methods.gradient, xs, [(0, 1), (1, 1), (1, 0)])["continuity"].mean()
    assert out["rows"][0]["continuity"] == pytest.approx(expected, rel=1e-9)
    assert main(["evaluate", "fashion_cnn_maxpool", x, "--methods", "pattern_net"]) == 2
    assert "fit_patterns" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain-dataset", "spray"])
def test_method_composite_and_rule_options_on_the_dataset_commands(command, tmp_path, capsys):
    """explain-dataset and spray take NAME[:key=value,...] as explain does (issue 27): the options reach the
    method, composite or rule, and a wrong option is refused with the accepted ones, exit 2 and one line."""
    pytest.importorskip("dask")
    s = datasets.sample()
    net = L.io.load(MODEL)
    chosen = np.flatnonzero(s.labels == 1)[:12]       # spray with --labels explains exactly these, for class 1
    xs = s.images[chosen].astype(net.dtype)
    np.save(tmp_path / "x.npy", s.images[chosen])
    np.save(tmp_path / "y.npy", s.labels[chosen])
    target = np.ones(len(xs), int)

    def relevance(how):
        if command == "explain-dataset":
            assert main(["explain-dataset", MODEL, str(tmp_path / "x.npy"), "--quiet", "--target", "1", *how,
                         "--npy", str(tmp_path / "r.npy")]) == 0
            return np.load(tmp_path / "r.npy")
        from lrpnumpy import spray
        calls = []
        original = spray.explain_class
        spray.explain_class = lambda *a, **k: calls.append(original(*a, **k)) or calls[-1]
        try:
            assert main(["spray", MODEL, str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--class", "1",
                         "--embedding", "none", "--clusters", "2", "--neighbors", "3", "--json", *how]) == 0
        finally:
            spray.explain_class = original
        return calls[0]

    cases = [(["--method", "integrated_gradients:n=5"], L.methods.integrated_gradients(net, xs, target, n=5).relevance),
             (["--method", "interior_gradients:alpha=0.5"],
              L.methods.interior_gradients(net, xs, target, alpha=0.5).relevance),
             (["--composite", "epsilon_plus:epsilon=0.5"], L.explain(net, xs, target, composite=L.EpsilonPlus(0.5)).relevance),
             (["--rule", "epsilon:epsilon=0.25"], L.explain(net, xs, target, rule=L.Epsilon(0.25)).relevance)]
    for how, expected in cases:
        np.testing.assert_allclose(relevance(how), expected, rtol=1e-5, atol=1e-6, err_msg=str(how))
    assert not np.allclose(cases[1][1], L.methods.gradient(net, xs, target).relevance)   # the option mattered
    capsys.readouterr()
    base = ["explain-dataset", MODEL, str(tmp_path / "x.npy"), "--quiet"] if command == "explain-dataset" else \
        ["spray", MODEL, str(tmp_path / "x.npy"), "--class", "1", "--embedding", "none"]
    for option, spec, accepted in (("--method", "integrated_gradients:steps=64", "accepted: n\n"),
                                   ("--rule", "epsilon:eps=0.1", "accepted: epsilon"),
                                   ("--composite", "epsilon_plus:eps=0.1", "accepted: epsilon")):
        assert main([*base, option, spec]) == 2, spec
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and accepted in err and "unexpected keyword" not in err, err


def test_explain_dataset_records_method_options_in_its_manifest(tmp_path):
    """A resumed run with other method options is refused, naming the field (the options are part of the run)."""
    pytest.importorskip("dask")
    np.save(tmp_path / "x.npy", datasets.sample().images[:8])
    base = ["explain-dataset", MODEL, str(tmp_path / "x.npy"), "--quiet", "--out", str(tmp_path / "store")]
    assert main([*base, "--method", "integrated_gradients:n=4"]) == 0
    assert main([*base, "--method", "integrated_gradients:n=4"]) == 0          # resumed: the same run
    r = _cli(*base, "--method", "integrated_gradients:n=8")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "method" in r.stderr, r.stderr
