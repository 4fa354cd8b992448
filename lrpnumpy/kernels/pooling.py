"""Pooling kernels (numba backend): max and sum pooling, their gradients, and the one function,
:func:`lowering`, that chooses how each runs.

Unlike the convolution's lowerings, every way a pool runs here gives the same numbers bit for bit
(the same maxima and first winners, the same sums added in the reference's order, tested against
each other), so the choice only decides speed: vectorised NumPy passes over strided views (the
reference's way; small inputs, where they cost less than a call into numba and leave numba
unimported), a jitted loop, or, for unpadded 2 x 2 windows, jitted kernels with the four taps
written out.  Measured timings behind the choice are in ``benchmarks/README.rst``.  Same
signatures as :mod:`.reference`.
"""

import numpy as np

from . import reference as _reference
from ._common import jitted
from .reference import output_size

#: Pools on inputs (the whole call's) of at most this many values run NumPy code where it gives
#: the same numbers (max pools with disjoint windows, all sum pools): no numba import for a small
#: explanation.
SMALL_POOL = 1 << 15

#: The names :func:`lowering` returns.
LOWERINGS = ("numpy", "2x2", "loop", "tiles")


def lowering(op, kh, kw, sh, sw, padding, dh, dw, elements):
    """How a pool of kh x kw windows (stride, padding, dilation) runs: ``op`` is "max" (winners,
    gathering and gradient), "sum" or "sum_grad"; ``elements`` is the number of input values of
    the whole call.  One of :data:`LOWERINGS`:

    * ``"numpy"``: vectorised passes over strided views, for max pools whose windows do not overlap
      on at most :data:`SMALL_POOL` values, and for sum pools that no rule below takes;
    * ``"2x2"``: unpadded 2 x 2 windows above SMALL_POOL values (max: the caller takes ``"loop"``
      instead when the input holds a NaN, whose rule the unrolled kernel does not implement; sum:
      its gradient only for stride 2);
    * ``"tiles"``: a sum pool's gradient where the windows tile the padded input (copies);
    * ``"loop"``: the general jitted max-pool loops.

    The choice may look at the call's size, not only a sample's: every lowering gives the same
    bits (each input value is in at most one window where ``"numpy"`` writes gradients; the sums
    add the window's rows, then its columns, everywhere)."""
    small = elements <= SMALL_POOL
    two = (kh, kw, dh, dw) == (2, 2, 1, 1) and not any(padding)
    if op == "max":
        if small and sh >= (kh - 1) * dh + 1 and sw >= (kw - 1) * dw + 1:
            return "numpy"
        return "2x2" if two else "loop"
    if op == "sum":
        return "2x2" if two and not small else "numpy"
    if two and (sh, sw) == (2, 2) and not small:
        return "2x2"
    return "tiles" if (sh, sw, dh, dw) == (kh, kw, 1, 1) else "numpy"


# Max pooling: the forward pass with winners one window at a time (below); gathering and the
# gradient run over window taps outside and output columns q inside, so their inner loop is long and
# branch-free (the valid range of q for each tap is computed once).

# Max pooling: the forward pass with winners one window at a time (below); gathering and the
# gradient run over window taps outside and output columns q inside, so their inner loop is long and
# branch-free (the valid range of q for each tap is computed once).

