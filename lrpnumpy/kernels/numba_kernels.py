"""numba backend: im2col / col2im and pooling loops jitted, the multiply-adds in BLAS.

Convolutions are lowered to GEMM in the layout ``cols[n, k, p]`` with ``k = (c, i, j)`` (the
weight's own order) and ``p = (oh, ow)``, so ``y[n] = W.reshape(O, K) @ cols[n]`` lands in NCHW
without a transpose, and the input gradient is ``col2im(W^T @ g)``.  The jitted loops walk
(sample, channel) planes with ``prange`` but are compiled serial (``PARALLEL = False``): on
2 cores, numba's worker threads compete with OpenBLAS's spinning threads, and measured
serial loops won (lenet5 batch 64 explain 29 ms serial vs 51 ms parallel; vgg16 3.1 s vs
3.5 s).  BLAS keeps both cores busy in the GEMMs.  No ``fastmath``: it would reorder sums,
and sums are what conservation measures.  Same signatures as :mod:`.reference`.
"""

import numba
import numpy as np
from numba import prange

from .reference import output_size

PARALLEL = False
_jit = dict(nopython=True, cache=True, nogil=True, parallel=PARALLEL)


@numba.jit(**_jit)
def _im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    n, c, h, w = x.shape
    cols = np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    zero = x.dtype.type(0)
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for i in range(kh):
            for j in range(kw):
                row = (ci * kh + i) * kw + j
                for p in range(oh):
                    r = p * sh - pt + i * dh
                    if r < 0 or r >= h:
                        for q in range(ow):
                            cols[b, row, p * ow + q] = zero
                        continue
                    for q in range(ow):
                        s = q * sw - pl + j * dw
                        cols[b, row, p * ow + q] = x[b, ci, r, s] if 0 <= s < w else zero
    return cols


