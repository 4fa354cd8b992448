"""Plain NumPy kernels: the reference every faster backend is tested against.

All functions take arrays and ints only.  Activations are NCHW, convolution
weights (out, in/groups, kh, kw), and ``padding`` is always the 4-tuple
``(top, bottom, left, right)``; the layers normalise user input before they
call in here.  Padding is zero padding (``-inf`` for max pooling).

Batch invariance: a sample's numbers never depend on the batch it is in, bit for bit.  Every
product with a sample's values runs in calls whose shapes come from one sample's shape (the
convolutions: one sample per GEMM; :func:`matmul_rows`: fixed blocks of rows), and every
reduction runs over one sample's values in an order fixed by that sample's shape.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..stabilize import stabilize


def output_size(size, kernel, stride, pad_before, pad_after, dilation=1):
    """Number of window positions along one axis."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _pad(x, padding, value=0.0):
    pt, pb, pl, pr = padding
    if pt == pb == pl == pr == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def _windows(xp, kh, kw, sh, sw, dh, dw, oh, ow):
    """View of shape (N, C, oh, ow, kh, kw) over a padded input."""
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    v = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    return v[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, ::dh, ::dw]


def _tap(i, j, sh, sw, dh, dw, oh, ow):
    """Slice of the padded input that kernel tap (i, j) touches at every output position."""
    return (slice(None), slice(None),
            slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))


def _unpad(xp, padding, h, w):
    pt, _, pl, _ = padding
    return xp[:, :, pt:pt + h, pl:pl + w]


# ----- products that do not depend on the batch -----
#
# OpenBLAS (0.3.31, SkylakeX kernels on this machine's AMD EPYC; both dtypes) is not batch invariant,
# as measured here by varying M in ``A[:M] @ B`` and comparing rows bit for bit: one row (M = 1) runs
# gemv, which differs from every M >= 2 in every shape tried; below about M*N*K = 1e6 the small-matrix
# kernels run, which differ from the blocked GEMM (784 x 300 weights: M <= 4 against M >= 5); and the
# blocked GEMM itself differs between sizes (float64, 784 x 300: M = 1200 against 1500; 300 x 100:
# M = 64 and 100 against 1500).  Within one fixed shape, a row's result was the same at every position
# of the block for blocks of 2 to 32 rows (8 shapes from 25 x 6 to 3000 x 800, both dtypes, x @ W.T
# and x @ W); for 64 rows it was not in three float64 shapes.  So the batch is multiplied in blocks
# of BLOCK_ROWS rows, the last one padded with zeros: every call has one shape whatever the batch.
# The cost: each call packs the weights again (8-row blocks made the shipped MLP's 784 -> 300 layer
# several times slower at batch 256), and a sample alone pays a product of BLOCK_ROWS rows.

#: Rows per product of :func:`matmul_rows`: the largest block measured position-invariant above.
BLOCK_ROWS = 32


def matmul_rows(a, b):
    """``a @ b`` for ``a`` of shape (M, K), each row a sample's, computed in products of exactly
    :data:`BLOCK_ROWS` rows (the last block zero-padded), so that a row's result is the same bit for
    bit whatever the other rows and M are (see the measurements above)."""
    m, k = a.shape
    out = np.empty((m, b.shape[1]), np.result_type(a, b))
    full = m - m % BLOCK_ROWS
    for r in range(0, full, BLOCK_ROWS):
        np.matmul(a[r:r + BLOCK_ROWS], b, out=out[r:r + BLOCK_ROWS])
    if full < m:
        tail = np.zeros((BLOCK_ROWS, k), a.dtype)
        tail[:m - full] = a[full:]
        out[full:] = (tail @ b)[:m - full]
    return out


