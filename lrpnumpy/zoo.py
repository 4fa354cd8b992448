"""Reference architectures with seeded random weights (for benchmarks, demos and tests), and the
trained models shipped with the package (:func:`trained`)."""

import importlib.resources

import numpy as np

from .errors import ParameterError
from .layers import Add, Conv2d, Flatten, GlobalAvgPool2d, Graph, Linear, MaxPool2d, ReLU, Sequential, SumPool2d


def _seeded(net, rng, bias_scale):
    for layer in net:
        if getattr(layer, "bias", None) is not None:
            layer.bias = rng.normal(scale=bias_scale, size=layer.bias.shape).astype(layer.bias.dtype)
    return net


def lenet5(seed=0, dtype=np.float64, bias_scale=0.05):
    """LeNet-5 on 1x28x28: conv5 1->6 pad 2, pool, conv5 6->16, pool, 400-120-84-10."""
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=dtype)
    return _seeded(Sequential(
        Conv2d(1, 6, 5, padding=2, **kw), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5, **kw), ReLU(), MaxPool2d(2), Flatten(),
        Linear(400, 120, **kw), ReLU(), Linear(120, 84, **kw), ReLU(), Linear(84, 10, **kw),
        input_shape=(1, 28, 28)), rng, bias_scale)


def toolbox_lenet(seed=0, dtype=np.float64, bias_scale=0.05):
    """The LRP Toolbox's LeNet on 1x32x32: conv5 1->10, sumpool, conv5 10->25, sumpool, conv4 25->100,
    sumpool, conv1 100->10, flatten; its sum pooling divides the window sum by sqrt(2 * 2), as the
    Toolbox's does (so ``io.save_lrp_toolbox`` can write it)."""
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=dtype)
    return _seeded(Sequential(
        Conv2d(1, 10, 5, **kw), ReLU(), SumPool2d(2, scale=0.5), Conv2d(10, 25, 5, **kw), ReLU(),
        SumPool2d(2, scale=0.5), Conv2d(25, 100, 4, **kw), ReLU(), SumPool2d(2, scale=0.5), Conv2d(100, 10, 1, **kw),
        Flatten(), input_shape=(1, 32, 32)), rng, bias_scale)


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(seed=0, dtype=np.float64, bias_scale=0.01, num_classes=1000):
    """VGG-16 (configuration D, no batch norm) on 3x224x224."""
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=dtype)
    layers, c = [], 3
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(MaxPool2d(2))
        else:
            layers += [Conv2d(c, v, 3, padding=1, **kw), ReLU()]
            c = v
    layers += [Flatten(), Linear(512 * 7 * 7, 4096, **kw), ReLU(), Linear(4096, 4096, **kw), ReLU(),
               Linear(4096, num_classes, **kw)]
    return _seeded(Sequential(*layers, input_shape=(3, 224, 224)), rng, bias_scale)


def resnet50(seed=0, dtype=np.float64, bias_scale=0.01, num_classes=1000, blocks=(3, 4, 6, 3)):
    """ResNet-50 (torchvision's layout, bottleneck blocks with the stride on the 3x3 convolution) on
    3x224x224, as a :class:`~lrpnumpy.layers.Graph`, with its batch norms folded into the convolutions
    (so every convolution has a bias).

    The last convolution of each residual branch has its He-normal weights scaled by 0.2 (the role
    of torchvision's option of zero-initialising the last batch norm), so activations stay of
    moderate size through the 16 residual sums.  ``blocks`` gives the blocks per stage
    ((2, 2, 2, 2) makes a smaller bottleneck network for tests).
    """
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=dtype)
    nodes = [("conv1", Conv2d(3, 64, 7, stride=2, padding=3, **kw), "input"), ("relu", ReLU(), "conv1"),
             ("maxpool", MaxPool2d(3, 2, padding=1), "relu")]
    x, c = "maxpool", 64
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(count):
            stride, name = (2 if stage > 1 and b == 0 else 1), f"layer{stage}.{b}"
            last = Conv2d(width, 4 * width, 1, **kw)
            last.weight = last.weight * dtype(0.2)
            nodes += [(f"{name}.conv1", Conv2d(c, width, 1, **kw), x),
                      (f"{name}.relu1", ReLU(), f"{name}.conv1"),
                      (f"{name}.conv2", Conv2d(width, width, 3, stride=stride, padding=1, **kw), f"{name}.relu1"),
                      (f"{name}.relu2", ReLU(), f"{name}.conv2"),
                      (f"{name}.conv3", last, f"{name}.relu2")]
            skip = x
            if b == 0:
                skip = f"{name}.downsample"
                nodes.append((skip, Conv2d(c, 4 * width, 1, stride=stride, **kw), x))
            nodes += [(f"{name}.add", Add(), [f"{name}.conv3", skip]), (f"{name}.relu3", ReLU(), f"{name}.add")]
            x, c = f"{name}.relu3", 4 * width
    nodes += [("avgpool", GlobalAvgPool2d(), x), ("flatten", Flatten(), "avgpool"),
              ("fc", Linear(c, num_classes, **kw), "flatten")]
    return _seeded(Graph(nodes, input_shape=(3, 224, 224)), rng, bias_scale)


MODELS = {"lenet5": lenet5, "toolbox_lenet": toolbox_lenet, "vgg16": vgg16, "resnet50": resnet50}


#: The trained Fashion-MNIST models shipped as package data, ``lrpnumpy/data/NAME.npz`` (their test
#: accuracy and how to train them again: the repository's ``data/README.rst``); ``fashion_clever_hans`` and
#: ``fashion_clean`` are the Clever Hans model (a planted mark on half of its Shirt training images) and its
#: clean twin; ``fashion_vit`` is a small vision transformer (its metadata names ``"attnlrp"`` as its composite).
TRAINED = ("fashion_mlp", "fashion_cnn_sumpool", "fashion_cnn_maxpool", "fashion_clever_hans", "fashion_clean",
           "fashion_vit")
#: The text classifiers shipped as package data (quotations in six categories, :func:`lrpnumpy.text.fortunes`):
#: a bag of words, an embedding + 1-D CNN and a bidirectional LSTM; read text with :func:`lrpnumpy.text.text_model`.
TEXT_TRAINED = ("fortunes_bow", "fortunes_cnn", "fortunes_lstm")


def trained(name, dtype=None):
    """A trained model shipped with lrpnumpy, read from the package data with :mod:`importlib.resources`.

    Parameters
    ----------
    name : str
        One of :data:`TRAINED` or :data:`TEXT_TRAINED`.
    dtype : float32 or float64, optional
        Converts the parameters; None keeps the file's (float32).
    """
    from .datasets import shipped_file
    from .io import load
    if name not in TRAINED + TEXT_TRAINED:
        raise ParameterError(f"{name!r} is not a shipped trained model; shipped: {', '.join(TRAINED + TEXT_TRAINED)} "
                             f"(random-weight architectures: {', '.join(MODELS)})")
    with importlib.resources.as_file(shipped_file(f"{name}.npz")) as path:
        return load(path, dtype=dtype)
