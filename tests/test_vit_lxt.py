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


@pytest.fixture
def vit_speed(monkeypatch):
    """benchmarks/vit_speed.py, with lxt.efficient's rules importable (torch and lxt required)."""
    pytest.importorskip("torch")
    lxt = pytest.importorskip("lxt")
    stub = types.ModuleType("lxt.efficient")  # lxt.efficient's __init__ imports Hugging Face transformers
    stub.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
    monkeypatch.setitem(sys.modules, "lxt.efficient", stub)
    monkeypatch.setitem(sys.modules, "lxt.efficient.rules", None)  # restored (removed) after the test
    del sys.modules["lxt.efficient.rules"]
    monkeypatch.syspath_prepend(BENCH)
    monkeypatch.delitem(sys.modules, "vit_speed", raising=False)
    return importlib.import_module("vit_speed")


@pytest.mark.reference
def test_shipped_vit_matches_lxt_efficient(vit_speed):
    import torch
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


@pytest.mark.reference
def test_vit_of_37_tokens_matches_lxt_efficient(vit_speed, monkeypatch):
    """37 tokens: the Linear layers' one product per sample and the attention's per-head products on the
    kernels' threads (forced here for these small heads) give lxt's relevance too."""
    import torch
    from lrpnumpy.layers import attention
    from lrpnumpy.kernels import convolution
    monkeypatch.setattr(attention, "_STACK_GEMM", 0)
    monkeypatch.setattr(convolution, "SMALL_GEMM", 2000)  # products of 16,428 multiply-adds in blocks
    calls = []
    monkeypatch.setattr(attention, "_matmul_small", lambda a, b, out: calls.append(1) or np.matmul(a, b, out=out))
    net = vit_speed.lrpnumpy_vit(image=24, channels=3, patch=4, width=48, heads=4, depth=2, mlp=96, classes=10,
                                 dtype=np.float64)
    x = np.random.default_rng(5).random((3, 3, 24, 24))
    theirs, y = vit_speed.lxt_relevance(vit_speed.torch_vit(net, torch.float64), x, torch)
    np.testing.assert_allclose(y, net.forward(x), rtol=1e-10, atol=1e-10)
    ours = L.explain(net, x, composite=composites.get("attnlrp", epsilon=1e-12)).relevance
    assert calls and np.abs(theirs).max() > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8 * np.abs(theirs).max())
