"""Grad-CAM, and upsampling a layer's map to the input size."""

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explain import Explanation, layer_index, logit_network
from ..registry import register_method as register
from ..layers.base import pair
from .gradient import walk


@register("grad_cam")
def grad_cam(model, x, target=None, layer=None, relu=True, upsample=None):
    r"""Grad-CAM (Selvaraju et al., 2017) at the output of ``layer``.

    ``cam = ReLU(sum_k alpha_k A_k)``, ``A`` the layer's output (N, K, h, w) and ``alpha_k`` the
    mean over positions of the target logit's gradient with respect to ``A_k``.

    Parameters
    ----------
    layer : int, str or None
        Index in execution order (negative from the end), or a node's name; None: the last
        layer whose output is 4-D with more than one position (the last feature maps).
    relu : bool
        Keep only positive evidence (Selvaraju et al.); Captum's ``LayerGradCam`` does not by
        default (its ``relu_attributions=False``).
    upsample : None, "nearest" or "bilinear"
        Return the map at the input's size (see :func:`interpolate`); else at the layer's.

    Returns
    -------
    Explanation
        ``relevance`` of shape (N, 1, h, w) (or (N, 1, H, W) upsampled).
    """
    net = logit_network(model, x)
    if layer is None:
        shapes = [x.shape]
        for i in range(len(net)):
            shapes.append(net[i].output_shape(*(shapes[p + 1] for p in _parents(net, i))))
        maps = [i for i in range(len(net)) if len(shapes[i + 1]) == 4 and shapes[i + 1][2] * shapes[i + 1][3] > 1]
        if not maps:
            raise ShapeError("grad_cam needs a layer with feature maps (N, K, h, w), h * w > 1; the network has none")
        layer = maps[-1]
    k = layer_index(net, layer)
    grads = {}

    def visit(step, g):
        if step.index == k:
            grads["g"] = g
        return None
    _, out, t, trace = walk(net, x, target, visit)
    A, g = trace[k].output, grads["g"]
    alpha = g.mean(axis=tuple(range(2, g.ndim)), keepdims=True)
    cam = (alpha * A).sum(axis=1, keepdims=True)
    cam = np.maximum(cam, 0) if relu else cam
    if upsample is not None:
        if x.ndim != 4 or cam.ndim != 4:
            raise ShapeError(f"upsampling needs images and a 4-D layer output, got {x.shape} and {A.shape}")
        cam = interpolate(cam, x.shape[2:], upsample)
    return Explanation(cam, out, t, method="grad_cam", params=dict(layer=layer, relu=relu, upsample=upsample))


def _parents(net, i):
    """Indices of the steps node ``i`` reads (-1: the network input)."""
    names = list(net.names)
    return tuple(-1 if n == net.input_name else names.index(n) for n in net.inputs_of(i))


def interpolate(maps, size, mode="nearest"):
    """Resize maps (N, C, h, w) to ``size`` (H, W), as ``torch.nn.functional.interpolate``.

    ``"nearest"`` takes source pixel ``floor(i h / H)``; ``"bilinear"`` is linear in each axis with
    ``align_corners=False`` (pixel centres: source ``(i + 0.5) h / H - 0.5``, clamped at 0).
    """
    if not isinstance(maps, np.ndarray) or maps.ndim != 4:
        raise ShapeError(f"interpolate needs an array (N, C, h, w), got {getattr(maps, 'shape', type(maps))}")
    H, W = pair(tuple(size), "size")
    if mode == "nearest":
        rows = np.minimum((np.arange(H) * maps.shape[2]) // H, maps.shape[2] - 1)
        cols = np.minimum((np.arange(W) * maps.shape[3]) // W, maps.shape[3] - 1)
        return maps[:, :, rows][:, :, :, cols]
    if mode != "bilinear":
        raise RuleParameterError(f"interpolate mode must be 'nearest' or 'bilinear', got {mode!r}")
    out = maps
    for axis, (n_in, n_out) in ((2, (maps.shape[2], H)), (3, (maps.shape[3], W))):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (src - lo).astype(maps.dtype)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        frac = frac.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out
