"""Convolution kernels (numba backend): six lowerings to BLAS products, and the one function,
:func:`lowering`, that chooses between them from one sample's shape.

Every lowering multiplies one sample per GEMM, with shapes set by one sample's shape: BLAS's
results depend on the shapes it is called with (measured: see :mod:`.reference`), so a sample's
numbers are then the same bit for bit in any batch.  The lowerings give different roundings of
the same sums, so the choice between them must never look at the batch, nor at timings: the same
sample shape always takes the same lowering.  A batch's samples run side by side on the kernels'
threads (:func:`._common.each_sample`), each making the calls it would make alone.

* ``"direct"``: one input channel, stride 1 (a first layer): a jitted loop adds each output's
  taps in order, the window's size a compile-time constant.
* ``"rows"``: small images, few channels: a copy of the kernel's rows per output row, times the
  kernel's columns laid out as a banded matrix (more multiply-adds, in one GEMM near the peak).
* ``"channels last"``: where ``"rows"`` would be chosen but a window row is long (C * kw >= 64):
  the (positions x window) matrix channels last, times the weights, in blocks that stay in cache
  (forward only; the input gradient takes ``"rows"``).
* ``"wide"``: stride 1 otherwise: im2col at the padded width (each tap one contiguous run),
  at most :data:`COLUMN_BYTES` of column matrix at a time.
* ``"patches"``: stride equal to the kernel (above 1), no padding, no dilation, one group (a vision
  transformer's patch embedding): the windows tile the input, so im2col is one reshape and transpose
  copy of the input and col2im the copy back (each input value in at most one window), around the
  same per-sample products as ``"strided"``: the same bits, without the per-pixel loops.
* ``"strided"``: other strides: im2col and col2im as jitted per-pixel loops.

Measured timings behind the choice and the constants are in ``benchmarks/README.rst``.  Same
signatures as :mod:`.reference`.
"""

import weakref

import numpy as np

from ._common import BLOCK_BYTES, each_sample, immutable, jit, jitted, scratch
from .reference import output_size

#: The names :func:`lowering` returns.
LOWERINGS = ("direct", "patches", "rows", "channels last", "wide", "strided")


