"""Step 2 of the four LRP steps (numba backend): stabilize, mask and divide in one jitted pass over
z and R, and the sums the conservation ledger reads; :func:`lowering` chooses how it runs.

The jitted pass writes, element by element, what the NumPy form (:func:`.reference.lrp_step2`)
computes in ~10 passes: the quotient ``s`` and the arrays whose sums the ledger reads (``R`` where
the mask keeps it; ``s (zs - z)``, or with epsilon 0 ``R`` where the denominator is finite).  Those
sums are then NumPy's own reductions over each sample's values, written as the reference writes
them, so that both give the same numbers bit for bit (tested): which one a call takes may then
depend on its size.  The stabilizer is :func:`lrpnumpy.stabilize.stabilize`'s, written out element
by element.  Measured timings are in ``benchmarks/README.rst``.
"""

import numpy as np

from . import _common, reference as _reference
from ._common import each_sample, jitted, scratch

#: Calls with at most this many values run the NumPy reference: no numba import for a small
#: explanation, where the one pass saves little.
SMALL_STEP2 = 1 << 15

#: Once numba is imported (another kernel ran), calls of more values than this take the jitted pass: it
#: and the reference took the same time between 4,096 and 4,704 values (float32, each lowering, with and
#: without mask; 17,408 values, a shipped ViT's tokens at batch 16: 25 against 31 us, masked 37 against 55).
LOADED_STEP2 = 1 << 12

#: The names :func:`lowering` returns.
LOWERINGS = ("numpy", "plain", "masked")


def lowering(has_mask, epsilon, elements):
    """How step 2 runs on a call of ``elements`` values: ``"numpy"`` (the reference) for at most
    :data:`SMALL_STEP2`, and once numba is imported at most :data:`LOADED_STEP2` too; else ``"plain"``
    (no mask and epsilon > 0: every denominator finite, only ``s`` and ``s (zs - z)`` to write; selects
    only, so LLVM vectorises it) or ``"masked"`` (the general pass).  All three give the same bits, so
    the call's size, and whether numba is imported, may decide."""
    if elements <= SMALL_STEP2 and (elements <= LOADED_STEP2 or not _common._JITTED):
        return "numpy"
    return "plain" if not has_mask and epsilon > 0 else "masked"


@jitted
def _quotient_scaled(z, R, eps, scale, s, t):
    """``s = scale (R / zs)`` and ``t = (R / zs) (zs - z)`` elementwise, every denominator finite (epsilon
    > 0).  ``scale``: AttnLRP's half for each input of a product; 1 for the plain step 2 (a product by
    1 changes no bit)."""
    n, m = z.shape
    for b in range(n):
        zb, Rb, sb, tb = z[b], R[b], s[b], t[b]
        for k in range(m):
            zk = zb[k]
            zs = zk + eps if zk >= 0 else zk - eps
            v = Rb[k] / zs
            sb[k] = v * scale
            tb[k] = v * (zs - zk)
    return s


def stabilized_quotient(z, R, epsilon, scale=1.0):
    """``(scale * R / stabilize(z), sum s (stabilize(z) - z) per sample)`` for ``epsilon > 0`` and z, R of one
    shape (N, ...) and dtype, in one jitted pass over each sample's values, the samples shared among the
    kernels' threads (each sample's sum is NumPy's over its row, as ``per_sample_sum`` takes it).

    The transformer rules' step 2 (:func:`lrpnumpy.rules_transformer._stabilized`) on large arrays (the
    attention scores (N, H, T, T)), which in NumPy takes seven passes.  The same bits as
    ``R / stabilize(z, epsilon)`` times ``scale`` and the per-sample sum of ``(R / zs) (zs - z)`` (the
    stabilizer written out element by element).  Non-finite
    denominators are not looked for: the caller checks that the sums are finite."""
    n = len(z)
    z2, R2 = np.ascontiguousarray(z).reshape(n, -1), np.ascontiguousarray(R).reshape(n, -1)
    s = np.empty(z2.shape, z.dtype)
    t = scratch("quotient t", z2.shape, z.dtype)  # the calling thread's; each thread writes its samples' rows
    sums = np.empty(n, z.dtype)
    eps, factor = z.dtype.type(epsilon), z.dtype.type(scale)

    def run(lo, hi):
        _quotient_scaled(z2[lo:hi], R2[lo:hi], eps, factor, s[lo:hi], t[lo:hi])
        sums[lo:hi] = t[lo:hi].sum(axis=1)
    each_sample(n, run)
    return s.reshape(z.shape), sums


