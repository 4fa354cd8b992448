"""Every number stays: golden float64 relevances written before the engine rewrite, to 1e-12."""

import numpy as np
import pytest

import golden


@pytest.fixture(scope="module")
def computed():
    return golden.compute()


def test_golden_relevances_unchanged(computed):
    with np.load(golden.PATH) as data:
        stored = {k: data[k] for k in data.files}
    assert sorted(computed) == sorted(stored)
    worst = {}
    for key, want in stored.items():
        got = computed[key]
        assert got.shape == want.shape and got.dtype == np.float64, key
        scale = np.abs(want).max()
        rel = float(np.abs(got - want).max() / scale) if scale > 0 else float(np.abs(got).max())
        worst[key] = rel
    bad = {k: v for k, v in worst.items() if v > 1e-12}
    assert not bad, bad
