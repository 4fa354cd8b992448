"""numba backend: im2col / col2im and pooling loops jitted, the multiply-adds in BLAS.

Convolutions are lowered to one GEMM per sample: ``cols[k, p]`` with ``k = (c, i, j)`` (the
weight's own order) and ``p = (oh, ow)``, so ``y = W.reshape(O, K) @ cols`` is (O, P); the input
gradient is ``col2im(W^T @ g)``.  One sample per GEMM, and every lowering chosen from one sample's
shape, never the batch's: BLAS's results depend on the shapes it is called with (measured: see
:mod:`.reference`), so a sample's numbers are then the same bit for bit in any batch.  The cost is
one BLAS call per sample and layer: on small images at large batches many small GEMMs, each paying
OpenBLAS's hand-off to its second thread, which on a shared machine can wait for a time slice
(measured while the machine ran at load ~15 on 2 cores: toolbox_lenet's forward pass at batch 256
0.24 s before and 0.42 s after with one BLAS thread, but seconds with two).  The jitted loops walk
(sample, channel) planes serially: on 2 cores, numba's worker threads (``prange``) competed with
OpenBLAS's spinning threads, and measured serial loops won (lenet5 batch 64 explain 29 ms serial vs
51 ms parallel; vgg16 3.1 s vs 3.5 s).  BLAS keeps both cores busy in the GEMMs.  No ``fastmath``:
it would reorder sums, and sums are what conservation measures.  Same signatures as
:mod:`.reference`.

numba itself is imported, and the jitted functions made, on the first call of one of them:
importing numba costs a fresh process 0.2-0.3 s, and numba's first compile or cache load another
~0.5 s (0.4 s of it importing scipy.linalg, numba's check for BLAS).  Small non-overlapping max
pools (the only jitted work in explaining one lenet5 input) run the NumPy reference instead, which
gives the same numbers bit for bit, so a small explanation never pays that.
"""

import functools
import math
import threading
import weakref

import numpy as np

from . import reference as _reference
from .reference import output_size

_JIT = dict(nopython=True, cache=True, nogil=True, error_model="numpy")
_PLAIN = {}  # name -> the Python function, jitted (all together) on the first call of any
_JIT_LOCK = threading.Lock()
_JITTED = False


def _jitted(fn):
    """Register ``fn`` as a kernel to be compiled by numba when a kernel is first called."""
    _PLAIN[fn.__name__] = fn

    @functools.wraps(fn)
    def first_call(*args):
        jit_all()
        return globals()[fn.__name__](*args)
    return first_call


def jit_all():
    """Import numba and replace every registered kernel by its jitted version (once; thread-safe).
    All at once, so that kernels calling kernels see jitted functions when numba compiles them."""
    global _JITTED
    if _JITTED:
        return
    import numba
    with _JIT_LOCK:
        if not _JITTED:
            for name, fn in _PLAIN.items():
                globals()[name] = numba.jit(**_JIT)(fn)
            _JITTED = True