@jitted
def _lrp_step2(z, R, mask, use_mask, eps, s, kept, t):
    """``kept = R`` where the mask keeps it (0 elsewhere), ``s = kept / zs``, and ``t = s (zs - z)``
    (epsilon > 0) or ``t = kept`` where zs is finite (epsilon 0: z = 0 makes zs +inf, and s is
    R / inf)."""
    n, m = z.shape
    zero, inf = z.dtype.type(0), z.dtype.type(np.inf)  # (a float64 inf would make zs, s and t float64)
    absorbs = eps > 0
    for b in range(n):
        for k in range(m):
            r = R[b, k]
            if use_mask and not mask[b, k]:
                r = zero
            zk = z[b, k]
            zs = zk + eps if zk >= 0 else zk - eps
            if zs == 0:
                zs = inf
            v = r / zs
            kept[b, k] = r
            s[b, k] = v
            if absorbs:
                t[b, k] = v * (zs - zk)
            else:
                t[b, k] = r if np.isfinite(zs) else zero
    return s


def lrp_step2(z, R, mask, epsilon, channels):
    how = lowering(mask is not None, epsilon, z.size)
    if how == "numpy":
        return _reference.lrp_step2(z, R, mask, epsilon, channels)
    n = len(z)
    z2, R2 = np.ascontiguousarray(z).reshape(n, -1), np.ascontiguousarray(R).reshape(n, -1)
    s = np.empty(z2.shape, z.dtype)
    t = scratch("step2 t", z2.shape, z.dtype)  # the calling thread's; each thread writes its samples' rows
    sums = np.empty((n, 4), z.dtype)
    per_channel = np.empty((n, channels), z.dtype)
    eps, one = z.dtype.type(epsilon), z.dtype.type(1)
    if how == "plain":  # kept = finite = total, all of R
        def run(lo, hi):
            _quotient_scaled(z2[lo:hi], R2[lo:hi], eps, one, s[lo:hi], t[lo:hi])
            sums[lo:hi, 0] = R2[lo:hi].sum(axis=1)
            sums[lo:hi, 1] = sums[lo:hi, 3] = sums[lo:hi, 0]
            sums[lo:hi, 2] = t[lo:hi].sum(axis=1)
            per_channel[lo:hi] = s[lo:hi].reshape(hi - lo, channels, -1).sum(axis=2)
    else:
        m = (None if mask is None
             else np.ascontiguousarray(np.broadcast_to(mask, z.shape)).reshape(n, -1))
        no_mask = np.zeros((1, 1), bool)
        kept = scratch("step2 kept", z2.shape, z.dtype)

        def run(lo, hi):
            _lrp_step2(z2[lo:hi], R2[lo:hi], no_mask if m is None else m[lo:hi], m is not None, eps, s[lo:hi],
                       kept[lo:hi], t[lo:hi])
            sums[lo:hi, 0] = kept[lo:hi].sum(axis=1)
            if epsilon > 0:
                sums[lo:hi, 1] = sums[lo:hi, 0]
                sums[lo:hi, 2] = t[lo:hi].sum(axis=1)
            else:
                sums[lo:hi, 1] = t[lo:hi].sum(axis=1)
                sums[lo:hi, 2] = 0
            sums[lo:hi, 3] = sums[lo:hi, 0] if m is None else R2[lo:hi].sum(axis=1)
            per_channel[lo:hi] = s[lo:hi].reshape(hi - lo, channels, -1).sum(axis=2)
    # each sample's values and sums on one thread, in the order NumPy takes a row: the same bits at any split
    each_sample(n, run, least=max(1, SMALL_STEP2 // max(1, z2.shape[1])))
    return s.reshape(z.shape), sums, per_channel