@jitted
def _valid(size, out, stride, pad, offset):
    """Range [q0, q1) of output positions q whose tap q*stride - pad + offset lies in [0, size)."""
    q0 = max(0, -((offset - pad) // stride))  # ceil((pad - offset) / stride)
    q1 = min(out, (size - 1 + pad - offset) // stride + 1)
    return q0, max(q0, q1)


@jitted
def _im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols):
    """Fill ``cols[(c, i, j), (n, p, q)] = x[n, c, p*sh - pt + i*dh, q*sw - pl + j*dw]`` (0 outside)."""
    n, c, h, w = x.shape
    npix = oh * ow
    zero = x.dtype.type(0)
    for plane in range(n * c):
        b, ci = plane // c, plane % c
        for i in range(kh):
            p0, p1 = _valid(h, oh, sh, pt, i * dh)
            for j in range(kw):
                q0, q1 = _valid(w, ow, sw, pl, j * dw)
                row = (ci * kh + i) * kw + j
                for p in range(oh):
                    base = b * npix + p * ow
                    if p < p0 or p >= p1:
                        for q in range(ow):
                            cols[row, base + q] = zero
                        continue
                    r = p * sh - pt + i * dh
                    s0 = q0 * sw - pl + j * dw
                    for q in range(q0):
                        cols[row, base + q] = zero
                    for q in range(q1 - q0):
                        cols[row, base + q0 + q] = x[b, ci, r, s0 + q * sw]
                    for q in range(q1, ow):
                        cols[row, base + q] = zero
    return cols


@jitted
def _col2im(cols, n, c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """Adjoint of :func:`_im2col`: add every column entry back onto the input position it came from."""
    npix = oh * ow
    x = np.zeros((n, c, h, w), dtype=cols.dtype)
    for plane in range(n * c):
        b, ci = plane // c, plane % c
        for i in range(kh):
            p0, p1 = _valid(h, oh, sh, pt, i * dh)
            for j in range(kw):
                q0, q1 = _valid(w, ow, sw, pl, j * dw)
                row = (ci * kh + i) * kw + j
                for p in range(p0, p1):
                    r = p * sh - pt + i * dh
                    base = b * npix + p * ow
                    s0 = q0 * sw - pl + j * dw
                    for q in range(q1 - q0):
                        x[b, ci, r, s0 + q * sw] += cols[row, base + q0 + q]
    return x


# ----- the choice -----

#: Convolutions with less than this (output channels x one sample's plane) keep the GEMM lowerings
#: rather than ``"direct"``: a small explanation never imports numba (lenet5's first layer, 6 x 28
#: x 28, and toolbox_lenet's, 10 x 32 x 32, stay below; the shipped CNNs', 16 x 28 x 28, runs
#: direct), and there the direct kernel saves microseconds.
SMALL_DIRECT = 12288

#: The most output channels ``"direct"`` takes in the forward pass and in the input gradient: it
#: runs on one core per sample and its time grows with them, while GEMMs get more efficient.
DIRECT_OUT = {"forward": 16, "grad_input": 12}


_CHOSEN = {}  # lowering's arguments and the constants it reads -> its choice (a pure function of them)


def lowering(direction, c, o, h, w, kh, kw, sh, sw, padding, dh, dw, groups, same_dtype=True):
    """:func:`choose_lowering`, remembered: a layer asks on every call, with the same few shapes
    (the cost model's arithmetic took a few microseconds a call, a dict lookup well under one)."""
    key = (direction, c, o, h, w, kh, kw, sh, sw, tuple(padding), dh, dw, groups, same_dtype, SMALL_DIRECT,
           DIRECT_OUT["forward"], DIRECT_OUT["grad_input"])
    how = _CHOSEN.get(key)
    if how is None:
        if len(_CHOSEN) > 4096:  # a bound for programs that see endless shapes
            _CHOSEN.clear()
        how = _CHOSEN[key] = choose_lowering(direction, c, o, h, w, kh, kw, sh, sw, padding, dh, dw, groups,
                                             same_dtype)
    return how


def choose_lowering(direction, c, o, h, w, kh, kw, sh, sw, padding, dh, dw, groups, same_dtype=True):
    """The lowering that convolves one sample of ``c`` x ``h`` x ``w`` with ``o`` x ``c/groups`` x
    ``kh`` x ``kw`` weights, for ``direction`` "forward" (:func:`conv2d`) or "grad_input"
    (:func:`conv2d_grad_input`); one of :data:`LOWERINGS`.

    Only one sample's shape goes in, never the batch's size nor a timing, so a sample takes the same
    lowering, and gets the same bits, in every batch.  In order:

    1. ``"direct"``: one input channel, one group, stride 1, equal dtypes, at most
       :data:`DIRECT_OUT` output channels and at least :data:`SMALL_DIRECT` outputs (output
       channels x the plane: the input's for the forward pass, the output's for the gradient).
    2. ``"patches"``: one group, stride equal to the kernel (not 1 x 1), no padding, no dilation:
       the windows tile the input (a ViT's patch embedding), so im2col is one transposed copy.
    3. ``"rows"`` (or, forward only, ``"channels last"`` when a window row is long, ``c * kw >=
       64``): one group and the row lowering estimated cheaper than im2col by a cost model in ns
       (copies at 0.45-1 ns a value, GEMMs at ~85 multiply-adds a ns, less with fewer than 64
       output channels; constants fitted on this project's benchmark shapes).
    4. ``"wide"`` for stride 1, else ``"strided"``.
    """
    oh = output_size(h, kh, sh, padding[0], padding[1], dh)
    ow = output_size(w, kw, sw, padding[2], padding[3], dw)
    plane = h * w if direction == "forward" else oh * ow
    if (c == 1 and groups == 1 and sh == sw == 1 and same_dtype and o <= DIRECT_OUT[direction]
            and o * plane >= SMALL_DIRECT):
        return "direct"
    if (groups == 1 and (sh, sw) == (kh, kw) != (1, 1) and (dh, dw) == (1, 1) and not any(padding)
            and oh >= 1 and ow >= 1):
        return "patches"
    if groups == 1:
        used = (ow - 1) * sw + (kw - 1) * dw + 1  # input columns a row of outputs reads
        width = ow if (sh, sw) != (1, 1) else _wide_shape(h, w, kh, kw, padding, dh, dw)[3]
        im2col = 0.45 * c * kh * kw * oh * width + o * c * kh * kw * oh * width / (85 * min(1.0, o / 64))
        rows = 1.0 * oh * kh * c * used + oh * kh * c * used * o * ow / 85 + 0.85 * o * oh * ow
        if rows < im2col:
            return "channels last" if direction == "forward" and c * kw >= 64 else "rows"
    return "wide" if sh == sw == 1 else "strided"


def conv2d(x, w, sh, sw, padding, dh, dw, groups):
    n, c, h, wd = x.shape
    how = lowering("forward", c, w.shape[0], h, wd, w.shape[2], w.shape[3], sh, sw, padding, dh, dw, groups,
                   x.dtype == w.dtype)
    if how == "direct":
        return _conv_direct(x, w, padding, dh, dw)
    if how == "patches":
        return _conv_patches(x, w)
    if how == "channels last":
        return _conv_channels_last(x, w, sh, sw, padding, dh, dw)
    if how == "rows":
        return _conv_rows(x, w, sh, sw, padding, dh, dw)
    if how == "wide":
        return _conv_wide(x, w, padding, dh, dw, groups)
    return _conv_strided(x, w, sh, sw, padding, dh, dw, groups)


def conv2d_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw, groups):
    _, cg, kh, kw = w.shape
    how = lowering("grad_input", cg * groups, w.shape[0], h, wd, kh, kw, sh, sw, padding, dh, dw, groups,
                   gy.dtype == w.dtype)
    if how == "direct":
        return _conv_direct_grad_input(gy, w, h, wd, padding, dh, dw)
    if how == "patches":
        return _conv_patches_grad_input(gy, w, h, wd)
    if how == "rows":
        return _conv_rows_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw)
    if how == "wide":
        return _conv_wide_grad_input(gy, w, h, wd, padding, dh, dw, groups)
    return _conv_strided_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw, groups)


