"""Slow, obvious references: layers as explicit matrices, rules as the formulas on those matrices.

Nothing here calls lrpnumpy's kernels: each matrix is built entry by entry from
the definition of the layer, and each rule is its formula written with ``@``.
"""

import numpy as np


def conv_matrix(weight, in_shape, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Matrix M with ``conv(x).ravel() == M @ x.ravel()`` for one sample of shape (C, H, W)."""
    c, h, w = in_shape
    o, cg, kh, kw = weight.shape
    pt, pb, pl, pr = padding
    oh = (h + pt + pb - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + pl + pr - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    M = np.zeros((o, oh, ow, c, h, w))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for ci in range(cg):
            for p in range(oh):
                for q in range(ow):
                    for i in range(kh):
                        for j in range(kw):
                            r = p * stride[0] - pt + i * dilation[0]
                            s = q * stride[1] - pl + j * dilation[1]
                            if 0 <= r < h and 0 <= s < w:
                                M[oc, p, q, g * cg + ci, r, s] += weight[oc, ci, i, j]
    return M.reshape(o * oh * ow, c * h * w), (o, oh, ow)


def sum_pool_matrix(in_shape, kernel, stride, padding=(0, 0, 0, 0), scale=1.0, dilation=(1, 1)):
    """Matrix of a sum pool (times ``scale``) over one sample of shape (C, H, W)."""
    c = in_shape[0]
    depthwise_ones = np.ones((c, 1) + tuple(kernel))
    M, shape = conv_matrix(depthwise_ones, in_shape, stride, padding, dilation, groups=c)
    return M * scale, shape


def max_pool_selection(x, kernel, stride, padding=(0, 0, 0, 0), dilation=(1, 1)):
    """0/1 matrix S (one sample) with ``maxpool(x) == S @ x``: the first maximum of each window wins."""
    c, h, w = x.shape
    pt, pb, pl, pr = padding
    oh = (h + pt + pb - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + pl + pr - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    S = np.zeros((c, oh, ow, c, h, w))
    T = np.zeros_like(S)  # ties shared equally
    for ch in range(c):
        for p in range(oh):
            for q in range(ow):
                best, where, tied = -np.inf, None, []
                for i in range(kernel[0]):
                    for j in range(kernel[1]):
                        r, s = p * stride[0] - pt + i * dilation[0], q * stride[1] - pl + j * dilation[1]
                        if 0 <= r < h and 0 <= s < w:
                            if x[ch, r, s] > best:
                                best, where, tied = x[ch, r, s], (r, s), [(r, s)]
                            elif x[ch, r, s] == best:
                                tied.append((r, s))
                S[(ch, p, q, ch) + where] = 1
                for rs in tied:
                    T[(ch, p, q, ch) + rs] = 1 / len(tied)
    return S.reshape(c * oh * ow, -1), T.reshape(c * oh * ow, -1)


# ----- the rules, on one sample: x (I,), M (J, I), b (J,) or zeros, R (J,) -----

def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def div(R, z):
    """R / z with 0 where z == 0 (LRP-0's convention for zero denominators)."""
    return np.divide(R, z, out=np.zeros_like(R), where=z != 0)


def pos(v):
    return np.maximum(v, 0)


def neg(v):
    return np.minimum(v, 0)


def epsilon(x, M, b, R, eps):
    return x * (M.T @ div(R, stab(M @ x + b, eps)))


def zplus(x, M, b, R, eps):
    s = div(R, stab(pos(M) @ pos(x) + neg(M) @ neg(x) + pos(b), eps))
    return pos(x) * (pos(M).T @ s) + neg(x) * (neg(M).T @ s)


def alpha_beta(x, M, b, R, eps, alpha, beta):
    sp = div(R, stab(pos(M) @ pos(x) + neg(M) @ neg(x) + pos(b), eps))
    sn = div(R, stab(neg(M) @ pos(x) + pos(M) @ neg(x) + neg(b), eps))
    return (alpha * (pos(x) * (pos(M).T @ sp) + neg(x) * (neg(M).T @ sp))
            - beta * (pos(x) * (neg(M).T @ sn) + neg(x) * (pos(M).T @ sn)))


def gamma(x, M, b, R, eps, g):
    Mp, Mn = M + g * pos(M), M + g * neg(M)
    bp, bn = b + g * pos(b), b + g * neg(b)
    z = M @ x + b
    gp = (z > 0) * div(R, stab(Mp @ pos(x) + Mn @ neg(x) + bp, eps))
    gn = (z < 0) * div(R, stab(Mn @ pos(x) + Mp @ neg(x) + bn, eps))
    return pos(x) * (Mp.T @ gp) + neg(x) * (Mn.T @ gp) + pos(x) * (Mn.T @ gn) + neg(x) * (Mp.T @ gn)


def zbox(x, M, b, R, eps, low, high):
    z = (M @ x + b) - (pos(M) @ low + pos(b)) - (neg(M) @ high + neg(b))
    g = div(R, stab(z, eps))
    return x * (M.T @ g) - low * (pos(M).T @ g) - high * (neg(M).T @ g)


def flat(M_ones, R, eps):
    """``M_ones``: the layer's matrix with every weight set to 1."""
    return M_ones.T @ div(R, stab(M_ones @ np.ones(M_ones.shape[1]), eps))


def wsquare(M, b, R, eps):
    M2 = M ** 2
    return M2.T @ div(R, stab(M2 @ np.ones(M.shape[1]) + b ** 2, eps))


# ----- Arras et al.'s LRP_for_LSTM formulas, one sentence at a time (tests/test_recurrent_lrp.py,
# benchmarks/lstm_speed.py) -----

def lrp_linear(hin, w, b, hout, Rout, bias_nb_units, eps, bias_factor):
    """Relevance at ``hin`` (D,) of a linear map ``w`` (D, M) with bias ``b`` (M,) and output ``hout``."""
    sign_out = np.where(hout >= 0, 1.0, -1.0)
    numer = w * hin[:, None] + bias_factor * (b + eps * sign_out) / bias_nb_units
    denom = hout + eps * sign_out
    return (numer / denom * Rout).sum(axis=1)


def _sigm(x):
    return 1 / (1 + np.exp(-x))


def lstm_forward(x, Wxh, Whh, bxh, bhh):
    """One direction over a sentence x (T, e); gate rows in torch's order i, f, g, o. Row -1 (= T)
    of h and c is the initial zero state."""
    T, d = len(x), Whh.shape[1]
    h, c = np.zeros((T + 1, d)), np.zeros((T + 1, d))
    pre, gates = np.zeros((T, 4 * d)), np.zeros((T, 4 * d))
    for t in range(T):
        pre[t] = Wxh @ x[t] + bxh + Whh @ h[t - 1] + bhh
        gates[t] = np.concatenate([_sigm(pre[t, :2 * d]), np.tanh(pre[t, 2 * d:3 * d]), _sigm(pre[t, 3 * d:])])
        i, f, g, o = np.split(gates[t], 4)
        c[t] = f * c[t - 1] + i * g
        h[t] = o * np.tanh(c[t])
    return h, c, pre, gates


def lstm_lrp(x, params, fwd, Rh_last, eps, bias_factor):
    """LRP-all through one direction: the cell update split by lrp_linear, all to the signal."""
    Wxh, Whh, bxh, bhh = params
    h, c, pre, gates = fwd
    T, e = x.shape
    d = Whh.shape[1]
    g_rows = slice(2 * d, 3 * d)
    Rx, Rh, Rc = np.zeros((T, e)), np.zeros((T + 1, d)), np.zeros((T + 1, d))
    Rh[T - 1] = Rh_last
    eye, zero = np.identity(d), np.zeros(d)
    for t in reversed(range(T)):
        i, f, g, o = np.split(gates[t], 4)
        Rc[t] += Rh[t]
        Rc[t - 1] = lrp_linear(f * c[t - 1], eye, zero, c[t], Rc[t], 2 * d, eps, bias_factor)
        Rg = lrp_linear(i * g, eye, zero, c[t], Rc[t], 2 * d, eps, bias_factor)
        b = bxh[g_rows] + bhh[g_rows]
        Rx[t] = lrp_linear(x[t], Wxh[g_rows].T, b, pre[t, g_rows], Rg, d + e, eps, bias_factor)
        Rh[t - 1] = lrp_linear(h[t - 1], Whh[g_rows].T, b, pre[t, g_rows], Rg, d + e, eps, bias_factor)
    return Rx


def reference_lrp_all(x, params, W_out, target, eps=0.001, bias_factor=0.0):
    """``(scores, relevance (T, e))`` of one sentence ``x`` (T, e): Arras et al.'s bidirectional LSTM, scores
    ``W_left h_left[T-1] + W_right h_right[T-1]`` explained from the raw target score."""
    d = params[0][1].shape[1]
    left, right = lstm_forward(x, *params[0]), lstm_forward(x[::-1], *params[1])
    T = len(x)
    W_left, W_right = W_out[:, :d], W_out[:, d:]
    s = W_left @ left[0][T - 1] + W_right @ right[0][T - 1]
    Rout = s * (np.arange(len(s)) == target)
    zeros = np.zeros(len(s))
    R_left = lrp_linear(left[0][T - 1], W_left.T, zeros, s, Rout, 2 * d, eps, bias_factor)
    R_right = lrp_linear(right[0][T - 1], W_right.T, zeros, s, Rout, 2 * d, eps, bias_factor)
    Rx = lstm_lrp(x, params[0], left, R_left, eps, bias_factor)
    Rx_rev = lstm_lrp(x[::-1], params[1], right, R_right, eps, bias_factor)
    return s, Rx + Rx_rev[::-1]


def stabilized_masked(z, R, epsilon):
    """Step 2 of the transformer rules in its masked form, for every denominator (zero, inf and NaN
    included): ``s = R / stabilize(z)`` where that is finite, and the ledger of the stabilizer's share
    (and, with epsilon 0, of the relevance dropped at non-finite denominators), per sample."""
    from lrpnumpy.layers.base import per_sample_sum
    from lrpnumpy.stabilize import stabilize
    zs = stabilize(z, epsilon)
    s = R / zs
    finite = np.isfinite(zs)
    ledger = {"stabilizer": per_sample_sum(np.where(finite, s * (np.where(finite, zs, 0) - z), 0))}
    if epsilon == 0:
        ledger["dropped"] = per_sample_sum(np.where(finite, 0, R))
    return s, ledger