def conv2d(x, w, sh, sw, padding, dh, dw, groups):
    """Cross-correlation ``y[n,o] = sum_c,i,j w[o,c,i,j] x[n,c,sh*p+dh*i, sw*q+dw*j]`` (no bias)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = output_size(h, kh, sh, padding[0], padding[1], dh)
    ow = output_size(wd, kw, sw, padding[2], padding[3], dw)
    win = _windows(_pad(x, padding), kh, kw, sh, sw, dh, dw, oh, ow)
    og = o // groups
    y = np.empty((n, o, oh, ow), dtype=np.result_type(x, w))
    for b in range(n):  # one sample per product: its shape, and so its sums, never depend on the batch
        for g in range(groups):
            cols = win[b, g * cg:(g + 1) * cg]
            wg = w[g * og:(g + 1) * og]
            # (oh, ow, og) -> (og, oh, ow)
            y[b, g * og:(g + 1) * og] = np.tensordot(cols, wg, axes=([0, 3, 4], [1, 2, 3])).transpose(2, 0, 1)
    return y


def conv2d_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw, groups):
    """Adjoint of :func:`conv2d` with respect to its input, for an input of size (h, wd)."""
    n, o, oh, ow = gy.shape
    _, cg, kh, kw = w.shape
    og = o // groups
    pt, pb, pl, pr = padding
    gxp = np.zeros((n, cg * groups, h + pt + pb, wd + pl + pr), dtype=np.result_type(gy, w))
    for b in range(n):  # one sample per product, as in conv2d
        for g in range(groups):
            # (oh, ow, cg, kh, kw): every output position's contribution to its window
            cols = np.tensordot(gy[b, g * og:(g + 1) * og], w[g * og:(g + 1) * og], axes=([0], [0]))
            target = gxp[b:b + 1, g * cg:(g + 1) * cg]
            for i in range(kh):
                for j in range(kw):
                    target[_tap(i, j, sh, sw, dh, dw, oh, ow)] += cols[None, ..., i, j].transpose(0, 3, 1, 2)
    return _unpad(gxp, padding, h, wd)


def conv2d_grad_weight(x, gy, kh, kw, sh, sw, padding, dh, dw, groups):
    """Gradient of ``<conv2d(x, w), gy>`` with respect to ``w``."""
    n, c, h, wd = x.shape
    _, o, oh, ow = gy.shape
    cg, og = c // groups, o // groups
    win = _windows(_pad(x, padding), kh, kw, sh, sw, dh, dw, oh, ow)
    gw = np.empty((o, cg, kh, kw), dtype=np.result_type(x, gy))
    for g in range(groups):
        gw[g * og:(g + 1) * og] = np.tensordot(gy[:, g * og:(g + 1) * og], win[:, g * cg:(g + 1) * cg],
                                               axes=([0, 2, 3], [0, 2, 3]))
    return gw


def conv2d_add_pixels(y, pixels, delta, w, sh, sw, padding, dh, dw):
    """Add to the convolution output ``y``, held channels last (N, oh, ow, O) (in place; returned), the
    effect of changing a few input pixels: ``pixels`` (m, 3) int64 rows ``(n, r, s)``, ``delta``
    (m, C) the change of each pixel's channels; ``y[n, p, q, o] += sum_c w[o, c, i, j] * delta[k, c]``
    wherever ``p*sh - pt + i*dh = r`` and ``q*sw - pl + j*dw = s`` (groups of 1).  For one tap,
    different pixels of a sample reach different outputs, so each tap is one scatter without collisions."""
    _, _, kh, kw = w.shape
    oh, ow = y.shape[1:3]
    n, r, s = pixels.T
    for i in range(kh):
        for j in range(kw):
            t, u = r + padding[0] - i * dh, s + padding[2] - j * dw
            ok = (t >= 0) & (t % sh == 0) & (t // sh < oh) & (u >= 0) & (u % sw == 0) & (u // sw < ow)
            y[n[ok], t[ok] // sh, u[ok] // sw] += delta[ok] @ w[:, :, i, j].T
    return y


def sum_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    """Sum over every (kh, kw) window (taps ``dh``, ``dw`` apart), zero padding."""
    oh = output_size(x.shape[2], kh, sh, padding[0], padding[1], dh)
    ow = output_size(x.shape[3], kw, sw, padding[2], padding[3], dw)
    return _windows(_pad(x, padding), kh, kw, sh, sw, dh, dw, oh, ow).sum(axis=(4, 5))


def sum_pool2d_grad(gy, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    """Adjoint of :func:`sum_pool2d`."""
    n, c, oh, ow = gy.shape
    pt, pb, pl, pr = padding
    gxp = np.zeros((n, c, h + pt + pb, wd + pl + pr), dtype=gy.dtype)
    for i in range(kh):
        for j in range(kw):
            gxp[_tap(i, j, sh, sw, dh, dw, oh, ow)] += gy
    return _unpad(gxp, padding, h, wd)


def max_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    """Window maxima and, per output, the row-major index of the first maximum in its window."""
    oh = output_size(x.shape[2], kh, sh, padding[0], padding[1], dh)
    ow = output_size(x.shape[3], kw, sw, padding[2], padding[3], dw)
    win = _windows(_pad(x, padding, -np.inf), kh, kw, sh, sw, dh, dw, oh, ow)
    win = win.reshape(win.shape[:4] + (kh * kw,))
    idx = win.argmax(axis=4)
    return np.take_along_axis(win, idx[..., None], axis=4)[..., 0], idx


def max_pool2d_values(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    """The window maxima alone (what a forward pass without a trace needs), one axis at a time (a
    maximum is exact in any order, and NaN wins as in max_pool2d)."""
    return reduce_windows(np.maximum, -np.inf, x, kh, kw, sh, sw, padding, dh, dw)


def reduce_windows(op, pad, x, kh, kw, sh, sw, padding, dh=1, dw=1):
    """``op`` (np.maximum, np.add) over each window, one axis at a time: over the window's rows of
    strided row views, then over its columns (2 x 2 windows: 4 passes over half the values instead
    of 4 over all, ~1.6x faster than one pass per tap); padding is ``pad``."""
    oh = output_size(x.shape[2], kh, sh, padding[0], padding[1], dh)
    ow = output_size(x.shape[3], kw, sw, padding[2], padding[3], dw)
    xp = _pad(x, padding, pad)
    rows = _combine(op, [xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh] for i in range(kh)])
    return _combine(op, [rows[..., j * dw:j * dw + (ow - 1) * sw + 1:sw] for j in range(kw)])


def _combine(op, views):
    """``op`` applied along the list ``views``, in order (a new array)."""
    if len(views) == 1:
        return views[0].copy()
    out = op(views[0], views[1])
    for v in views[2:]:
        op(out, v, out=out)
    return out


def max_pool2d_gather(x, idx, kh, kw, sh, sw, padding, dh=1, dw=1):
    """The element of each window of ``x`` that ``idx`` points at (max pooling with fixed winners)."""
    oh, ow = idx.shape[2:]
    win = _windows(_pad(x, padding), kh, kw, sh, sw, dh, dw, oh, ow)
    win = win.reshape(win.shape[:4] + (kh * kw,))
    return np.take_along_axis(win, idx[..., None], axis=4)[..., 0]


def max_pool2d_grad(gy, idx, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    """Route each output gradient to the window element ``idx`` chose (overlaps add up)."""
    n, c, oh, ow = gy.shape
    pt, pb, pl, pr = padding
    gxp = np.zeros((n, c, h + pt + pb, wd + pl + pr), dtype=gy.dtype)
    zero = gy.dtype.type(0)
    for i in range(kh):
        for j in range(kw):
            gxp[_tap(i, j, sh, sw, dh, dw, oh, ow)] += np.where(idx == i * kw + j, gy, zero)
    return _unpad(gxp, padding, h, wd)


def max_pool2d_ties(x, y, kh, kw, sh, sw, padding, dh=1, dw=1):
    """Number of window elements equal to each window's maximum."""
    oh, ow = y.shape[2:]
    win = _windows(_pad(x, padding, -np.inf), kh, kw, sh, sw, dh, dw, oh, ow)
    return (win == y[..., None, None]).sum(axis=(4, 5))


