"""Packaging: the runtime data (trained models, the Fashion-MNIST sample, the example input) is package
data, found with importlib.resources, declared in setup.cfg, and inside a wheel built from the checkout."""

import configparser
import fnmatch
import importlib.resources
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np

import lrpnumpy as L
from lrpnumpy import datasets, zoo
from lrpnumpy.demo import sample_input

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
#: Every data file the package reads at run time (lrpnumpy/data/).
RUNTIME = [f"{name}.npz" for name in zoo.TRAINED] + ["fashion_mnist_sample.npz", "sample_input.npy"]


def _package_data_globs():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return [g.strip() for g in cfg["options.package_data"]["lrpnumpy"].replace("\n", ",").split(",") if g.strip()]


def test_every_runtime_file_resolves_through_importlib_resources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing depends on the working directory
    for name in RUNTIME:
        resource = importlib.resources.files("lrpnumpy").joinpath("data").joinpath(name)
        assert resource.is_file(), f"lrpnumpy/data/{name} is missing"
        assert datasets.shipped_file(name).read_bytes() == resource.read_bytes()
        assert os.path.samefile(os.path.join(datasets.DATA_DIR, name), str(resource))
    for name in zoo.TRAINED:
        net = zoo.trained(name)
        assert net.meta["dataset"].startswith("Fashion-MNIST") and net.meta["test_accuracy"] > 0.88
    s = datasets.sample()
    assert s.images.shape == (1000, 1, 28, 28) and np.bincount(s.labels).tolist() == [100] * 10
    with importlib.resources.as_file(datasets.shipped_file("sample_input.npy")) as path:
        np.testing.assert_array_equal(np.load(path), sample_input())


def test_an_unknown_trained_model_is_named_with_the_shipped_ones():
    try:
        zoo.trained("lenet5")
    except L.errors.ParameterError as exc:
        assert "fashion_cnn_maxpool" in str(exc) and "lenet5" in str(exc)
    else:
        raise AssertionError("zoo.trained('lenet5') did not raise")


def test_setup_cfg_declares_every_file_in_the_package_data_folder():
    globs = _package_data_globs()
    files = sorted(f for f in os.listdir(datasets.DATA_DIR) if not f.startswith(("__", ".")))
    assert sorted(RUNTIME) == [f for f in files if f in RUNTIME]
    for name in files:
        assert any(fnmatch.fnmatch(f"data/{name}", g) for g in globs), \
            f"lrpnumpy/data/{name} is not matched by setup.cfg's package_data {globs}: a wheel would leave it out"


def test_no_runtime_file_is_left_in_the_repositorys_data_folder():
    """The top-level data/ holds the training script, its README and pictures; it is not installed."""
    stray = sorted(f for f in os.listdir(os.path.join(ROOT, "data")) if f.endswith((".npz", ".npy")))
    assert not stray, f"move {stray} from data/ to lrpnumpy/data/ (package data) and read them with " \
                      f"lrpnumpy.datasets.shipped_file"


def test_a_wheel_built_from_the_checkout_carries_the_data_and_runs_without_the_checkout(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "lrpnumpy"), src / "lrpnumpy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    for name in ("setup.cfg", "pyproject.toml", "README.rst"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    [wheel] = os.listdir(tmp_path / "dist")
    with zipfile.ZipFile(tmp_path / "dist" / wheel) as z:
        names = set(z.namelist())
        assert {f"lrpnumpy/data/{name}" for name in RUNTIME} <= names
        assert not [n for n in names if n.startswith("data/")]  # nothing outside the package
        z.extractall(tmp_path / "site")
    code = ("import lrpnumpy as L, numpy as np\n"
            "assert L.__file__.startswith(%r), L.__file__\n"
            "nets = [L.zoo.trained(n) for n in L.zoo.TRAINED]\n"
            "print(len(nets), L.datasets.sample().images.shape)\n" % str(tmp_path / "site"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{len(zoo.TRAINED)} (1000, 1, 28, 28)"