@_jitted
def _valid(size, out, stride, pad, offset):
    """Range [q0, q1) of output positions q whose tap q*stride - pad + offset lies in [0, size)."""
    q0 = max(0, -((offset - pad) // stride))  # ceil((pad - offset) / stride)
    q1 = min(out, (size - 1 + pad - offset) // stride + 1)
    return q0, max(q0, q1)


@_jitted
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


@_jitted
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


# ----- scratch buffers: large temporaries reused, so their pages are not faulted in on every call -----
# One set per thread: threads explaining at the same time never share a buffer.  A kernel's
# result never aliases a scratch buffer (outputs are fresh arrays), so reuse across calls is safe.

_LOCAL = threading.local()


def _scratch(name, shape, dtype):
    size = math.prod(shape)
    try:
        workspace = _LOCAL.workspace
    except AttributeError:
        workspace = _LOCAL.workspace = {}
    key = (name, dtype)
    buf = workspace.get(key)
    if buf is None or buf.size < size:
        buf = workspace[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def release_workspace():
    """Free this thread's scratch buffers (they are reallocated on its next convolution)."""
    _LOCAL.__dict__.pop("workspace", None)  # the calling thread's own attribute


# ----- convolution geometry -----
#
# Stride 1 ("wide" layout): pad the input, then compute every output row at the padded width wp.
# Tap (i, j) of output position (p, q) reads flat index (p + i*dh)*wp + q + j*dw of the padded
# plane, so for each tap the whole plane is one contiguous run of oh*wp values: im2col is kh*kw
# strided copies and col2im kh*kw strided adds, no per-pixel loop.  The wp - ow extra columns per
# row are computed and dropped (gradients put zeros there).  One extra zero row keeps the last
# run inside the array.  Other strides use the jitted per-pixel loops above.

def _cols_wide(x, kh, kw, padding, dh, dw, name):
    n, c, h, w = x.shape
    oh, ow, hp, wp = _wide_shape(h, w, kh, kw, padding, dh, dw)
    xp = np.zeros((n, c, hp + 1, wp), x.dtype)
    xp[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + w] = x
    xf, run = xp.reshape(n, c, -1), oh * wp
    cols = _scratch(name, (c, kh, kw, n, run), x.dtype)
    for i in range(kh):
        for j in range(kw):
            off = i * dh * wp + j * dw
            cols[:, i, j] = xf[:, :, off:off + run].transpose(1, 0, 2)
    return cols.reshape(c * kh * kw, n * run)


def _grad_wide(gy, wp, name):
    """(N, O, oh, ow) -> (O, N*oh*wp) with zeros in the dropped columns."""
    n, o, oh, ow = gy.shape
    g = _scratch(name, (o, n, oh, wp), gy.dtype)
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
    xp = np.zeros((n, c, hp + 1, wp), x.dtype)
    xp[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + wd] = x
    xf, k = xp.reshape(n, c, -1), cg * kh * kw
    y = np.empty((n, o, oh, ow), np.result_type(x, w))
    for p0, p1 in _row_chunks(oh, c * kh * kw * wp * x.itemsize):
        run = (p1 - p0) * wp
        cols = _scratch("cols", (c, kh, kw, run), x.dtype)
        out = _scratch("wide out", (o, run), y.dtype)
        for b in range(n):
            for i in range(kh):
                for j in range(kw):
                    off = (p0 + i * dh) * wp + j * dw
                    cols[:, i, j] = xf[b, :, off:off + run]
            _matmul_groups(w.reshape(o, k), cols.reshape(c * kh * kw, run), groups, o // groups, k, out=out)
            y[b, :, p0:p1] = out.reshape(o, p1 - p0, wp)[:, :, :ow]
    return y


def _conv_wide_grad_input(gy, w, h, wd, padding, dh, dw, groups):
    """Adjoint of :func:`_conv_wide`, one block of output rows at a time (their columns add up)."""
    n, o, oh, ow = gy.shape
    _, cg, kh, kw = w.shape
    c, k = cg * groups, cg * kh * kw
    _, _, hp, wp = _wide_shape(h, wd, kh, kw, padding, dh, dw)
    gx = np.zeros((n, c, (hp + 1) * wp), np.result_type(gy, w))
    for p0, p1 in _row_chunks(oh, c * kh * kw * wp * gx.itemsize):
        run = (p1 - p0) * wp
        g = _scratch("grad", (o, p1 - p0, wp), gy.dtype)
        g[:, :, ow:] = 0
        gcols = _scratch("gcols", (k * groups, run), gx.dtype)
        gc = gcols.reshape(c, kh, kw, run)
        for b in range(n):
            g[:, :, :ow] = gy[b, :, p0:p1]
            _matmul_groups(w.reshape(o, k), g.reshape(o, run), groups, o // groups, k, transpose_a=True, out=gcols)
            for i in range(kh):
                for j in range(kw):
                    off = (p0 + i * dh) * wp + j * dw
                    gx[b, :, off:off + run] += gc[:, i, j]
    gx = gx.reshape(n, c, hp + 1, wp)
    return np.ascontiguousarray(gx[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + wd])


def _wide_shape(h, w, kh, kw, padding, dh, dw):
    hp, wp = h + padding[0] + padding[1], w + padding[2] + padding[3]
    return hp - dh * (kh - 1), wp - dw * (kw - 1), hp, wp


def _cols_strided(x, kh, kw, sh, sw, padding, dh, dw, oh, ow, name):
    n, c = x.shape[:2]
    cols = _scratch(name, (c * kh * kw, n * oh * ow), x.dtype)
    return _im2col(np.ascontiguousarray(x), kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow, cols)


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


# ----- row lowering (small images, few channels) -----
#
# Lowering only the kernel's rows: ``rows[(n, p), (i, c, s)] = x[n, c, p*sh + i*dh, s]`` (padded), a
# copy of kh rows per output row instead of im2col's kh*kw taps, and the kernel's columns become a
# banded matrix ``T[(i, c, s), (o, q)] = w[o, c, i, j]`` where ``s = q*sw + j*dw`` (zero elsewhere).
# Then ``y = rows @ T`` is one large GEMM: it multiplies ~used/kw more zeros than im2col multiplies
# (adding exact zeros changes no sum) but its operands are small and its shape is square enough to run
# near the BLAS peak, while im2col on a small image is memory-bound and its GEMM, with few output
# channels, far below it (lenet5 float32 batch 256: conv1 8 -> 4.5 ms, conv2 7 -> 4 ms).
# :func:`_prefer_rows` picks the lowering from the shapes alone (never from timings: the same
# shapes always take the same path, so results are reproducible bit for bit).

def _prefer_rows(c, o, kh, kw, oh, ow, width, used, groups, n=1):
    """True when the row lowering is estimated cheaper than im2col (ns, constants fitted on this
    project's benchmark shapes; GEMM ~85 multiply-adds per ns, less with few output channels).
    Called with one sample's shape (n = 1): the choice must never depend on the batch."""
    if groups != 1:
        return False
    im2col = 0.45 * c * kh * kw * n * oh * width + o * c * kh * kw * n * oh * width / (85 * min(1.0, o / 64))
    rows = 1.0 * n * oh * kh * c * used + n * oh * kh * c * used * o * ow / 85 + 0.85 * n * o * oh * ow
    return rows < im2col


def _banded(w, used, ow, sw, dw):
    """``T[(i, c, s), (o, q)] = w[o, c, i, j]`` for ``s = q*sw + j*dw`` < used, zero elsewhere."""
    o, c, kh, kw = w.shape
    t = np.zeros((kh, c, used, o, ow), w.dtype)
    q, j = np.arange(ow)[:, None], np.arange(kw)[None, :]
    t[:, :, q * sw + j * dw, :, q] = w.transpose(3, 2, 1, 0)[None]  # (ow, kw, kh, c, o)
    return t.reshape(kh * c * used, o * ow)


_BANDED = {}  # (id of a read-only weight, geometry) -> its banded matrix; dropped with the weight


def _banded_of(w, used, ow, sw, dw, transposed=False):
    """:func:`_banded` (or its transpose, contiguous: the input gradient's GEMM on a transposed view
    took 25-44 us instead of 16 on batch-1 sizes), kept while ``w`` lives when ``w`` is read-only (a
    frozen network's weights and the modified weights its rules keep): their values cannot change,
    so neither can the matrix."""
    def make():
        t = _banded(w, used, ow, sw, dw)
        return np.ascontiguousarray(t.T) if transposed else t
    if not _immutable(w):
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


def _immutable(a):
    """True when neither ``a`` nor any array it views can be written."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None


def _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw):
    oh = output_size(h, kh, sh, padding[0], padding[1], dh)
    ow = output_size(wd, kw, sw, padding[2], padding[3], dw)
    return oh, ow, (ow - 1) * sw + (kw - 1) * dw + 1, (oh - 1) * sh + 1  # columns used, row span of a tap


def _conv_rows(x, w, sh, sw, padding, dh, dw):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow, used, _ = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    xp = np.zeros((n, h + padding[0] + padding[1], c, max(used, padding[2] + wd)), x.dtype)
    xp[:, padding[0]:padding[0] + h, :, padding[2]:padding[2] + wd] = x.transpose(0, 2, 1, 3)
    # rows[b, p, i] = xp[b, p*sh + i*dh, :, :used], one copy from a strided view of xp (made by
    # np.ndarray on xp's buffer: ~1 us, where as_strided takes ~6 and kh slice copies ~9 at batch 1)
    s0, s1, s2, s3 = xp.strides
    rows = _scratch("rows", (n, oh, kh, c, used), x.dtype)
    np.copyto(rows, np.ndarray(rows.shape, xp.dtype, xp, 0, (s0, sh * s1, dh * s1, s2, s3)))
    band = _banded_of(w, used, ow, sw, dw)  # the product into a kept buffer: fresh pages cost ~40 % here
    y = _scratch("rows out", (n, oh, o * ow), np.result_type(x, w))
    for b in range(n):  # one sample per GEMM (batch invariance)
        np.matmul(rows[b].reshape(oh, -1), band, out=y[b])
    return y.reshape(n, oh, o, ow).transpose(0, 2, 1, 3).copy()  # a copy even where that is contiguous (o or oh 1)


def _conv_rows_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw):
    n, o, oh, ow = gy.shape
    _, c, kh, kw = w.shape
    _, _, used, span = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    g = _scratch("grad", (n, oh, o, ow), gy.dtype)
    g[...] = gy.transpose(0, 2, 1, 3)
    band_t = _banded_of(w, used, ow, sw, dw, transposed=True)
    grows = _scratch("rows grad", (n, oh, band_t.shape[1]), g.dtype)
    for b in range(n):  # one sample per GEMM (batch invariance)
        np.matmul(g[b].reshape(oh, o * ow), band_t, out=grows[b])
    grows = grows.reshape(n, oh, kh, c, used)
    gxp = np.zeros((n, h + padding[0] + padding[1], c, max(used, padding[2] + wd)), grows.dtype)
    for i in range(kh):
        gxp[:, i * dh:i * dh + span:sh, :, :used] += grows[:, :, i]
    return np.ascontiguousarray(gxp[:, padding[0]:padding[0] + h, :, padding[2]:padding[2] + wd].transpose(0, 2, 1, 3))


# Channels last, a window row (kw taps x C channels) is one contiguous run of the input, so the
# (positions x window) matrix is cheap to write, and y = windows @ W (O columns) is the product
# OpenBLAS runs best with few output channels (the other way round, W @ columns, is ~1.6x slower).
# Written and multiplied in blocks that stay in cache (the shipped CNN's 16 -> 32 5 x 5 convolution
# on 14 x 14, batch 256 float32: 13.3 ms against the row lowering's 17.9; short runs, C * kw < 64,
# make it slower than the row lowering, so it replaces that lowering only for long ones).

#: Bytes of window rows written and multiplied at a time by the channels-last lowering (1 MB:
#: the fastest of 1, 4 and 16 MB on the CNN's convolution above).
WINDOW_BYTES = 1 << 20


def _prefer_channels_last(c, kw):
    return c * kw >= 64


def _conv_channels_last(x, w, sh, sw, padding, dh, dw):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    pt, pb, pl, pr = padding
    oh, ow, _, _ = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    xp = np.zeros((n, h + pt + pb, wd + pl + pr, c), x.dtype)
    xp[:, pt:pt + h, pl:pl + wd] = x.transpose(0, 2, 3, 1)
    s0, s1, s2, s3 = xp.strides
    windows = np.lib.stride_tricks.as_strided(xp, (n, oh, ow, kh, kw, c), (s0, sh * s1, sw * s2, dh * s1, dw * s2, s3),
                                              writeable=False)
    k = kh * kw * c
    matrix = w.transpose(2, 3, 1, 0).reshape(k, o)
    y = np.empty((n, oh, ow, o), np.result_type(x, w))
    rows = max(1, WINDOW_BYTES // (ow * k * x.itemsize))  # output rows per block, one sample's (never more:
    for b in range(n):  # a block of several samples would give a sample's rows a shape set by the batch)
        for p in range(0, oh, rows):
            np.matmul(windows[b, p:p + rows].reshape(-1, k), matrix, out=y[b, p:p + rows].reshape(-1, o))
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


# ----- direct convolution (one input channel) -----
#
# A first layer's convolution has one input channel: as a GEMM it has K = kh*kw (im2col, far below
# the BLAS peak) or multiplies kw times too many zeros (row lowering).  Directly, each output of the
# wide layout (see _conv_wide) is a sum of kh*kw taps at fixed offsets of the flat padded plane.  With
# the window's size a compile-time constant (one jitted kernel per size) LLVM unrolls the taps, keeps
# the sum in a register and vectorises over outputs, which needs no reassociation: every output adds
# its taps in the same order in every lane.  Indices are unsigned, so no negative-index wraparound
# turns the loads into gathers.  toolbox_lenet's 1 -> 10 and lenet5's 1 -> 6 5 x 5 layers at batch 64
# float32: 0.45-0.7 ms against the row lowering's 0.9-1.2 ms.

_DIRECT = {}


def _direct_kernel(kh, kw):
    """The jitted direct kernel for kh x kw windows (compiled once per size, cached on disk by numba
    with the size as part of its key)."""
    fn = _DIRECT.get((kh, kw))
    if fn is not None:
        return fn
    jit_all()
    import numba

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

    with _JIT_LOCK:
        fn = _DIRECT.setdefault((kh, kw), numba.jit(**_JIT)(direct))
    return fn


#: Convolutions with less than this (output channels x one sample's input plane) keep the GEMM
#: lowerings: a small explanation never imports numba (see the module's docstring; lenet5's first
#: layer, 6 x 28 x 28, and toolbox_lenet's, 10 x 32 x 32, stay below; the shipped CNNs', 16 x 28 x
#: 28, runs direct), and there the direct kernel saves microseconds.  Per sample, never per batch:
#: the direct kernel's sums are not the GEMM's, so the choice must not depend on the batch (it did:
#: lenet5's first layer ran direct from batch 7 on, so a sample's output changed with its batch).
SMALL_DIRECT = 12288


def _prefer_direct(c, groups, sh, sw, x, w, most=12):
    """One input channel, stride 1, at most ``most`` output channels, and enough outputs (one
    sample's).  The kernel runs on one core and its time grows with the output channels, while the
    GEMM lowerings use both and get more efficient with more: measured on 5 x 5 kernels over 28 x 28
    (batch 16-256, float32), direct was 1.1-1.8x faster with 6 or 10 output channels, 0.7-1.2x with
    16 and 0.5-0.8x with 32; measured again side by side (in turns, batch 64 and 256): with 16 output
    channels the forward pass 1.1-1.3x faster (2.5 vs 2.7-3.1 ms, 10.7 vs 12.4-13.6 ms), its
    gradient even (hence 16 for :func:`conv2d`, 12 for the gradient), with 32 both 0.9-1.1x."""
    return (c == 1 and groups == 1 and sh == sw == 1 and w.shape[0] <= most and x.dtype == w.dtype
            and w.shape[0] * x.shape[2] * x.shape[3] >= SMALL_DIRECT)


def _conv_direct(x, w, padding, dh, dw):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow, hp, wp = _wide_shape(h, wd, kh, kw, padding, dh, dw)
    xp = np.zeros((n, c, hp + 1, wp), x.dtype)  # one more row: the last outputs' taps read into it
    xp[:, :, padding[0]:padding[0] + h, padding[2]:padding[2] + wd] = x
    y = np.empty((n, o, oh, ow), x.dtype)
    return _direct_kernel(kh, kw)(xp.reshape(n, c, -1), np.ascontiguousarray(w), dh, dw, wp,
                                  np.empty(oh * wp, x.dtype), y)


def _conv_direct_grad_input(gy, w, h, wd, padding, dh, dw):
    """The adjoint as a direct convolution: the input gradient at (r, s) is the correlation of gy,
    padded by the kernel's extent, with the flipped kernel (input and output channels swapped).  Only
    the input's own rows and columns are computed: gy is placed where they read it."""
    n, o, oh, ow = gy.shape
    _, c, kh, kw = w.shape
    a, b = (kh - 1) * dh, (kw - 1) * dw
    width = wd + b  # wide layout: the input's columns and the b more that its last ones read
    # gp[r, s] = gy[r + pt - a, s + pl - b]; one more row for the last outputs' taps
    gp = _scratch("direct grad in", (n, o, h + a + 1, width), gy.dtype)  # kept: fresh pages cost ~0.5 ms
    gp[...] = 0
    r0, c0 = a - padding[0], b - padding[2]
    rows = slice(max(0, -r0), min(oh, h + a - r0))
    cols = slice(max(0, -c0), min(ow, width - c0))
    if rows.start < rows.stop and cols.start < cols.stop:
        gp[:, :, r0 + rows.start:r0 + rows.stop, c0 + cols.start:c0 + cols.stop] = gy[:, :, rows, cols]
    flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    gx = np.empty((n, c, h, wd), gy.dtype)
    return _direct_kernel(kh, kw)(gp.reshape(n, o, -1), flipped, dh, dw, width, np.empty(h * width, gy.dtype), gx)


def conv2d(x, w, sh, sw, padding, dh, dw, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow, used, _ = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    width = ow if (sh, sw) != (1, 1) else _wide_shape(h, wd, kh, kw, padding, dh, dw)[3]
    if _prefer_direct(c, groups, sh, sw, x, w, 16):
        return _conv_direct(x, w, padding, dh, dw)
    if _prefer_rows(c, o, kh, kw, oh, ow, width, used, groups):
        if _prefer_channels_last(c, kw):
            return _conv_channels_last(x, w, sh, sw, padding, dh, dw)
        return _conv_rows(x, w, sh, sw, padding, dh, dw)
    if sh == sw == 1:
        return _conv_wide(x, w, padding, dh, dw, groups)
    y = np.empty((n, o, oh, ow), np.result_type(x, w))
    out = _scratch("strided out", (o, oh * ow), y.dtype)
    for b in range(n):  # one sample per GEMM (batch invariance)
        cols = _cols_strided(x[b:b + 1], kh, kw, sh, sw, padding, dh, dw, oh, ow, "cols")
        _matmul_groups(w.reshape(o, cg * kh * kw), cols, groups, o // groups, cg * kh * kw, out=out)
        y[b] = out.reshape(o, oh, ow)
    return y


def conv2d_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw, groups):
    n, o, oh, ow = gy.shape
    _, cg, kh, kw = w.shape
    c, k = cg * groups, cg * kh * kw
    _, _, used, _ = _row_geometry(h, wd, kh, kw, sh, sw, padding, dh, dw)
    width = ow if (sh, sw) != (1, 1) else _wide_shape(h, wd, kh, kw, padding, dh, dw)[3]
    if _prefer_direct(c, groups, sh, sw, gy, w):
        return _conv_direct_grad_input(gy, w, h, wd, padding, dh, dw)
    if _prefer_rows(c, o, kh, kw, oh, ow, width, used, groups):
        return _conv_rows_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw)
    w2 = w.reshape(o, k)
    if sh == sw == 1:
        return _conv_wide_grad_input(gy, w, h, wd, padding, dh, dw, groups)
    gx = np.empty((n, c, h, wd), np.result_type(gy, w))
    gcols = _scratch("gcols", (k * groups, oh * ow), gx.dtype)
    for b in range(n):  # one sample per GEMM (batch invariance)
        g2 = np.ascontiguousarray(gy[b]).reshape(o, oh * ow)
        _matmul_groups(w2, g2, groups, o // groups, k, transpose_a=True, out=gcols)
        gx[b] = _col2im(gcols, 1, c, h, wd, kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow)[0]
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


@_jitted
def _conv_add_pixels(y, pixels, delta, wt, sh, sw, pt, pl, dh, dw):
    """``y`` channels last and ``wt`` (kh, kw, C, O): each reached output adds a contiguous run of
    O values (NCHW would scatter them O planes apart: measured 5x slower)."""
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


# Max pooling: the forward pass with winners one window at a time (below); gathering and the
# gradient run over window taps outside and output columns q inside, so their inner loop is long and
# branch-free (the valid range of q for each tap is computed once).

@_jitted
def _max_pool(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """Window maxima and the row-major tap of each window's first maximum, one window at a time with
    the running maximum and its tap chosen by selects, not branches (on random data every compare is
    a coin flip: 1.5-1.6x faster than branching per tap over whole rows, lenet5 to vgg16 sizes); taps
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


@_jitted
def _max_pool_2x2(x, sh, sw, oh, ow):
    """:func:`_max_pool` for 2 x 2 windows inside an input without NaN: the four taps written out,
    which LLVM compiles to compares and selects in registers (7x the general loop on lenet5's first
    pool, whose runtime window sizes and NaN rule keep the running maximum on a dependency chain).
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


@_jitted
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


@_jitted
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
    made the gather and gradient loops 1.6-1.8x slower)."""
    tap = np.arange(kh * kw)
    return tap // kw * dh, tap % kw * dw


@_jitted
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


@_jitted
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


def _two_by_two(size, kh, kw, dh, dw, padding):
    """Unpadded 2 x 2 windows on an input above SMALL_POOL elements (smaller ones keep NumPy code,
    so that a small explanation never imports numba): the unrolled kernels, 1.7-1.9x the vectorised
    NumPy passes on toolbox_lenet's and the sum-pool CNN's pools (forward and gradient alike)."""
    return (kh, kw, dh, dw) == (2, 2, 1, 1) and not any(padding) and size > SMALL_POOL


def sum_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    if _two_by_two(x.size, kh, kw, dh, dw, padding):
        oh = output_size(x.shape[2], kh, sh, 0, 0)
        ow = output_size(x.shape[3], kw, sw, 0, 0)
        return _sum_pool_2x2(np.ascontiguousarray(x), sh, sw, oh, ow)
    # vectorised adds over strided views of the padded input, one axis at a time (a jitted loop over
    # runtime window sizes was slower on every shape measured, 17x on toolbox_lenet's 2 x 2 planes)
    return _reference.reduce_windows(np.add, 0.0, x, kh, kw, sh, sw, padding, dh, dw)


def sum_pool2d_grad(gy, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    n, c, oh, ow = gy.shape
    pt, pb, pl, pr = padding
    if (sh, sw) == (2, 2) and _two_by_two(n * c * h * wd, kh, kw, dh, dw, padding):
        return _sum_pool_2x2_grad(np.ascontiguousarray(gy), h, wd)
    if (sh, sw, dh, dw) == (kh, kw, 1, 1) and h + pt + pb == oh * kh and wd + pl + pr == ow * kw:
        # windows that tile the padded input: each output gradient copied to its kh x kw block, each
        # value repeated kw times along the row, then each row kh times (2x faster than one 6-d copy)
        gxp = np.empty((n, c, oh, kh, ow * kw), gy.dtype)
        gxp[...] = np.repeat(gy, kw, axis=3)[:, :, :, None, :]
        gxp = gxp.reshape(n, c, oh * kh, ow * kw)
        return gxp if pt == pb == pl == pr == 0 else np.ascontiguousarray(_reference._unpad(gxp, padding, h, wd))
    # the reference's strided adds, one per tap (the jitted loop was slower on small planes)
    return np.ascontiguousarray(_reference.sum_pool2d_grad(gy, h, wd, kh, kw, sh, sw, padding, dh, dw))


#: Max pools on inputs of at most this many elements whose windows do not overlap run the NumPy
#: reference (the same winners, values and gradients bit for bit: each input element is in one
#: window at most); larger ones the jitted loops, 2-5x faster at batch 64 and up.
SMALL_POOL = 1 << 15


def _small_disjoint(size, kh, kw, sh, sw, dh, dw):
    return size <= SMALL_POOL and sh >= (kh - 1) * dh + 1 and sw >= (kw - 1) * dw + 1


def _max_pool_small(x, kh, kw, sh, sw, padding, dh, dw):
    """Window maxima (one axis at a time) and then, per window, the first tap that equals its maximum
    (taps in reverse row-major order, each overwriting: the first wins; a NaN maximum is matched by
    the first NaN): ~1.4x the reference's argmax over window views on small inputs."""
    if (kh, kw, sh, sw, dh, dw) == (2, 2, 2, 2, 1, 1) and not any(padding):  # lenet5's pools: ~1.7x
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
    each tap's share is written, not added (~1.7x on lenet5's pools at batch 1)."""
    n, c, oh, ow = gy.shape
    pt, pb, pl, pr = padding
    if (sh, sw, dh, dw) == (kh, kw, 1, 1) and not any(padding):  # tiles (lenet5's pools: 41 -> 33, 30 -> 20 us)
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
    gxp += zero  # -0 -> +0 (see above): which path a batch takes depends on its size
    return np.ascontiguousarray(_reference._unpad(gxp, padding, h, wd))


def max_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    if _small_disjoint(x.size, kh, kw, sh, sw, dh, dw):
        return _max_pool_small(x, kh, kw, sh, sw, padding, dh, dw)
    oh = output_size(x.shape[2], kh, sh, padding[0], padding[1], dh)
    ow = output_size(x.shape[3], kw, sw, padding[2], padding[3], dw)
    x = np.ascontiguousarray(x)
    if ((kh, kw, dh, dw) == (2, 2, 1, 1) and not any(padding) and (oh - 1) * sh + 2 <= x.shape[2]
            and (ow - 1) * sw + 2 <= x.shape[3] and not np.isnan(x).any()):
        return _max_pool_2x2(x, sh, sw, oh, ow)
    return _max_pool(x, kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow)


def max_pool2d_values(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    # one vectorised maximum per tap over strided views beats a jitted loop (lenet5: ~1.7 vs ~7 ms)
    return _reference.max_pool2d_values(x, kh, kw, sh, sw, padding, dh, dw)


def max_pool2d_gather(x, idx, kh, kw, sh, sw, padding, dh=1, dw=1):
    if _small_disjoint(x.size, kh, kw, sh, sw, dh, dw):
        return np.ascontiguousarray(_reference.max_pool2d_gather(x, idx, kh, kw, sh, sw, padding, dh, dw))
    return _max_pool_gather(np.ascontiguousarray(x), idx, *_tap_offsets(kh, kw, dh, dw), sh, sw, padding[0], padding[2])


def max_pool2d_grad(gy, idx, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    if _small_disjoint(gy.shape[0] * gy.shape[1] * h * wd, kh, kw, sh, sw, dh, dw):
        return _max_pool_grad_small(gy, idx, h, wd, kh, kw, sh, sw, padding, dh, dw)
    return _max_pool_grad(np.ascontiguousarray(gy), idx, h, wd, *_tap_offsets(kh, kw, dh, dw), sh, sw, padding[0],
                          padding[2])


# Step 2 of the four LRP steps and the ledger's sums in one pass over z and R (the NumPy form makes
# ~10: stabilize, mask, divide, and the sums of R, s (zs - z) and s per channel); the stabilizer is
# stabilize()'s, written out element by element and tested equal to it.  Sums accumulate in float64.

@_jitted
def _lrp_step2(z, R, mask, use_mask, eps, channels, s, sums, per_channel):
    n, m = z.shape
    per = m // channels
    zero = z.dtype.type(0)
    for b in range(n):
        kept, finite, stab, total = 0.0, 0.0, 0.0, 0.0
        for ch in range(channels):
            acc = 0.0
            for p in range(per):
                k = ch * per + p
                r = R[b, k]
                total += r
                if use_mask and not mask[b, k]:
                    r = zero
                zk = z[b, k]
                zs = zk + eps if zk >= 0 else zk - eps
                kept += r
                if zs == 0:  # epsilon 0 and z 0: stabilize() makes it +inf, and s is R / inf
                    s[b, k] = r / np.inf
                    continue
                v = r / zs
                s[b, k] = v
                finite += r
                stab += v * (zs - zk)
                acc += v
            per_channel[b, ch] = acc
        sums[b, 0], sums[b, 1], sums[b, 2], sums[b, 3] = kept, finite, stab, total
    return s


@_jitted
def _lrp_step2_plain(z, R, eps, s, t):
    """Step 2 without a mask and with epsilon > 0 (every denominator finite): ``s = R / zs`` and
    ``t = s (zs - z)`` elementwise, with selects only, so LLVM vectorises it; their sums are
    NumPy's (vectorised, pairwise), where the general pass's float64 chains would serialise."""
    n, m = z.shape
    for b in range(n):
        zb, Rb, sb, tb = z[b], R[b], s[b], t[b]
        for k in range(m):
            zk = zb[k]
            zs = zk + eps if zk >= 0 else zk - eps
            v = Rb[k] / zs
            sb[k] = v
            tb[k] = v * (zs - zk)
    return s


#: Below this many values step 2 runs the NumPy reference: no numba import for a small explanation
#: (a fresh process explaining one lenet5 input never imports numba), where the one pass saves little.
SMALL_STEP2 = 1 << 15


def lrp_step2(z, R, mask, epsilon, channels):
    if z.size <= SMALL_STEP2:
        return _reference.lrp_step2(z, R, mask, epsilon, channels)
    n = len(z)
    z2, R2 = np.ascontiguousarray(z).reshape(n, -1), np.ascontiguousarray(R).reshape(n, -1)
    s = np.empty(z2.shape, z.dtype)
    if mask is None and epsilon > 0:  # the common case: kept = finite = total, all of R
        t = _scratch("step2 t", z2.shape, z.dtype)
        _lrp_step2_plain(z2, R2, z.dtype.type(epsilon), s, t)
        sums = np.empty((n, 4), z.dtype)
        sums[:, 0] = R2.sum(axis=1)
        sums[:, 1] = sums[:, 3] = sums[:, 0]
        sums[:, 2] = t.sum(axis=1)
        return s.reshape(z.shape), sums, s.reshape(n, channels, -1).sum(axis=2)
    m = np.zeros((1, 1), bool) if mask is None else np.ascontiguousarray(np.broadcast_to(mask, z.shape)).reshape(n, -1)
    sums, per_channel = np.empty((n, 4)), np.empty((n, channels))
    _lrp_step2(z2, R2, m, mask is not None, z.dtype.type(epsilon), channels, s, sums, per_channel)
    return s.reshape(z.shape), sums.astype(z.dtype), per_channel.astype(z.dtype)
