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


def test_train_regenerates_a_model(tmp_path, monkeypatch):
    """`lrpnumpy train` runs data/make_models.py's recipe (here on a tiny fake data set)."""
    import gzip
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, a in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            head = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes()
            (tmp_path / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(head + a.tobytes()))
    out = tmp_path / "models"
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
    assert sorted(os.listdir(tmp_path / "store"))[-1] == "chunk_000000064_000000070.npy"
    r = _cli("explain-dataset", MODEL, str(tmp_path / "x.npy"), "--method", "lime")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["verify", "toolbox_lenet", "--input"], ["explain", "toolbox_lenet"]])
def test_wrong_input_size_names_the_models_input(command):
    """A 28 x 28 sample for the 32 x 32 LeNet: exit 2 and one line naming the expected input, not an error
    from inside a SumPool2d."""
    r = _cli(*command, os.path.join(datasets.DATA_DIR, "sample_input.npy"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "expects 1 x 32 x 32 inputs" in r.stderr and "SumPool2d" not in r.stderr