# ----- im2col at the padded width (stride 1) -----
#
# Pad the input, then compute every output row at the padded width wp.  Tap (i, j) of output
# position (p, q) reads flat index (p + i*dh)*wp + q + j*dw of the padded plane, so for each tap
# the whole plane is one contiguous run of oh*wp values: im2col is kh*kw strided copies and col2im
# kh*kw strided adds, no per-pixel loop.  The wp - ow extra columns per row are computed and
# dropped (gradients put zeros there).  One extra zero row keeps the last run inside the array.

def _wide_shape(h, w, kh, kw, padding, dh, dw):
    hp, wp = h + padding[0] + padding[1], w + padding[2] + padding[3]
    return hp - dh * (kh - 1), wp - dw * (kw - 1), hp, wp


def _cols_wide(x, kh, kw, padding, dh, dw, name):
    n, c, h, w = x.shape
    oh, ow, hp, wp = _wide_shape(h, w, kh, kw, padding, dh, dw)
    xp = np.zeros((n, c, hp + 1, wp), x.dtype)
    xp[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + w] = x
    xf, run = xp.reshape(n, c, -1), oh * wp
    cols = scratch(name, (c, kh, kw, n, run), x.dtype)
    for i in range(kh):
        for j in range(kw):
            off = i * dh * wp + j * dw
            cols[:, i, j] = xf[:, :, off:off + run].transpose(1, 0, 2)
    return cols.reshape(c * kh * kw, n * run)


def _grad_wide(gy, wp, name):
    """(N, O, oh, ow) -> (O, N*oh*wp) with zeros in the dropped columns."""
    n, o, oh, ow = gy.shape
    g = scratch(name, (o, n, oh, wp), gy.dtype)
    g[:, :, :, ow:] = 0
    g[:, :, :, :ow] = gy.transpose(1, 0, 2, 3)
    return g.reshape(o, n * oh * wp)


#: The stride-1 lowering builds its column matrix for at most this many bytes of it at a time, a
#: block of output rows per GEMM (vgg16's second convolution would need 117 MB float32 at once).
COLUMN_BYTES = 32 << 20


