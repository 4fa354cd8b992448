"""Model rewrites that keep the function and make LRP better defined."""

from .layers import BatchNorm2d, Conv2d, Linear, Sequential


def fold_batchnorm(net):
    """An equivalent network with each BatchNorm2d folded into the Conv2d/Linear before it.

    ``BN(W x + b) = (s W) x + (s (b - mean) + beta)`` with
    ``s = weight / sqrt(var + eps)``, so the folded layer gets weight
    ``s[:, None, ...] * W`` and a bias (added if the layer had none).  A
    BatchNorm2d that does not follow a Conv2d/Linear is kept as it is.
    The input network is not modified; outputs agree up to rounding.
    """
    layers = []
    for layer in net:
        prev = layers[-1] if layers else None
        if isinstance(layer, BatchNorm2d) and isinstance(prev, (Conv2d, Linear)) \
                and prev.weight.shape[0] == layer.num_features:
            scale, shift = layer.scale_shift()
            # prev is already this function's own copy: change it in place.
            bias = prev.bias if prev.bias is not None else 0
            prev.bias = (bias * scale + shift).astype(prev.weight.dtype)
            prev.weight = prev.weight * scale.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
        else:
            layers.append(layer.copy())
    return Sequential(*layers, input_shape=getattr(net, "input_shape", None), meta=getattr(net, "meta", None))

