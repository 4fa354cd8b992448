"""Forward passes along a perturbation path that recompute only what each step changes.

Pixel flipping scores the network on a sequence of inputs, each one differing from the one before
in the few pixels one step removes.  Through a network's first, local layers (convolutions,
element-wise activations, pooling) such a change stays local: a pixel reaches only the outputs
whose windows hold it.  :class:`PerturbationPath` keeps each local layer's output for the current
step and, for the next step, recomputes

* a convolution by adding the convolution of the change, which is non-zero only at the changed
  positions (the layer is linear: ``W * (a + d) = W * a + W * d``);
* an element-wise activation at the changed positions;
* a pooling layer at the outputs whose windows hold a changed position;

and passes on only the positions whose values did change (a ReLU of a value that stays negative
or a window whose maximum stays where it was ends the change there).  The layers after this local
prefix (Flatten, Linear, ...) see the whole image and run as usual, many steps in one batch.
A network that starts with Flatten and a Linear layer gets the same treatment for that layer (the
change is a sparse matrix of samples x features).

How many layers run this way is decided before the first step from how far a step's change
spreads: a ``patch x patch`` box of pixels grows, through a layer with a ``k``-tap window of
stride ``s``, to ``(b - 1 + k - 1) // s + 1`` positions a side, and a layer runs incrementally
while a step's boxes cover at most an eighth of its input.  The scores are those of recomputing
every perturbed input up to rounding (the tests compare them).

Activations are held channels last ``(N, H, W, C)``: a position's channels are then one
contiguous row, which is what the updates read and write.
"""

import numpy as np

from . import kernels
from .layers import Conv2d, Flatten, Linear, Sequential


def _geometry(layer, h, w):
    """(kh, kw, sh, sw, (top, bottom, left, right), dh, dw) of a window layer on an h x w input."""
    return layer.window(h, w)


def _kind(layer):
    """How a layer runs along the path, from what it declares (None: not locally)."""
    if isinstance(layer, Conv2d) and layer.groups == 1:  # the kernel adds the convolution of a change
        return "conv"
    if layer.pool in ("max", "sum"):
        return "pool"
    if layer.elementwise:
        return "elementwise"
    return None