def _row_chunks(oh, row_bytes):
    """Blocks of output rows, sized by one sample's bytes per row (never the batch's)."""
    rows = max(1, min(oh, COLUMN_BYTES // max(1, row_bytes)))
    return [(p0, min(oh, p0 + rows)) for p0 in range(0, oh, rows)]


def _conv_wide(x, w, padding, dh, dw, groups):
    """Stride-1 convolution in the wide layout, one sample and one block of its output rows per GEMM."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow, hp, wp = _wide_shape(h, wd, kh, kw, padding, dh, dw)
    k = cg * kh * kw
    y = np.empty((n, o, oh, ow), np.result_type(x, w))
    chunks = _row_chunks(oh, c * kh * kw * wp * x.itemsize)

    def run_samples(lo, hi):
        xp = np.zeros((hi - lo, c, hp + 1, wp), x.dtype)
        xp[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + wd] = x[lo:hi]
        xf = xp.reshape(hi - lo, c, -1)
        for p0, p1 in chunks:
            run = (p1 - p0) * wp
            cols = scratch("cols", (c, kh, kw, run), x.dtype)
            out = scratch("wide out", (o, run), y.dtype)
            for b in range(hi - lo):
                for i in range(kh):
                    for j in range(kw):
                        off = (p0 + i * dh) * wp + j * dw
                        cols[:, i, j] = xf[b, :, off:off + run]
                _matmul_groups(w.reshape(o, k), cols.reshape(c * kh * kw, run), groups, o // groups, k, out=out)
                y[lo + b, :, p0:p1] = out.reshape(o, p1 - p0, wp)[:, :, :ow]
    each_sample(n, run_samples, sample_bytes=x.itemsize * (c * (hp + 1) * wp + o * oh * ow))
    return y


def _conv_wide_grad_input(gy, w, h, wd, padding, dh, dw, groups):
    """Adjoint of :func:`_conv_wide`, one block of output rows at a time (their columns add up)."""
    n, o, oh, ow = gy.shape
    _, cg, kh, kw = w.shape
    c, k = cg * groups, cg * kh * kw
    _, _, hp, wp = _wide_shape(h, wd, kh, kw, padding, dh, dw)
    gx = np.zeros((n, c, (hp + 1) * wp), np.result_type(gy, w))
    chunks = _row_chunks(oh, c * kh * kw * wp * gx.itemsize)

    def run_samples(lo, hi):
        for p0, p1 in chunks:
            run = (p1 - p0) * wp
            g = scratch("grad", (o, p1 - p0, wp), gy.dtype)
            g[:, :, ow:] = 0
            gcols = scratch("gcols", (k * groups, run), gx.dtype)
            gc = gcols.reshape(c, kh, kw, run)
            for b in range(lo, hi):
                g[:, :, :ow] = gy[b, :, p0:p1]
                _matmul_groups(w.reshape(o, k), g.reshape(o, run), groups, o // groups, k, transpose_a=True,
                               out=gcols)
                for i in range(kh):
                    for j in range(kw):
                        off = (p0 + i * dh) * wp + j * dw
                        gx[b, :, off:off + run] += gc[:, i, j]
    each_sample(n, run_samples, sample_bytes=gx.itemsize * (c * (hp + 1) * wp + o * oh * ow))
    gx = gx.reshape(n, c, hp + 1, wp)
    return np.ascontiguousarray(gx[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + wd])


def _blocks(groups, rows_w, rows_x):
    """Row slices of the weight matrix and of the column matrix for each group."""
    return [(slice(g * rows_w, (g + 1) * rows_w), slice(g * rows_x, (g + 1) * rows_x)) for g in range(groups)]


def _matmul_groups(a, b, groups, rows_a, rows_b, transpose_a=False, out=None):
    """Block-diagonal product: group g multiplies rows of ``a`` (or of ``a.T``) with rows of ``b``."""
    if groups == 1:
        return np.matmul(a.T if transpose_a else a, b, out=out)
    for ra, rb in _blocks(groups, rows_a, rows_b):
        if transpose_a:
            np.matmul(a[ra].T, b[ra], out=out[rb])
        else:
            np.matmul(a[ra], b[rb], out=out[ra])
    return out


# ----- small products -----
#
# OpenBLAS multiplies products of up to about 1e6 multiply-adds in its small-matrix kernels (no
# packing, on the calling thread); larger ones in its blocked GEMM, on all its threads.  A sample's
# product in the lowerings for small images ("rows", "channels last", "strided") is often just
# above that: toolbox_lenet's 10 x 700 x 250, one sample per call, cost its batch 3x the CPU time in
# the blocked GEMM, handing off to a second thread for microseconds of work.  So those products, up
# to SPLIT_GEMM multiply-adds, run in blocks of at most SMALL_GEMM, split along the longer of their
# outer axes at bounds set by the sample's shape: the same calls for a sample in every batch, each
# on the calling thread (on lenet5's and toolbox_lenet's shapes they gave the same bits with one BLAS
# thread and with two, where toolbox_lenet's whole products did not), and the kernels' threads
# (``each_sample``) keep both cores busy.  Larger products stay whole: there BLAS's
# own threads pay off, and they are a sample's only parallelism at batch 1.

#: Multiply-adds per BLAS call in the small-image lowerings (OpenBLAS's small-matrix kernels).
SMALL_GEMM = 10 ** 6
#: Products of more multiply-adds than this are not split.
SPLIT_GEMM = 16 * 10 ** 6


def _matmul_small(a, b, out):
    """``out[...] = a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N): up to :data:`SPLIT_GEMM`
    multiply-adds in blocks of rows of ``a`` or columns of ``b`` of at most :data:`SMALL_GEMM` each
    (at least 8 rows or columns), larger products in one call."""
    m, k = a.shape
    n = b.shape[1]
    blocks = -(-m * k * n // SMALL_GEMM)
    if blocks <= 1 or m * k * n > SPLIT_GEMM:
        return np.matmul(a, b, out=out)
    if n >= m:
        step = max(8, -(-n // blocks))
        for j in range(0, n, step):
            np.matmul(a, b[:, j:j + step], out=out[:, j:j + step])
    else:
        step = max(8, -(-m // blocks))
        for i in range(0, m, step):
            np.matmul(a[i:i + step], b, out=out[i:i + step])
    return out


# ----- windows that tile the input (a patch embedding) -----
#
# With stride = kernel, no padding and no dilation, window (p, q) is the input's block of rows
# p*kh .. p*kh + kh - 1 and columns q*kw .. q*kw + kw - 1, and no two windows share a value: the
# column matrix of ``"strided"``, cols[(c, i, j), (p, q)] = x[c, p*kh + i, q*kw + j], is the input
# (cropped to whole windows) read in another order: one reshape and transpose copy for the whole
# batch instead of a jitted loop per pixel.  Its adjoint, col2im, adds each column entry onto a
# zero: a copy back, written as ``+ 0`` (a -0 becomes +0 as there).  The products are ``"strided"``'s,
# one per sample of the sample's shape, so the two lowerings give the same bits.


def _products(a, b, out):
    """``out[i] = a @ b[i]`` for every sample i (``b`` (M, K, T) contiguous), each with the calls
    :func:`_matmul_small` makes for one sample: one product each, made by NumPy's loop over the
    samples (one Python call), unless :func:`_matmul_small` splits it."""
    m, k = a.shape
    size = m * k * b.shape[2]
    if size <= SMALL_GEMM or size > SPLIT_GEMM:
        return np.matmul(a, b, out=out)
    for i in range(len(b)):
        _matmul_small(a, b[i], out[i])
    return out


def _tiles(a, kh, kw, oh, ow):
    """View (N, C, oh, kh, ow, kw) of the whole windows of ``a`` (N, C, H, W): window (p, q) is ``[:, :, p, :, q]``."""
    n, c = a.shape[:2]
    return a[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)  # (splitting axes: always a view)


def _conv_patches(x, w):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow, k = h // kh, wd // kw, c * kh * kw
    y = np.empty((n, o, oh, ow), np.result_type(x, w))

    def run_samples(lo, hi):
        cols = scratch("patches", (hi - lo, c, kh, kw, oh, ow), x.dtype)
        np.copyto(cols, _tiles(x[lo:hi], kh, kw, oh, ow).transpose(0, 1, 3, 5, 2, 4))
        _products(w.reshape(o, k), cols.reshape(hi - lo, k, oh * ow), y[lo:hi].reshape(hi - lo, o, oh * ow))
    _each_sample(n, run_samples, o * k * oh * ow, x.itemsize * (k + o) * oh * ow)
    return y


def _conv_patches_grad_input(gy, w, h, wd):
    n, o, oh, ow = gy.shape
    _, c, kh, kw = w.shape
    k = c * kh * kw
    dtype = np.result_type(gy, w)
    whole = (h, wd) == (oh * kh, ow * kw)
    gx = np.empty((n, c, h, wd), dtype) if whole else np.zeros((n, c, h, wd), dtype)  # (rows and columns
    # of no window get no gradient)

    def run_samples(lo, hi):
        g = np.ascontiguousarray(gy[lo:hi]).reshape(hi - lo, o, oh * ow)
        gcols = scratch("patches grad", (hi - lo, k, oh * ow), dtype)
        _products(w.reshape(o, k).T, g, gcols)
        np.add(gcols.reshape(hi - lo, c, kh, kw, oh, ow).transpose(0, 1, 4, 2, 5, 3), dtype.type(0),
               out=_tiles(gx[lo:hi], kh, kw, oh, ow))
    _each_sample(n, run_samples, o * k * oh * ow, gx.itemsize * (k + o) * oh * ow)
    return gx


#: Multiply-adds below which a batch's products run on the calling thread alone (see :func:`_each_sample`).
THREAD_WORK = 1 << 21


def _each_sample(n, run, sample_work, sample_bytes):
    """``each_sample(n, run, least, sample_bytes)`` with ``least`` such that a thread gets at least
    :data:`THREAD_WORK` multiply-adds (samples of ``sample_work`` each): handing a run of samples to
    another thread costs about as much (measured: a shipped ViT's patch embedding, 50 000 a sample, at
    batch 16 took 1.5 times as long on two threads as on one).  A batch that would run on the calling
    thread in one block runs without ``each_sample`` (a few microseconds of a small explanation)."""
    least = max(1, THREAD_WORK // max(1, sample_work))
    if n < 2 * least and n * sample_bytes <= BLOCK_BYTES:
        run(0, n)
    else:
        each_sample(n, run, least=least, sample_bytes=sample_bytes)


# ----- im2col by jitted loops (other strides) -----

def _cols_strided(x, kh, kw, sh, sw, padding, dh, dw, oh, ow, name):
    n, c = x.shape[:2]
    cols = scratch(name, (c * kh * kw, n * oh * ow), x.dtype)
    return _im2col(np.ascontiguousarray(x), kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow, cols)


def _conv_strided(x, w, sh, sw, padding, dh, dw, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow, _, _ = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    y = np.empty((n, o, oh, ow), np.result_type(x, w))

    def run_samples(lo, hi):
        out = scratch("strided out", (o, oh * ow), y.dtype)
        for b in range(lo, hi):  # one sample per GEMM (batch invariance)
            cols = _cols_strided(x[b:b + 1], kh, kw, sh, sw, padding, dh, dw, oh, ow, "cols")
            if groups == 1:
                _matmul_small(w.reshape(o, cg * kh * kw), cols, out)
            else:
                _matmul_groups(w.reshape(o, cg * kh * kw), cols, groups, o // groups, cg * kh * kw, out=out)
            y[b] = out.reshape(o, oh, ow)
    each_sample(n, run_samples)
    return y


def _conv_strided_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw, groups):
    n, o, oh, ow = gy.shape
    _, cg, kh, kw = w.shape
    c, k = cg * groups, cg * kh * kw
    gx = np.empty((n, c, h, wd), np.result_type(gy, w))

    def run_samples(lo, hi):
        gcols = scratch("gcols", (k * groups, oh * ow), gx.dtype)
        for b in range(lo, hi):  # one sample per GEMM (batch invariance)
            g2 = np.ascontiguousarray(gy[b]).reshape(o, oh * ow)
            if groups == 1:
                _matmul_small(w.reshape(o, k).T, g2, gcols)
            else:
                _matmul_groups(w.reshape(o, k), g2, groups, o // groups, k, transpose_a=True, out=gcols)
            gx[b] = _col2im(gcols, 1, c, h, wd, kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow)[0]
    each_sample(n, run_samples)
    return gx


# ----- row lowering (small images, few channels) -----
#
# Lowering only the kernel's rows: ``rows[(n, p), (i, c, s)] = x[n, c, p*sh + i*dh, s]`` (padded), a
# copy of kh rows per output row instead of im2col's kh*kw taps, and the kernel's columns become a
# banded matrix ``T[(i, c, s), (o, q)] = w[o, c, i, j]`` where ``s = q*sw + j*dw`` (zero elsewhere).
# Then ``y = rows @ T`` is one GEMM per sample: it multiplies ~used/kw more zeros than im2col
# multiplies (adding exact zeros changes no sum) but its operands are small and its shape square
# enough to run near the BLAS peak, while im2col on a small image is memory-bound and its GEMM, with
# few output channels, far below it.

def _banded(w, used, ow, sw, dw):
    """``T[(i, c, s), (o, q)] = w[o, c, i, j]`` for ``s = q*sw + j*dw`` < used, zero elsewhere."""
    o, c, kh, kw = w.shape
    t = np.zeros((kh, c, used, o, ow), w.dtype)
    q, j = np.arange(ow)[:, None], np.arange(kw)[None, :]
    t[:, :, q * sw + j * dw, :, q] = w.transpose(3, 2, 1, 0)[None]  # (ow, kw, kh, c, o)
    return t.reshape(kh * c * used, o * ow)


_BANDED = {}  # (id of a read-only weight, geometry) -> its banded matrix; dropped with the weight


def _banded_of(w, used, ow, sw, dw, transposed=False):
    """:func:`_banded` (or its transpose, contiguous: OpenBLAS is slower on the transposed view),
    kept while ``w`` lives when ``w`` is read-only (a frozen network's weights and the modified
    weights its rules keep): their values cannot change, so neither can the matrix."""
    def make():
        t = _banded(w, used, ow, sw, dw)
        return np.ascontiguousarray(t.T) if transposed else t
    if not immutable(w):
        return make()
    key = (id(w), w.shape, w.dtype.str, used, ow, sw, dw, transposed)
    t = _BANDED.get(key)
    if t is None:
        t = make()
        if t.nbytes <= 16 << 20:
            t.flags.writeable = False
            _BANDED[key] = t
            weakref.finalize(w, _BANDED.pop, key, None)
    return t


def _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw):
    oh = output_size(h, kh, sh, padding[0], padding[1], dh)
    ow = output_size(wd, kw, sw, padding[2], padding[3], dw)
    return oh, ow, (ow - 1) * sw + (kw - 1) * dw + 1, (oh - 1) * sh + 1  # columns used, row span of a tap


def _conv_rows(x, w, sh, sw, padding, dh, dw):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow, used, _ = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    band = _banded_of(w, used, ow, sw, dw)
    y = np.empty((n, o, oh, ow), np.result_type(x, w))

    def run_samples(lo, hi):
        m = hi - lo
        xp = np.zeros((m, h + padding[0] + padding[1], c, max(used, padding[2] + wd)), x.dtype)
        xp[:, padding[0]:padding[0] + h, :, padding[2]:padding[2] + wd] = x[lo:hi].transpose(0, 2, 1, 3)
        # rows[b, p, i] = xp[b, p*sh + i*dh, :, :used], one copy from a strided view of xp (made by
        # np.ndarray on xp's buffer, cheaper than as_strided or kh slice copies)
        s0, s1, s2, s3 = xp.strides
        rows = scratch("rows", (m, oh, kh, c, used), x.dtype)
        np.copyto(rows, np.ndarray(rows.shape, xp.dtype, xp, 0, (s0, sh * s1, dh * s1, s2, s3)))
        out = scratch("rows out", (m, oh, o * ow), y.dtype)  # a kept buffer: fresh pages cost
        for b in range(m):  # one sample per GEMM (batch invariance)
            _matmul_small(rows[b].reshape(oh, -1), band, out[b])
        y[lo:hi] = out.reshape(m, oh, o, ow).transpose(0, 2, 1, 3)
    each_sample(n, run_samples, sample_bytes=x.itemsize * ((h + padding[0] + padding[1]) * c * max(used, padding[2] + wd)
                                                       + oh * kh * c * used + 2 * o * oh * ow))
    return y


def _conv_rows_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw):
    n, o, oh, ow = gy.shape
    _, c, kh, kw = w.shape
    _, _, used, span = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    band_t = _banded_of(w, used, ow, sw, dw, transposed=True)
    gx = np.empty((n, c, h, wd), np.result_type(gy, w))

    def run_samples(lo, hi):
        m = hi - lo
        g = scratch("grad", (m, oh, o, ow), gy.dtype)
        g[...] = gy[lo:hi].transpose(0, 2, 1, 3)
        grows = scratch("rows grad", (m, oh, band_t.shape[1]), gx.dtype)
        for b in range(m):  # one sample per GEMM (batch invariance)
            _matmul_small(g[b].reshape(oh, o * ow), band_t, grows[b])
        grows = grows.reshape(m, oh, kh, c, used)
        gxp = np.zeros((m, h + padding[0] + padding[1], c, max(used, padding[2] + wd)), gx.dtype)
        for i in range(kh):
            gxp[:, i * dh:i * dh + span:sh, :, :used] += grows[:, :, i]
        gx[lo:hi] = gxp[:, padding[0]:padding[0] + h, :, padding[2]:padding[2] + wd].transpose(0, 2, 1, 3)
    each_sample(n, run_samples, sample_bytes=gx.itemsize * (2 * o * oh * ow + oh * kh * c * used
                                                         + (h + padding[0] + padding[1]) * c * max(used, padding[2] + wd)))
    return gx


# ----- channels last (small images, long window rows) -----
#
# Channels last, a window row (kw taps x C channels) is one contiguous run of the input, so the
# (positions x window) matrix is cheap to write, and y = windows @ W (O columns) is the product
# OpenBLAS runs best with few output channels (the other way round, W @ columns, is slower).
# Written and multiplied in blocks of one sample's rows that stay in cache.

#: Bytes of window rows written and multiplied at a time by the channels-last lowering.
WINDOW_BYTES = 1 << 20


def _conv_channels_last(x, w, sh, sw, padding, dh, dw):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    pt, pb, pl, pr = padding
    oh, ow, _, _ = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    k = kh * kw * c
    matrix = w.transpose(2, 3, 1, 0).reshape(k, o)
    y = np.empty((n, o, oh, ow), np.result_type(x, w))
    rows = max(1, WINDOW_BYTES // (ow * k * x.itemsize))  # output rows per block, one sample's (never more:
    # a block of several samples would give a sample's rows a shape set by the batch)

    def run_samples(lo, hi):
        m = hi - lo
        xp = np.zeros((m, h + pt + pb, wd + pl + pr, c), x.dtype)
        xp[:, pt:pt + h, pl:pl + wd] = x[lo:hi].transpose(0, 2, 3, 1)
        s0, s1, s2, s3 = xp.strides
        windows = np.lib.stride_tricks.as_strided(xp, (m, oh, ow, kh, kw, c),
                                                  (s0, sh * s1, sw * s2, dh * s1, dw * s2, s3), writeable=False)
        out = np.empty((m, oh, ow, o), y.dtype)
        for b in range(m):
            for p in range(0, oh, rows):
                _matmul_small(windows[b, p:p + rows].reshape(-1, k), matrix, out[b, p:p + rows].reshape(-1, o))
        y[lo:hi] = out.transpose(0, 3, 1, 2)
    each_sample(n, run_samples, sample_bytes=x.itemsize * ((h + pt + pb) * (wd + pl + pr) * c + 2 * o * oh * ow))
    return y


# ----- direct convolution (one input channel) -----
#
# A first layer's convolution has one input channel: as a GEMM it has K = kh*kw (im2col, far below
# the BLAS peak) or multiplies kw times too many zeros (row lowering).  Directly, each output of the
# wide layout is a sum of kh*kw taps at fixed offsets of the flat padded plane.  With the window's
# size a compile-time constant (one jitted kernel per size) LLVM unrolls the taps, keeps the sum in
# a register and vectorises over outputs, which needs no reassociation: every output adds its taps
# in the same order in every lane.  Indices are unsigned, so no negative-index wraparound turns the
# loads into gathers.

_DIRECT = {}


def _direct_kernel(kh, kw):
    """The jitted direct kernel for kh x kw windows (compiled once per size, cached on disk by numba
    with the size as part of its key)."""
    fn = _DIRECT.get((kh, kw))
    if fn is not None:
        return fn

    def direct(xf, w, dh, dw, wp, acc, y):
        """``y[b, o, p, q] = sum_c sum_(i, j) w[o, c, i, j] * xf[b, c, (p + i*dh)*wp + q + j*dw]``: each
        (b, o) plane computed at the padded width wp into ``acc`` (one row of oh*wp, kept in cache),
        then its first ow columns copied out."""
        n, c, _ = xf.shape
        o = w.shape[0]
        oh, ow = y.shape[2], y.shape[3]
        run = oh * wp
        zero = y.dtype.type(0)
        for b in range(n):
            for oc in range(o):
                for ci in range(c):
                    xc, wk = xf[b, ci], w[oc, ci]
                    for k in range(run):
                        a = acc[k] if ci > 0 else zero
                        uk = np.uint64(k)
                        for i in range(kh):
                            for j in range(kw):
                                a += wk[i, j] * xc[np.uint64(i * dh * wp + j * dw) + uk]
                        acc[k] = a
                out = y[b, oc]
                for p in range(oh):
                    row = out[p]
                    for q in range(ow):
                        row[q] = acc[p * wp + q]
        return y

    return _DIRECT.setdefault((kh, kw), jit(direct))


def _conv_direct(x, w, padding, dh, dw):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow, hp, wp = _wide_shape(h, wd, kh, kw, padding, dh, dw)
    xp = np.zeros((n, c, hp + 1, wp), x.dtype)  # one more row: the last outputs' taps read into it
    xp[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + wd] = x
    xf, wc = xp.reshape(n, c, -1), np.ascontiguousarray(w)
    y = np.empty((n, o, oh, ow), x.dtype)
    kernel = _direct_kernel(kh, kw)
    each_sample(n, lambda lo, hi: kernel(xf[lo:hi], wc, dh, dw, wp, np.empty(oh * wp, x.dtype), y[lo:hi]))
    return y


def _conv_direct_grad_input(gy, w, h, wd, padding, dh, dw):
    """The adjoint as a direct convolution: the input gradient at (r, s) is the correlation of gy,
    padded by the kernel's extent, with the flipped kernel (input and output channels swapped).  Only
    the input's own rows and columns are computed: gy is placed where they read it."""
    n, o, oh, ow = gy.shape
    _, c, kh, kw = w.shape
    a, b = (kh - 1) * dh, (kw - 1) * dw
    width = wd + b  # wide layout: the input's columns and the b more that its last ones read
    r0, c0 = a - padding[0], b - padding[2]
    rows = slice(max(0, -r0), min(oh, h + a - r0))
    cols = slice(max(0, -c0), min(ow, width - c0))
    flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    gx = np.empty((n, c, h, wd), gy.dtype)
    kernel = _direct_kernel(kh, kw)

    def run_samples(lo, hi):
        # gp[r, s] = gy[r + pt - a, s + pl - b]; one more row for the last outputs' taps
        gp = scratch("direct grad in", (hi - lo, o, h + a + 1, width), gy.dtype)  # kept: fresh pages cost
        gp[...] = 0
        if rows.start < rows.stop and cols.start < cols.stop:
            gp[:, :, r0 + rows.start:r0 + rows.stop, c0 + cols.start:c0 + cols.stop] = gy[lo:hi, :, rows, cols]
        kernel(gp.reshape(hi - lo, o, -1), flipped, dh, dw, width, np.empty(h * width, gy.dtype), gx[lo:hi])
    each_sample(n, run_samples, sample_bytes=gy.itemsize * (o * (h + a + 1) * width + c * h * wd))
    return gx


def conv2d_grad_weight(x, gy, kh, kw, sh, sw, padding, dh, dw, groups):
    n, c, h, wd = x.shape
    _, o, oh, ow = gy.shape
    cg = c // groups
    k = cg * kh * kw
    if sh == sw == 1:
        width = _wide_shape(h, wd, kh, kw, padding, dh, dw)[3]
        cols = _cols_wide(x, kh, kw, padding, dh, dw, "cols")
        g2 = _grad_wide(gy, width, "grad")
    else:
        cols = _cols_strided(x, kh, kw, sh, sw, padding, dh, dw, oh, ow, "cols")
        g2 = np.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(o, n * oh * ow)
    gw = np.empty((o, k), dtype=np.result_type(x, gy))
    for wo, xk in _blocks(groups, o // groups, k):
        np.matmul(g2[wo], cols[xk].T, out=gw[wo])
    return gw.reshape(o, cg, kh, kw)


@jitted
def _conv_add_pixels(y, pixels, delta, wt, sh, sw, pt, pl, dh, dw):
    """``y`` channels last and ``wt`` (kh, kw, C, O): each reached output adds a contiguous run of
    O values (NCHW would scatter them O planes apart)."""
    kh, kw, c, o = wt.shape
    oh, ow = y.shape[1], y.shape[2]
    rows, cols = np.empty(kh, np.int64), np.empty(kw, np.int64)
    for k in range(pixels.shape[0]):
        b, r, s = pixels[k, 0], pixels[k, 1], pixels[k, 2]
        for i in range(kh):
            t = r + pt - i * dh
            rows[i] = t // sh if t >= 0 and t % sh == 0 and t // sh < oh else -1
        for j in range(kw):
            u = s + pl - j * dw
            cols[j] = u // sw if u >= 0 and u % sw == 0 and u // sw < ow else -1
        for i in range(kh):
            if rows[i] < 0:
                continue
            for j in range(kw):
                if cols[j] < 0:
                    continue
                out = y[b, rows[i], cols[j]]
                for ci in range(c):
                    d, taps = delta[k, ci], wt[i, j, ci]
                    for oc in range(o):
                        out[oc] += taps[oc] * d
    return y


def conv2d_add_pixels(y, pixels, delta, w, sh, sw, padding, dh, dw):
    return _conv_add_pixels(y, np.ascontiguousarray(pixels), np.ascontiguousarray(delta),
                            np.ascontiguousarray(w.transpose(2, 3, 1, 0)), sh, sw, padding[0], padding[2], dh, dw)

