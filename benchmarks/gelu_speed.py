"""float32 GELU: the jitted kernel (kernels.elementwise.gelu_float32) against the one-value loop it was
first written as, and against SciPy's erf.

    python benchmarks/gelu_speed.py                 # ns per value, one thread, in turns (min, median)
    python benchmarks/gelu_speed.py --exhaustive    # the kernel's bits against the loop's on all 2^32 inputs
    python benchmarks/gelu_speed.py --near-boundary # the inputs whose result moves first (the test's list)

The kernel evaluates four streams of values side by side with each value's operations those of the
one-value loop, in the same order: ``--exhaustive`` checks that no float32 input (NaN payloads,
infinities, subnormals included) gets other bits (about a minute, one thread).
"""

import argparse
import math
import statistics
import time

import numba
import numpy as np
from scipy.special import erf
from threadpoolctl import threadpool_limits

from lrpnumpy.kernels import elementwise

_COEF = np.array(elementwise.ERF_CHEB)
_CLAMP = elementwise.ERF_CLAMP
_SQRT2 = math.sqrt(2.0)


def scipy_gelu(x, out):
    """The NumPy reference's operations (kernels off, or samples below GELU_KERNEL_SIZE)."""
    e = x / np.float32(_SQRT2)
    np.multiply(x, np.float32(0.5), out=out)
    erf(e, out=e)
    e += 1
    out *= e
    return out


def speed(rounds=9):
    rng = np.random.default_rng(0)
    runs = {"kernel": elementwise.gelu_float32, "one-value loop": elementwise.gelu_float32_serial, "scipy": scipy_gelu}
    for n in (1 << 20, 2176):
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        out = np.empty_like(x)
        for fn in runs.values():
            fn(x, out)
        times = {name: [] for name in runs}
        reps = max(1, (1 << 22) // n)
        for _ in range(rounds):
            for name, fn in runs.items():
                t = time.perf_counter()
                for _ in range(reps):
                    fn(x, out)
                times[name].append((time.perf_counter() - t) / reps / n * 1e9)
        print(f"{n} values: " + "; ".join(f"{name} {min(ts):.2f} (median {statistics.median(ts):.2f}) ns"
                                           for name, ts in times.items()))


def exhaustive(chunk=1 << 24):
    bits = np.empty(chunk, np.uint32)
    ours, loop = np.empty(chunk, np.float32), np.empty(chunk, np.float32)
    differ, start = 0, time.time()
    for c in range((1 << 32) // chunk):
        bits[:] = np.arange(c * chunk, (c + 1) * chunk, dtype=np.uint64)
        x = bits.view(np.float32)
        elementwise.gelu_float32(x, ours)
        elementwise.gelu_float32_serial(x, loop)
        differ += int((ours.view(np.uint32) != loop.view(np.uint32)).sum())
    print(f"all 2^32 float32 inputs: {differ} differ ({time.time() - start:.0f} s)")


@numba.njit(error_model="numpy")
def _boundary_distance(x, dist):
    """For each float32 ``x`` with ``|x / sqrt 2| <`` the clamp: how many float64 ulps the loop's ``erf`` is
    from the float32 rounding boundary nearest it, when crossing that boundary changes the result (else inf)."""
    half, root2, one = np.float32(0.5), np.float32(_SQRT2), np.float32(1.0)
    scale = 2.0 / (_CLAMP * _CLAMP)
    for i in range(x.size):
        dist[i] = np.inf
        v = x[i]
        d = np.float64(v / root2)
        if not abs(d) < _CLAMP:
            continue
        t = d * d * scale - 1.0
        t2 = 2.0 * t
        b1 = 0.0
        b2 = 0.0
        for k in range(len(_COEF) - 1, 0, -1):
            b1, b2 = _COEF[k] + t2 * b1 - b2, b1
        e = d * (_COEF[0] + t * b1 - b2)
        r = np.float32(e)
        if e == np.float64(r):
            continue
        up = e > np.float64(r)
        m = (np.float64(r) + np.float64(np.nextafter(r, np.float32(np.inf if up else -np.inf)))) / 2
        crossed = np.nextafter(m, np.inf if up else -np.inf)
        if (v * half) * (np.float32(crossed) + one) != (v * half) * (r + one):
            dist[i] = abs(e - m) / np.spacing(abs(e))


def near_boundary(count=40):
    lo, hi = np.float32(0.125).view(np.uint32), np.float32(5.6).view(np.uint32)
    found = []
    for sign in (0, 0x80000000):
        bits = np.arange(lo, hi, dtype=np.uint32) | np.uint32(sign)
        dist = np.empty(bits.size)
        _boundary_distance(bits.view(np.float32), dist)
        near = np.flatnonzero(dist < 4096)
        found += zip(dist[near].tolist(), bits[near].tolist())
    found.sort()
    print(f"{len(found)} inputs of +-[0.125, 5.6] within 4096 float64 ulps; the nearest {count} "
          f"({found[0][0]:.0f} to {found[count - 1][0]:.0f} ulps):")
    print(", ".join(f"0x{b:08x}" for _, b in found[:count]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exhaustive", action="store_true")
    parser.add_argument("--near-boundary", action="store_true")
    args = parser.parse_args()
    with threadpool_limits(1):
        if args.exhaustive:
            exhaustive()
        elif args.near_boundary:
            near_boundary()
        else:
            speed()
