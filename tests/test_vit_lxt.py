"""(``reference``) The shipped ViT explained with AttnLRP equals lxt 2.1's efficient mode on the same
weights (the torch replica of ``benchmarks/vit_speed.py``, which times the two): float64, epsilon 1e-12."""

import importlib
import os
import sys
import types

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.reference
def test_shipped_vit_matches_lxt_efficient(monkeypatch):
    torch = pytest.importorskip("torch")
    lxt = pytest.importorskip("lxt")
    stub = types.ModuleType("lxt.efficient")  # lxt.efficient's __init__ imports Hugging Face transformers
    stub.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
    monkeypatch.setitem(sys.modules, "lxt.efficient", stub)
    monkeypatch.setitem(sys.modules, "lxt.efficient.rules", None)  # restored (removed) after the test
    del sys.modules["lxt.efficient.rules"]
    monkeypatch.syspath_prepend(BENCH)
    monkeypatch.delitem(sys.modules, "vit_speed", raising=False)
    vit_speed = importlib.import_module("vit_speed")
    net = L.zoo.trained("fashion_vit", dtype=np.float64)
    x = L.datasets.sample(np.float64).images[:3]
    theirs, y = vit_speed.lxt_relevance(vit_speed.torch_vit(net, torch.float64), x, torch)
    np.testing.assert_allclose(y, net.forward(x), rtol=1e-10, atol=1e-10)
    ours = L.explain(net, x, composite=composites.get("attnlrp", epsilon=1e-12)).relevance
    assert np.abs(theirs).max() > 0.1
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8)
    # a different rule (CP-LRP) would not pass: the comparison can fail
    cp = L.explain(net, x, composite=composites.get("cp_lrp", epsilon=1e-12)).relevance
    assert np.abs(cp - theirs).max() > 1e-3
