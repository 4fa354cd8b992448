"""The single stabilizer: ``z + epsilon * sign(z)`` with sign(0) = +1, bit for bit as NumPy's copysign gives it."""

import sys

import numpy as np
import pytest

from lrpnumpy.stabilize import stabilize

module = sys.modules["lrpnumpy.stabilize"]  # (the package exports the function under the module's name)


def _copysign_form(z, epsilon):
    """The stabilizer written with NumPy's copysign (its form before the sign was set through the bits)."""
    eps = z.dtype.type(epsilon)
    out = z + np.copysign(eps, z + z.dtype.type(0))
    if eps == 0:
        out[out == 0] = np.inf
    return out


@pytest.mark.parametrize("through_bits", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("epsilon", [0.0, 1e-12, 0.25, 1e30, -0.25])
def test_stabilize_is_the_copysign_form_bit_for_bit(through_bits, dtype, epsilon, rng, monkeypatch):
    """Both ways to give epsilon z's sign (large arrays through the bits, small ones by copysign)."""
    monkeypatch.setattr(module, "BITS_FROM", 0 if through_bits else 10 ** 9)
    info = np.finfo(dtype)
    special = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, info.tiny, -info.tiny, info.tiny / 4,
                        -info.tiny / 4, info.max, -info.max, 1.0, -1.0], dtype)
    z = np.concatenate([special, rng.normal(size=50).astype(dtype)]).reshape(2, 4, 8)
    out = stabilize(z, epsilon)
    assert out.dtype == z.dtype and out.shape == z.shape
    assert out.tobytes() == _copysign_form(z, epsilon).tobytes()
    assert out[0, 0, 0] == out[0, 0, 1] == (np.inf if epsilon == 0 else dtype(abs(epsilon)))  # sign(+-0) = +1
    assert z[0, 0, 1] == 0 and np.signbit(z[0, 0, 1])  # the input is not written
    view = z[:, ::2, 1::3]  # not contiguous
    assert stabilize(view, epsilon).tobytes() == _copysign_form(view, epsilon).tobytes()


def test_stabilize_of_a_0d_array(monkeypatch):
    monkeypatch.setattr(module, "BITS_FROM", -1)
    assert stabilize(np.array(-0.0), 0.5) == 0.5 and stabilize(np.float32(-2.0), 0.5) == np.float32(-2.5)