@numba.jit(**_jit)
def _col2im(cols, c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    n = cols.shape[0]
    x = np.zeros((n, c, h, w), dtype=cols.dtype)
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for i in range(kh):
            for j in range(kw):
                row = (ci * kh + i) * kw + j
                for p in range(oh):
                    r = p * sh - pt + i * dh
                    if r < 0 or r >= h:
                        continue
                    for q in range(ow):
                        s = q * sw - pl + j * dw
                        if 0 <= s < w:
                            x[b, ci, r, s] += cols[b, row, p * ow + q]
    return x


def _cols(x, kh, kw, sh, sw, padding, dh, dw, oh, ow):
    n, c, h, w = x.shape
    if kh == kw == sh == sw == 1 and not any(padding):
        return np.ascontiguousarray(x).reshape(n, c, h * w)
    return _im2col(np.ascontiguousarray(x), kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow)


def conv2d(x, w, sh, sw, padding, dh, dw, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = output_size(h, kh, sh, padding[0], padding[1], dh)
    ow = output_size(wd, kw, sw, padding[2], padding[3], dw)
    cols = _cols(x, kh, kw, sh, sw, padding, dh, dw, oh, ow)
    w2 = w.reshape(o, cg * kh * kw)
    if groups == 1:
        return np.matmul(w2, cols).reshape(n, o, oh, ow)
    og, kg = o // groups, cg * kh * kw
    y = np.empty((n, o, oh * ow), dtype=np.result_type(x, w))
    for g in range(groups):
        np.matmul(w2[g * og:(g + 1) * og], cols[:, g * kg:(g + 1) * kg], out=y[:, g * og:(g + 1) * og])
    return y.reshape(n, o, oh, ow)


def conv2d_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw, groups):
    n, o, oh, ow = gy.shape
    _, cg, kh, kw = w.shape
    g2 = np.ascontiguousarray(gy).reshape(n, o, oh * ow)
    w2 = w.reshape(o, cg * kh * kw)
    if groups == 1:
        gcols = np.matmul(w2.T, g2)
    else:
        og, kg = o // groups, cg * kh * kw
        gcols = np.empty((n, kg * groups, oh * ow), dtype=np.result_type(gy, w))
        for g in range(groups):
            np.matmul(w2[g * og:(g + 1) * og].T, g2[:, g * og:(g + 1) * og], out=gcols[:, g * kg:(g + 1) * kg])
    c = cg * groups
    if kh == kw == sh == sw == 1 and not any(padding):
        return gcols.reshape(n, c, h, wd)
    return _col2im(gcols, c, h, wd, kh, kw, sh, sw, padding[0], padding[2], dh, dw, oh, ow)


def conv2d_grad_weight(x, gy, kh, kw, sh, sw, padding, dh, dw, groups):
    n, c, h, wd = x.shape
    _, o, oh, ow = gy.shape
    cols = _cols(x, kh, kw, sh, sw, padding, dh, dw, oh, ow)
    g2 = np.ascontiguousarray(gy).reshape(n, o, oh * ow)
    cg, og = c // groups, o // groups
    kg = cg * kh * kw
    gw = np.zeros((o, kg), dtype=np.result_type(x, gy))
    for b in range(n):
        for g in range(groups):
            gw[g * og:(g + 1) * og] += g2[b, g * og:(g + 1) * og] @ cols[b, g * kg:(g + 1) * kg].T
    return gw.reshape(o, cg, kh, kw)


@numba.jit(**_jit)
def _sum_pool(x, kh, kw, sh, sw, pt, pl, oh, ow):
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            for q in range(ow):
                acc = x.dtype.type(0)
                for i in range(kh):
                    r = p * sh - pt + i
                    if 0 <= r < h:
                        for j in range(kw):
                            s = q * sw - pl + j
                            if 0 <= s < w:
                                acc += x[b, ci, r, s]
                y[b, ci, p, q] = acc
    return y


@numba.jit(**_jit)
def _sum_pool_grad(gy, h, w, kh, kw, sh, sw, pt, pl):
    n, c, oh, ow = gy.shape
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            for q in range(ow):
                g = gy[b, ci, p, q]
                for i in range(kh):
                    r = p * sh - pt + i
                    if 0 <= r < h:
                        for j in range(kw):
                            s = q * sw - pl + j
                            if 0 <= s < w:
                                gx[b, ci, r, s] += g
    return gx


@numba.jit(**_jit)
def _max_pool(x, kh, kw, sh, sw, pt, pl, oh, ow):
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            for q in range(ow):
                best, arg = -np.inf, 0
                for i in range(kh):
                    for j in range(kw):
                        r, s = p * sh - pt + i, q * sw - pl + j
                        v = x[b, ci, r, s] if (0 <= r < h and 0 <= s < w) else -np.inf
                        if v > best:  # strictly greater: the first maximum wins ties
                            best, arg = v, i * kw + j
                y[b, ci, p, q] = best
                idx[b, ci, p, q] = arg
    return y, idx


@numba.jit(**_jit)
def _max_pool_gather(x, idx, kw, sh, sw, pt, pl):
    n, c, h, w = x.shape
    _, _, oh, ow = idx.shape
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            for q in range(ow):
                k = idx[b, ci, p, q]
                r, s = p * sh - pt + k // kw, q * sw - pl + k % kw
                if 0 <= r < h and 0 <= s < w:
                    y[b, ci, p, q] = x[b, ci, r, s]
    return y


@numba.jit(**_jit)
def _max_pool_grad(gy, idx, h, w, kw, sh, sw, pt, pl):
    n, c, oh, ow = gy.shape
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for p in range(oh):
            for q in range(ow):
                k = idx[b, ci, p, q]
                r, s = p * sh - pt + k // kw, q * sw - pl + k % kw
                if 0 <= r < h and 0 <= s < w:
                    gx[b, ci, r, s] += gy[b, ci, p, q]
    return gx


def sum_pool2d(x, kh, kw, sh, sw, padding):
    oh = output_size(x.shape[2], kh, sh, padding[0], padding[1])
    ow = output_size(x.shape[3], kw, sw, padding[2], padding[3])
    return _sum_pool(np.ascontiguousarray(x), kh, kw, sh, sw, padding[0], padding[2], oh, ow)


def sum_pool2d_grad(gy, h, wd, kh, kw, sh, sw, padding):
    return _sum_pool_grad(np.ascontiguousarray(gy), h, wd, kh, kw, sh, sw, padding[0], padding[2])


def max_pool2d(x, kh, kw, sh, sw, padding):
    oh = output_size(x.shape[2], kh, sh, padding[0], padding[1])
    ow = output_size(x.shape[3], kw, sw, padding[2], padding[3])
    return _max_pool(np.ascontiguousarray(x), kh, kw, sh, sw, padding[0], padding[2], oh, ow)


def max_pool2d_gather(x, idx, kh, kw, sh, sw, padding):
    return _max_pool_gather(np.ascontiguousarray(x), idx, kw, sh, sw, padding[0], padding[2])


def max_pool2d_grad(gy, idx, h, wd, kh, kw, sh, sw, padding):
    return _max_pool_grad(np.ascontiguousarray(gy), idx, h, wd, kw, sh, sw, padding[0], padding[2])