@jitted
def _max_pool(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """Window maxima and the row-major tap of each window's first maximum, one window at a time with
    the running maximum and its tap chosen by selects, not branches (on random data every compare is
    a coin flip, and selects beat branches per tap); taps
    outside the input are skipped, as -inf would never win."""
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    lowest = x.dtype.type(-np.inf)
    for plane in range(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            r0 = p * sh - pt
            for q in range(ow):
                s0 = q * sw - pl
                best, tap = lowest, 0
                for i in range(kh):
                    r = r0 + i * dh
                    if r < 0 or r >= h:
                        continue
                    for j in range(kw):
                        s = s0 + j * dw
                        if s < 0 or s >= w:
                            continue
                        v = x[b, ci, r, s]
                        # strictly greater: the first maximum wins ties; the first NaN wins over
                        # everything (as numpy's argmax does, so both backends agree on NaN input)
                        better = (v > best) | ((v != v) & (best == best))
                        best = v if better else best
                        tap = i * kw + j if better else tap
                y[b, ci, p, q] = best
                idx[b, ci, p, q] = tap
    return y, idx


@jitted
def _max_pool_2x2(x, sh, sw, oh, ow):
    """:func:`_max_pool` for 2 x 2 windows inside an input without NaN: the four taps written out,
    which LLVM compiles to compares and selects in registers (much faster than the general loop,
    whose runtime window sizes and NaN rule keep the running maximum on a dependency chain).
    Strictly greater, so the first maximum wins ties, as there."""
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for b in range(n):
        for ci in range(c):
            plane, yp, ip = x[b, ci], y[b, ci], idx[b, ci]
            for p in range(oh):
                top, bottom = plane[p * sh], plane[p * sh + 1]
                for q in range(ow):
                    s = q * sw
                    best, tap = top[s], 0
                    if top[s + 1] > best:
                        best, tap = top[s + 1], 1
                    if bottom[s] > best:
                        best, tap = bottom[s], 2
                    if bottom[s + 1] > best:
                        best, tap = bottom[s + 1], 3
                    yp[p, q] = best
                    ip[p, q] = tap
    return y, idx


@jitted
def _max_pool_gather(x, idx, tap_rows, tap_cols, sh, sw, pt, pl):
    n, c, h, w = x.shape
    _, _, oh, ow = idx.shape
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for plane in range(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            for q in range(ow):
                k = idx[b, ci, p, q]
                r, s = p * sh - pt + tap_rows[k], q * sw - pl + tap_cols[k]
                if 0 <= r < h and 0 <= s < w:
                    y[b, ci, p, q] = x[b, ci, r, s]
    return y


@jitted
def _max_pool_grad(gy, idx, h, w, tap_rows, tap_cols, sh, sw, pt, pl):
    n, c, oh, ow = gy.shape
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for plane in range(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            for q in range(ow):
                k = idx[b, ci, p, q]
                r, s = p * sh - pt + tap_rows[k], q * sw - pl + tap_cols[k]
                if 0 <= r < h and 0 <= s < w:
                    gx[b, ci, r, s] += gy[b, ci, p, q]
    return gx


def _tap_offsets(kh, kw, dh, dw):
    """Row and column offset of each row-major window tap (looked up: an integer division per output
    slowed the gather and gradient loops)."""
    tap = np.arange(kh * kw)
    return tap // kw * dh, tap % kw * dw


@jitted
def _sum_pool_2x2(x, sh, sw, oh, ow):
    """2 x 2 window sums, added as the reference adds them (the window's rows, then its columns),
    so the numbers are the same bit for bit; one pass over the input."""
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    for b in range(n):
        for ci in range(c):
            plane, yp = x[b, ci], y[b, ci]
            for p in range(oh):
                top, bottom, out = plane[p * sh], plane[p * sh + 1], yp[p]
                for q in range(ow):
                    s = q * sw
                    out[q] = (top[s] + bottom[s]) + (top[s + 1] + bottom[s + 1])
    return y


@jitted
def _sum_pool_2x2_grad(gy, h, w):
    """The gradient of 2 x 2 sums that tile the top-left 2*oh x 2*ow block: each output's gradient
    copied to its window (0 in rows and columns no window reads)."""
    n, c, oh, ow = gy.shape
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    zero = gy.dtype.type(0)
    for b in range(n):
        for ci in range(c):
            g, gp = gx[b, ci], gy[b, ci]
            for p in range(oh):
                top, bottom, row = g[2 * p], g[2 * p + 1], gp[p]
                for q in range(ow):
                    v = row[q]
                    top[2 * q] = v
                    top[2 * q + 1] = v
                    bottom[2 * q] = v
                    bottom[2 * q + 1] = v
                for s in range(2 * ow, w):
                    top[s] = zero
                    bottom[s] = zero
            for r in range(2 * oh, h):
                for s in range(w):
                    g[r, s] = zero
    return gx


def sum_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    if lowering("sum", kh, kw, sh, sw, padding, dh, dw, x.size) == "2x2":
        oh = output_size(x.shape[2], kh, sh, 0, 0)
        ow = output_size(x.shape[3], kw, sw, 0, 0)
        return _sum_pool_2x2(np.ascontiguousarray(x), sh, sw, oh, ow)
    # vectorised adds over strided views of the padded input, one axis at a time (a jitted loop over
    # runtime window sizes was slower on every shape measured)
    return _reference.reduce_windows(np.add, 0.0, x, kh, kw, sh, sw, padding, dh, dw)


def sum_pool2d_grad(gy, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    n, c, oh, ow = gy.shape
    pt, pb, pl, pr = padding
    how = lowering("sum_grad", kh, kw, sh, sw, padding, dh, dw, n * c * h * wd)
    if how == "2x2":
        return _sum_pool_2x2_grad(np.ascontiguousarray(gy), h, wd)
    if how == "tiles" and h + pt + pb == oh * kh and wd + pl + pr == ow * kw:
        # windows that tile the padded input: each output gradient copied to its kh x kw block, each
        # value repeated kw times along the row, then each row kh times (faster than one 6-d copy)
        gxp = np.empty((n, c, oh, kh, ow * kw), gy.dtype)
        gxp[...] = np.repeat(gy, kw, axis=3)[:, :, :, None, :]
        gxp = gxp.reshape(n, c, oh * kh, ow * kw)
        return gxp if pt == pb == pl == pr == 0 else np.ascontiguousarray(_reference._unpad(gxp, padding, h, wd))
    # the reference's strided adds, one per tap (the jitted loop was slower on small planes)
    return np.ascontiguousarray(_reference.sum_pool2d_grad(gy, h, wd, kh, kw, sh, sw, padding, dh, dw))


def _max_pool_small(x, kh, kw, sh, sw, padding, dh, dw):
    """Window maxima (one axis at a time) and then, per window, the first tap that equals its maximum
    (taps in reverse row-major order, each overwriting: the first wins; a NaN maximum is matched by
    the first NaN): faster than the reference's argmax over window views on small inputs."""
    if (kh, kw, sh, sw, dh, dw) == (2, 2, 2, 2, 1, 1) and not any(padding):  # lenet5's pools
        oh, ow = x.shape[2] // 2, x.shape[3] // 2
        a, b = x[:, :, 0:2 * oh:2, 0:2 * ow:2], x[:, :, 0:2 * oh:2, 1:2 * ow:2]
        c, d = x[:, :, 1:2 * oh:2, 0:2 * ow:2], x[:, :, 1:2 * oh:2, 1:2 * ow:2]
        y = np.maximum(np.maximum(a, c), np.maximum(b, d))  # the order of the views' maxima below
        if not np.isnan(y).any():  # (with NaN, the general rule below)
            idx = np.where(c == y, 2, 3)
            np.copyto(idx, 1, where=b == y)
            np.copyto(idx, 0, where=a == y)
            return y, idx
    y = _reference.max_pool2d_values(x, kh, kw, sh, sw, padding, dh, dw)
    oh, ow = y.shape[2:]
    xp = _reference._pad(x, padding, -np.inf)
    idx = np.zeros(y.shape, np.int64)  # tap 0 unless a later step finds an earlier one
    nan = np.isnan(y)
    nan = nan if nan.any() else None
    for tap in range(kh * kw - 1, 0, -1):
        v = xp[_reference._tap(tap // kw, tap % kw, sh, sw, dh, dw, oh, ow)]
        hit = v == y
        if nan is not None:
            hit |= nan & np.isnan(v)
        np.copyto(idx, tap, where=hit)
    hit = xp[_reference._tap(0, 0, sh, sw, dh, dw, oh, ow)] == y  # taps before this one all missed
    if nan is not None:
        hit |= nan & np.isnan(xp[_reference._tap(0, 0, sh, sw, dh, dw, oh, ow)])
    np.copyto(idx, 0, where=hit)
    return y, idx


def _max_pool_grad_small(gy, idx, h, wd, kh, kw, sh, sw, padding, dh, dw):
    """The reference's gradient for disjoint windows: each input element in one window at most, so
    each tap's share is written, not added."""
    n, c, oh, ow = gy.shape
    pt, pb, pl, pr = padding
    if (sh, sw, dh, dw) == (kh, kw, 1, 1) and not any(padding):  # windows that tile the input
        gx = np.zeros((n, c, h, wd), dtype=gy.dtype)
        tiles = gx[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)  # tap (i, j): [:, :, :, i, :, j]
        for tap in range(kh * kw):
            np.copyto(tiles[:, :, :, tap // kw, :, tap % kw], gy, where=idx == tap)
        gx += gy.dtype.type(0)  # -0 -> +0, as the jitted loop's and the reference's adds into zeros give
        return gx
    gxp = np.zeros((n, c, h + pt + pb, wd + pl + pr), dtype=gy.dtype)
    zero = gy.dtype.type(0)
    for tap in range(kh * kw):
        gxp[_reference._tap(tap // kw, tap % kw, sh, sw, dh, dw, oh, ow)] = np.where(idx == tap, gy, zero)
    gxp += zero  # -0 -> +0 (see above): the jitted loop gives +0 too
    return np.ascontiguousarray(_reference._unpad(gxp, padding, h, wd))


def max_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    how = lowering("max", kh, kw, sh, sw, padding, dh, dw, x.size)
    if how == "numpy":
        return _max_pool_small(x, kh, kw, sh, sw, padding, dh, dw)
    oh = output_size(x.shape[2], kh, sh, padding[0], padding[1], dh)
    ow = output_size(x.shape[3], kw, sw, padding[2], padding[3], dw)
    x = np.ascontiguousarray(x)
    if how == "2x2" and not np.isnan(x).any():
        return _max_pool_2x2(x, sh, sw, oh, ow)
    return _max_pool(x, kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow)


def max_pool2d_values(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    # one vectorised maximum per tap over strided views beats a jitted loop
    return _reference.max_pool2d_values(x, kh, kw, sh, sw, padding, dh, dw)


def max_pool2d_gather(x, idx, kh, kw, sh, sw, padding, dh=1, dw=1):
    if lowering("max", kh, kw, sh, sw, padding, dh, dw, x.size) == "numpy":
        return np.ascontiguousarray(_reference.max_pool2d_gather(x, idx, kh, kw, sh, sw, padding, dh, dw))
    return _max_pool_gather(np.ascontiguousarray(x), idx, *_tap_offsets(kh, kw, dh, dw), sh, sw, padding[0], padding[2])


def max_pool2d_grad(gy, idx, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    if lowering("max", kh, kw, sh, sw, padding, dh, dw, gy.shape[0] * gy.shape[1] * h * wd) == "numpy":
        return _max_pool_grad_small(gy, idx, h, wd, kh, kw, sh, sw, padding, dh, dw)
    return _max_pool_grad(np.ascontiguousarray(gy), idx, h, wd, *_tap_offsets(kh, kw, dh, dw), sh, sw, padding[0],
                          padding[2])