def plan(net, input_shape, features_per_step, patch):
    """How many of ``net``'s first layers a :class:`PerturbationPath` runs (0: none pays): local
    layers while a step's change covers at most an eighth of their input, one layer at least left."""
    if not isinstance(net, Sequential) or len(net) < 2:
        return 0
    c, h, w = input_shape
    if len(net) > 2 and isinstance(net[0], Flatten) and isinstance(net[1], Linear):
        return 2 if 8 * features_per_step * patch * patch <= h * w else 0
    count, bh, bw, shape = 0, patch, patch, (1,) + tuple(input_shape)
    for layer in net.layers[:-1]:
        kind = _kind(layer)
        if kind is None or 8 * features_per_step * bh * bw > shape[2] * shape[3]:
            break
        if kind != "elementwise":
            kh, kw, sh, sw, _, dh, dw = _geometry(layer, *shape[2:])
            shape = layer.output_shape(shape)
            bh = min(shape[2], (bh - 1 + (kh - 1) * dh) // sh + 1)
            bw = min(shape[3], (bw - 1 + (kw - 1) * dw) // sw + 1)
        count += 1
    return count


def _taps(geometry, h, w, oh, ow):
    """(oh * ow, kh * kw): the input position (within a sample, row-major) of each tap of each
    output's window, -1 for taps in the padding."""
    kh, kw, sh, sw, (pt, _, pl, _), dh, dw = geometry
    r = np.arange(oh)[:, None] * sh - pt + np.arange(kh) * dh  # (oh, kh)
    c = np.arange(ow)[:, None] * sw - pl + np.arange(kw) * dw  # (ow, kw)
    index = r[:, None, :, None] * w + c[None, :, None, :]  # (oh, ow, kh, kw)
    inside = ((r >= 0) & (r < h))[:, None, :, None] & ((c >= 0) & (c < w))[None, :, None, :]
    return np.where(inside, index, -1).reshape(oh * ow, kh * kw)


def _reached_by(taps, hw):
    """(hw, R): the outputs (within a sample) whose windows hold each input position, padded with
    the output count (a column past the last output) -- the transpose of :func:`_taps`."""
    outputs, count = taps.shape[0], np.zeros(hw, int)
    out, tap = np.nonzero(taps >= 0)
    np.add.at(count, taps[out, tap], 1)
    table = np.full((hw, max(1, count.max())), outputs)
    order = np.argsort(taps[out, tap], kind="stable")
    source, out = taps[out, tap][order], out[order]
    slot = np.arange(len(source)) - np.searchsorted(source, source)  # rank among the same source
    table[source, slot] = out
    return table


def _changed(q, d):
    """The positions whose change ``d`` is not zero in every channel, and their change."""
    keep = np.abs(d) @ np.ones(d.shape[1], d.dtype) > 0  # a dot product: 4x faster than any(axis=1)
    return q[keep], d[keep]


class _Local:
    """One local layer along the path and its output for the current step, held channels last as
    (N * H * W + 1, C): one row per position and, last, the padding row its consumer reads outside
    the map (-inf for a max pool, 0 otherwise)."""

    def __init__(self, layer, a, y):
        self.layer, self.kind = layer, _kind(layer)
        self.h, self.w = a.shape[2:]  # of its input
        self.n, self.c, self.oh, self.ow = y.shape
        self.y = _rows(y)
        if self.kind != "elementwise":  # which inputs each output reads, and the other way round
            self.taps = _taps(_geometry(layer, self.h, self.w), self.h, self.w, self.oh, self.ow)
            self.reached = _reached_by(self.taps, self.h * self.w)
        if self.kind == "conv":  # (kh * kw * C, O): the weights in a window row's order
            self.matrix = layer.weight.transpose(2, 3, 1, 0).reshape(-1, layer.out_channels)

    def update(self, a, p, d, last=False):
        """Bring the output up to date with its input ``a`` (rows, already updated), which changed by
        ``d`` (m, C) at the positions ``p``; return the output's positions that changed and by how
        much (None if ``last``)."""
        if self.kind == "elementwise":
            q = p
        else:
            q = self._reach(p)
            if len(q) == 0:  # pixels no window reads (a strided layer can skip some)
                return None if last else (q, np.empty((0, self.c), self.y.dtype))
        if self.kind == "conv" and 4 * len(p) < len(q):  # few changed inputs: add the convolution of the change
            old = None if last else self.y[q]
            hw, layer = self.h * self.w, self.layer
            pixels = np.stack([p // hw, p % hw // self.w, p % self.w], axis=1)  # (sample, row, column)
            (sh, sw), (dh, dw) = layer.stride, layer.dilation
            kernels.conv2d_add_pixels(self.channels_last(), pixels, d, layer.weight, sh, sw, layer.padding, dh, dw)
            return None if last else _changed(q, self.y[q] - old)
        if self.kind == "elementwise":
            new = self.layer.forward(a[q][:, :, None, None])[:, :, 0, 0]
        else:
            window = a[self._windows(q, len(a) - 1)]  # (m, taps, C)
            if self.kind == "conv":  # the outputs recomputed: their windows times the weights
                new = window.reshape(len(q), -1) @ self.matrix
                if self.layer.bias is not None:
                    new += self.layer.bias
            elif self.layer.pool == "max":
                new = window.max(axis=1)
            else:  # a sum pool's window sums, times its scale
                new = window.sum(axis=1)
                new = new if self.layer.scale == 1.0 else new * new.dtype.type(self.layer.scale)
        old = None if last else self.y[q]
        self.y[q] = new
        return None if last else _changed(q, new - old)

    def _reach(self, p):
        """The output positions (flat, sorted) whose windows hold any of the input positions ``p``."""
        hw, ohw = self.h * self.w, self.oh * self.ow
        reached = np.zeros((self.n, ohw + 1), bool)  # a mask, not np.unique: 50x faster; last column for padding
        reached[(p // hw)[:, None], self.reached[p % hw]] = True
        return np.flatnonzero(reached[:, :ohw])

    def _windows(self, q, pad):
        """(m, kh * kw): the input rows of the window of each output position ``q``, ``pad`` (the
        padding row) for taps outside the input."""
        ohw = self.oh * self.ow
        taps = self.taps[q % ohw]
        return np.where(taps < 0, pad, (q // ohw * (self.h * self.w))[:, None] + taps)

    def channels_last(self):
        return self.y[:-1].reshape(self.n, self.oh, self.ow, self.c)


def _rows(a, pad=0):
    """(N, C, H, W) -> (N * H * W + 1, C), channels last, the last row ``pad``."""
    n, c, h, w = a.shape
    rows = np.empty((n * h * w + 1, c), a.dtype)
    rows[:-1].reshape(n, h, w, c)[...] = a.transpose(0, 2, 3, 1)
    rows[-1] = pad
    return rows


def _pad_value(layer):
    """What the padding row holds for ``layer`` (the next layer; None: none): -inf for a max pool."""
    return -np.inf if layer is not None and layer.pool == "max" else 0


class PerturbationPath:
    """The output of ``net[:count]`` (``count`` from :func:`plan`) after each step of a perturbation
    path, recomputing only what each step changes (see the module's notes).

    Parameters
    ----------
    net : Sequential
    x : ndarray (N, C, H, W)
        The unperturbed inputs.
    values : ndarray (N, C, H * W)
        What each pixel becomes when it is removed.
    removed_at : ndarray of int (N, H * W)
        The step that removes each pixel (1, 2, ...).
    steps : int
    count : int
    """

    def __init__(self, net, x, values, removed_at, steps, count):
        n, c, h, w = x.shape
        when = removed_at.ravel()
        order = np.argsort(when, kind="stable")  # (sample, pixel) pairs grouped by the step removing them
        self.bounds = np.searchsorted(when[order], np.arange(1, steps + 2))
        self.sample, pixel = order // (h * w), order % (h * w)
        self.new = values.transpose(0, 2, 1).reshape(n * h * w, c)[order]  # the removed pixels' values
        self.delta = self.new - x.reshape(n, c, -1).transpose(0, 2, 1).reshape(n * h * w, c)[order]
        self.flat = isinstance(net[0], Flatten)
        if self.flat:  # Linear after Flatten: the change is a sparse (samples x features) matrix
            self.linear = net[1]
            self.y = self.linear.forward(x.reshape(n, -1))
            self.columns = np.arange(c)[None, :] * (h * w) + pixel[:, None]  # Flatten's order (NCHW)
            self.stored = self.y.shape[1:]
            return
        self.pixel = order  # flat (sample, row, column) position of each removed pixel
        layers = net.layers[:count]
        self.x, self.layers, a = _rows(x, _pad_value(layers[0])), [], x
        for layer, consumer in zip(layers, layers[1:] + [None]):
            y = layer.forward(a)
            self.layers.append(_Local(layer, a, y))
            self.layers[-1].y[-1] = _pad_value(consumer)
            a = y
        self.stored = a.shape[2:] + a.shape[1:2]  # one sample's output, channels last

    def as_input(self, stored):
        """The next layer's view of outputs as :meth:`after` stores them: (N, C, H, W) of channels last."""
        return stored if self.flat else stored.transpose(0, 3, 1, 2)

    def after(self, k):
        """The output after step k (steps in order: k = 1, 2, ...), one sample's of shape ``stored``
        (channels last: see :meth:`as_input`); a view valid until the next step."""
        part = slice(self.bounds[k - 1], self.bounds[k])
        if self.flat:
            return self._linear_after(part)
        changes = (self.delta[part] != 0).any(axis=1)  # a pixel already at its fill value changes nothing
        p, d = self.pixel[part][changes], self.delta[part][changes]
        self.x[p] = self.new[part][changes]
        a, last = self.x, self.layers[-1]
        for local in self.layers:
            if len(p) == 0:
                break
            changed = local.update(a, p, d, last=local is last)
            if changed is not None:
                p, d = changed
            a = local.y
        return last.channels_last()

    def _linear_after(self, part):
        import scipy.sparse  # here: importing it costs a cold start 0.1 s
        d, cols = self.delta[part], self.columns[part]
        rows = np.broadcast_to(self.sample[part][:, None], cols.shape)
        change = scipy.sparse.csr_array((d.ravel(), (rows.ravel(), cols.ravel())),
                                        shape=(len(self.y), self.linear.in_features))
        self.y += change @ self.linear.weight.T
        return self.y
