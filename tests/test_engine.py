"""The engine's promises: stateless layers, thread safety, one driver, imports that just work."""

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites, kernels, methods as M, zoo

COMPOSITES = ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus_flat",
              "epsilon_alpha2_beta1_flat", "deep_taylor"]
GRADIENT_METHODS = {
    "gradient": lambda net, x: M.gradient(net, x),
    "gradient_x_input": lambda net, x: M.gradient_x_input(net, x),
    "integrated_gradients": lambda net, x: M.integrated_gradients(net, x, n=3),
    "smoothgrad": lambda net, x: M.smoothgrad(net, x, n=3, rng=0),
}


def jobs(net, inputs):
    """(name, callable) for every composite and gradient method on each input batch."""
    out = []
    for k, x in enumerate(inputs):
        for name in COMPOSITES:
            comp = composites.get(name, bounds=(0.0, 1.0))
            out.append((f"{k}/{name}", lambda x=x, comp=comp: L.explain(net, x, composite=comp).relevance))
        for name, run in GRADIENT_METHODS.items():
            out.append((f"{k}/{name}", lambda x=x, run=run: run(net, x).relevance))
    return out


def run_threaded(work, threads=8):
    barrier = threading.Barrier(threads)

    def worker(part):
        barrier.wait()  # start together, so the calls overlap
        return [(name, fn()) for name, fn in part]
    parts = [work[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return dict(pair for result in pool.map(worker, parts) for pair in result)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("frozen", [False, True], ids=["unfrozen", "frozen"])
def test_one_network_shared_by_eight_threads_gives_the_serial_results(backend, frozen):
    if backend == "numba":
        pytest.importorskip("numba", reason="numba is not installed")
    net = zoo.lenet5()
    if frozen:
        net.freeze()  # rules then cache derived weights on the layers, from several threads at once
    rng = np.random.default_rng(0)
    inputs = [rng.random((2, 1, 28, 28)) for _ in range(8)]
    previous = kernels.set_backend(backend)
    try:
        work = jobs(net, inputs)
        serial = {name: fn() for name, fn in work}
        for _ in range(2):
            threaded = run_threaded(work)
            assert sorted(threaded) == sorted(serial)
            for name, want in serial.items():
                np.testing.assert_array_equal(threaded[name], want, err_msg=name)
    finally:
        kernels.set_backend(previous)


def _snapshot(obj):
    return {k: v for k, v in vars(obj).items()}


def test_explaining_writes_nothing_to_layers_rules_composites_or_modules(rng):
    """vars() of every layer, rule, composite and kernel module is the same before and after (same objects)."""
    import lrpnumpy.kernels.reference as ref
    net = L.Sequential(L.Conv2d(1, 4, 3, padding=1, rng=0), L.ReLU(), L.MaxPool2d(2), L.Conv2d(4, 4, 3, rng=1),
                       L.ReLU(), L.AvgPool2d(2, ceil_mode=True), L.Conv2d(4, 6, 1, rng=2), L.BatchNorm2d(6),
                       L.Tanh(), L.GlobalAvgPool2d(), L.Flatten(), L.Dropout(), L.Linear(6, 5, rng=3),
                       L.ReLU(), L.Linear(5, 3, rng=4), L.Softmax())
    x = rng.random((2, 1, 10, 10))
    comps = [composites.get(name, data=x) for name in COMPOSITES]
    rules = [L.Epsilon(), L.ZPlus(), L.AlphaBeta(), L.Gamma(), L.ZBox(0, 1), L.Flat(), L.WSquare(),
             L.Rho("gamma", bias="raw")]
    modules = [kernels, ref, L.rules, L.composites, sys.modules["lrpnumpy.explain"]]
    if kernels.BACKEND == "numba":
        modules += [sys.modules[f"lrpnumpy.kernels.{name}"] for name in ("numba_kernels", "_common", "convolution",
                                                                          "pooling", "step2")]
    watched = list(net) + comps + rules + [r for c in comps for _, r in c.layer_map + c.first_map] + modules
    before = [_snapshot(o) for o in watched]
    arrays = {(i, p): getattr(layer, p).copy() for i, layer in enumerate(net) for p in layer.params}
    x_before = x.copy()
    for comp in comps:
        L.explain(net, x, composite=comp)
    for rule in rules:
        L.explain(net, x, rule=rule, target=1)
    for run in GRADIENT_METHODS.values():
        run(net, x)
    for obj, snap in zip(watched, before):
        after = _snapshot(obj)
        assert after.keys() == snap.keys(), f"{obj!r}: {set(after) ^ set(snap)}"
        changed = [k for k in snap if after[k] is not snap[k]]
        assert not changed, f"{obj!r}: {changed} replaced"
    for (i, p), value in arrays.items():
        np.testing.assert_array_equal(getattr(net[i], p), value)
    np.testing.assert_array_equal(x, x_before)


def test_a_layer_used_twice_is_explained_per_use(rng):
    """Each use of a shared layer has its own step: relevance equals that of two separate copies."""
    lin = L.Linear(4, 4, rng=0)
    lin.bias = rng.normal(size=4)
    shared = L.Sequential(lin, L.ReLU(), lin)
    separate = L.Sequential(lin, L.ReLU(), lin.copy())
    x = rng.normal(size=(3, 4))
    for rule in (L.Epsilon(0.1), L.ZPlus(), L.Gamma()):
        a = L.explain(shared, x, target=0, rule=rule)
        b = L.explain(separate, x, target=0, rule=rule)
        np.testing.assert_array_equal(a.relevance, b.relevance)
    copied = shared.copy()
    assert copied[0] is copied[2] and copied[0] is not lin


def test_trace_records_every_step(rng):
    net = zoo.lenet5()
    x = rng.random((2, 1, 28, 28))
    y, trace = net.forward_trace(x)
    np.testing.assert_array_equal(y, net.forward(x))
    assert len(trace) == len(net) and trace.input is x and trace.output is y
    for i, step in enumerate(trace):
        assert step.layer is net[i] and step.index == i and step.parents == (i - 1,)
        assert step.input is (x if i == 0 else trace[i - 1].output)
    assert trace[2].state is not None  # the max pool's winners
    assert "Trace(12 steps" in repr(trace)
    with pytest.raises(L.errors.ShapeError, match="trace that this network"):
        net.backward(np.ones_like(y), zoo.lenet5().forward_trace(x)[1])


def test_default_rules_live_in_one_map():
    assert isinstance(composites.default_rule(L.Linear(2, 2)), L.LRP0)
    assert isinstance(composites.default_rule(L.AvgPool2d(2)), L.Norm)
    assert isinstance(composites.default_rule(L.MaxPool2d(2)), L.WinnerTakesAll)
    assert isinstance(composites.default_rule(L.BatchNorm2d(2)), L.Pass)
    assert not hasattr(L.Linear, "default_rule") and not hasattr(L.Sequential, "lrp")
    assert not hasattr(L.Linear, "lrp")


def test_composites_say_what_they_need(rng):
    x = rng.random((2, 3)) * 4 - 1
    egb = composites.get("epsilon_gamma_box", data=x)
    zbox = egb.first_map[0][1]
    assert float(zbox.low) == x.min() and float(zbox.high) == x.max()
    assert composites.REGISTRY["deep_taylor"].needs == ("low", "high")
    assert composites.REGISTRY["epsilon_plus"].needs == ()
    assert isinstance(composites.get("epsilon_plus", data=x), L.EpsilonPlus)  # data ignored where not needed
    assert float(composites.get("deep_taylor", bounds=(-2, 3)).first_map[0][1].high) == 3.0
    with pytest.raises(L.errors.RuleParameterError, match="needs low, high"):
        composites.get("deep_taylor")


def test_verify_is_reachable_without_importing_torch():
    code = ("import sys, lrpnumpy\n"
            "assert callable(lrpnumpy.verify.compare) and callable(lrpnumpy.methods.smoothgrad)\n"
            "print(sorted(m for m in ('torch', 'zennit', 'captum', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_error_kinds():
    with pytest.raises(L.errors.LayerParameterError):
        L.Conv2d(1, 1, 0)
    assert not issubclass(L.errors.LayerParameterError, L.errors.RuleParameterError)
    assert issubclass(L.errors.MissingDependencyError, ImportError)
    assert not issubclass(L.errors.MissingDependencyError, L.errors.UnsupportedLayerError)


_CACHE_CHILD = """
import numpy as np, lrpnumpy as L
from lrpnumpy import kernels, zoo
net, x = zoo.lenet5(), np.random.default_rng(0).random((8, 1, 28, 28))  # pools above SMALL_POOL: jitted
comp = L.EpsilonGammaBox(0.0, 1.0)
fast, backend = L.explain(net, x, composite=comp).relevance, kernels.BACKEND
kernels.set_backend("numpy")
ref = L.explain(net, x, composite=comp).relevance
print(backend, float(np.abs(fast - ref).max() / np.abs(ref).max()))
"""


def test_two_processes_compiling_into_one_empty_numba_cache(tmp_path):
    pytest.importorskip("numba", reason="numba is not installed")
    if os.environ.get("LRPNUMPY_KERNELS", "").lower() == "numpy":
        pytest.skip("the suite runs on the NumPy kernels")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", _CACHE_CHILD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        backend, rel = out.split()
        assert backend == "numba" and float(rel) <= 1e-12
    assert any((tmp_path / "cache").rglob("*.nbi"))  # they did compile into the shared cache
    again = subprocess.run([sys.executable, "-c", _CACHE_CHILD], env=env, capture_output=True, text=True, check=True)
    assert float(again.stdout.split()[1]) <= 1e-12  # and a third process reads it back correctly