def max_pool2d_grad_split(gy, x, y, kh, kw, sh, sw, padding, dh=1, dw=1):
    """Like :func:`max_pool2d_grad`, but split each output equally among tied maxima."""
    n, c, h, wd = x.shape
    oh, ow = y.shape[2:]
    pt, pb, pl, pr = padding
    share = gy / max_pool2d_ties(x, y, kh, kw, sh, sw, padding, dh, dw)
    xp = _pad(x, padding, -np.inf)
    gxp = np.zeros(xp.shape, dtype=gy.dtype)
    zero = gy.dtype.type(0)
    for i in range(kh):
        for j in range(kw):
            tap = _tap(i, j, sh, sw, dh, dw, oh, ow)
            gxp[tap] += np.where(xp[tap] == y, share, zero)
    return _unpad(gxp, padding, h, wd)


def lrp_step2(z, R, mask, epsilon, channels):
    """Step 2 of the four LRP steps for one group of a rule, with the sums its ledger reads.

    ``zs = stabilize(z, epsilon)``, ``R_g = R`` where ``mask`` (all of ``R`` when mask is None), and
    ``s = R_g / zs``.  Returns ``s`` and, per sample, ``sums`` (N, 4) = [sum R_g, sum R_g where zs is
    finite, sum s (zs - z) there, sum R] and ``per_channel`` (N, channels): the sum of ``s`` over
    each of ``channels`` equal blocks of a sample's values (output channels, for the bias term).
    """
    zs = stabilize(z, epsilon)
    R_g = R if mask is None else np.where(mask, R, R.dtype.type(0))
    s = R_g / zs
    n = len(z)
    sums = np.empty((n, 4), z.dtype)
    sums[:, 0] = R_g.reshape(n, -1).sum(axis=1)
    if epsilon > 0:  # every denominator finite
        sums[:, 1] = sums[:, 0]
        sums[:, 2] = (s * (zs - z)).reshape(n, -1).sum(axis=1)
    else:  # zs = z where finite: nothing absorbed; R at infinite denominators is not passed on
        sums[:, 1] = np.where(np.isfinite(zs), R_g, 0).reshape(n, -1).sum(axis=1)
        sums[:, 2] = 0
    sums[:, 3] = sums[:, 0] if mask is None else R.reshape(n, -1).sum(axis=1)
    return s, sums, s.reshape(n, channels, -1).sum(axis=2)
