"""Check lrpnumpy's numbers against Zennit and Captum on the same network, weights and inputs.

:func:`to_torch` builds the equivalent PyTorch module (float64, same weights); :func:`compare`
runs a method on both sides and reports the largest differences.  Relevance is seeded on both
sides with the target logit (``onehot * output``); gradient methods with the one-hot vector.

Known differences, reproduced here by configuring lrpnumpy (see :data:`NOTES`):

* Zennit: the conventions lrpnumpy's rules follow.  ReLU passes relevance, max pooling uses
  the gradient (first index wins ties), average pooling the Norm rule, epsilon 1e-6; BatchNorm
  must be folded (its merge canonizer is not applied by default); the first layer is only
  hooked when the input requires grad (set here); Python-float ZBox bounds become float32
  tensors in Zennit, so they are passed as float64 tensors.
* Captum: keeps the raw bias in every rule (its gamma rule changes only ``W <- W + gamma W+``,
  its alpha1-beta0 rule only ``W <- W+``, neither splits inputs by sign), uses epsilon 1e-9,
  and applies its epsilon rule to pooling layers (max pooling included).  lrpnumpy reproduces
  it with :class:`~lrpnumpy.rules.Rho` (``bias="raw"``) and ``Epsilon(1e-9)`` on pooling.

Ill-conditioned rows: two correct float64 implementations round differently, so a decision the last
bits make (a max-pool window's winner among taps a few ulps apart, a ReLU or a stabilizer's sign at
0) can go differently, and the explanations then differ by far more than rounding.  A failing row
is checked for these near-ties (:func:`near_ties`, both sides' forward values) and re-run with the
reference computing from lrpnumpy's forward values (every tie broken alike); if it then agrees, the
row is ``ill-conditioned (N near-ties)``, not ``FAIL``.  A method a side cannot run gives an ``n/a``
row that says why; :func:`compare` never stops at one.
"""

import gc
from types import SimpleNamespace

import numpy as np

from . import composites as C
from . import methods as M
from .canonize import fold_batchnorm
from .errors import LRPError, MissingDependencyError, ModelFormatError, ShapeError, UnsupportedLayerError
from .explain import explain, logit_network, target_onehot, without_softmax
from .layers import (Add, AvgPool2d, BatchNorm2d, ChannelAffine, ChannelShuffle, Concat, Conv2d, Dropout, Flatten,
                     GlobalAvgPool2d, Graph, Linear, MaxPool2d, ReLU, SumPool2d, Tanh)
from .layers import WEIGHTED, AdaptiveAvgPool2d, Hardtanh, LeakyReLU, ReLU6
from .layers import (GRU, LSTM, AvgPool1d, Conv1d, Embedding, GlobalMaxPool1d, MaxPool1d, Sequential, Sigmoid, SumPool1d,
                     Transpose)
from .rules import (AlphaBeta, Epsilon, Flat, Gamma, Rho, WSquare, ZBox, ZPlus)

ZENNIT_RULE_METHODS = ("epsilon", "zplus", "alpha_beta_2_1", "alpha_beta_1_0", "gamma", "zbox", "flat", "wsquare")
ZENNIT_COMPOSITES = ("epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus_flat",
                     "epsilon_alpha2_beta1_flat")
GRADIENT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad")
CAPTUM_METHODS = ("epsilon", "gamma", "alpha_beta_1_0")

NOTES = {
    ("zennit", "*"): "same conventions; relevance seeded with the target logit",
    ("captum", "epsilon"): "Captum: epsilon 1e-9 on Conv/Linear and on every pooling layer (max pooling too); "
                           "lrpnumpy: Epsilon(1e-9) on the same layers",
    ("captum", "gamma"): "Captum: W + gamma W+ with the raw bias, no sign split of inputs, epsilon 1e-9; "
                         "lrpnumpy: Rho('gamma', bias='raw', epsilon=1e-9) (differs from Zennit's Gamma)",
    ("captum", "alpha_beta_1_0"): "Captum: W+ with the raw bias, no sign split of inputs, epsilon 1e-9; "
                                  "lrpnumpy: Rho('positive', bias='raw', epsilon=1e-9) (differs from ZPlus)",
}


#: :func:`compare` gives Zennit dense layers in blocks of at most this many bytes of weights (see
#: :func:`to_torch`), which bounds the memory of its rules on large dense layers.
SPLIT_BYTES = 64 << 20


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("verification needs PyTorch: pip install 'lrpnumpy[reference]'") from exc
    return torch


def _symmetric(layer):
    p = layer.padding
    if p[0] != p[1] or p[2] != p[3]:
        raise UnsupportedLayerError(f"{layer!r}: asymmetric padding has no direct PyTorch equivalent here")
    return p[0], p[2]


def _no_dilation(layer):
    if layer.dilation != (1, 1):
        raise UnsupportedLayerError(f"{layer!r}: PyTorch has no dilated sum/average pooling")


def _sum_pool(nn, layer):
    _no_dilation(layer)
    if layer.ceil_mode:
        raise UnsupportedLayerError(f"{layer!r}: sum pooling in ceil mode has no PyTorch equivalent here")
    factor = layer.kernel_size[0] * layer.kernel_size[1] * layer.scale

    class SumPool(nn.AvgPool2d):  # an AvgPool2d, so Zennit and Captum treat it as average pooling
        def forward(self, x):
            return super().forward(x) * factor
    return SumPool(layer.kernel_size, layer.stride, _symmetric(layer), count_include_pad=True)


def _avg_pool(nn, layer):
    _no_dilation(layer)
    return nn.AvgPool2d(layer.kernel_size, layer.stride, _symmetric(layer), ceil_mode=layer.ceil_mode,
                        count_include_pad=layer.count_include_pad)


def _pad1d(layer):
    left, right = layer.padding[2:]
    if left != right:
        raise UnsupportedLayerError(f"{layer!r}: asymmetric padding has no direct PyTorch equivalent here")
    return left


def _sum_pool1d(nn, layer):
    factor = layer.kernel_size[1] * layer.scale

    class SumPool(nn.AvgPool1d):  # an AvgPool1d, so Zennit and Captum treat it as average pooling
        def forward(self, x):
            return super().forward(x) * factor
    return SumPool(layer.kernel_size[1], layer.stride[1], _pad1d(layer), count_include_pad=True)


def _global_max_pool1d(nn, layer):
    class GlobalMaxPool1d(nn.AdaptiveMaxPool1d):  # (N, C, L) -> (N, C): the gradient rule in Zennit, as here
        def forward(self, x):
            return super().forward(x)[:, :, 0]
    return GlobalMaxPool1d(1)


def _transpose(nn, layer):
    class Permute(nn.Module):  # no parameters and no rule: relevance follows the gradient (permuted back)
        def forward(self, x):
            return x.permute(*layer.perm)
    return Permute()


def _batchnorm(nn, layer):
    return nn.BatchNorm2d(layer.num_features, eps=layer.eps, device="meta")


#: lrpnumpy layer type -> the equivalent torch module (weights are copied afterwards); Flatten is
#: applied functionally instead (Captum has no rule for ``nn.Flatten``).
TORCH_MODULES = {
    Linear: lambda nn, m: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta"),
    Conv2d: lambda nn, m: nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                                    padding=_symmetric(m), dilation=m.dilation, groups=m.groups,
                                    bias=m.bias is not None, device="meta"),
    SumPool2d: _sum_pool,
    AvgPool2d: _avg_pool,
    MaxPool2d: lambda nn, m: nn.MaxPool2d(m.kernel_size, m.stride, _symmetric(m), dilation=m.dilation,
                                          ceil_mode=m.ceil_mode),
    GlobalAvgPool2d: lambda nn, m: nn.AdaptiveAvgPool2d(1),
    ReLU: lambda nn, m: nn.ReLU(),
    Tanh: lambda nn, m: nn.Tanh(),
    Hardtanh: lambda nn, m: nn.Hardtanh(m.min_val, m.max_val),
    ReLU6: lambda nn, m: nn.ReLU6(),
    LeakyReLU: lambda nn, m: nn.LeakyReLU(m.negative_slope),
    AdaptiveAvgPool2d: lambda nn, m: nn.AdaptiveAvgPool2d(m.output_size),
    Dropout: lambda nn, m: nn.Dropout(m.p),
    BatchNorm2d: _batchnorm,
    # 1-D layers of text models (their sequence-layer code runs them as the 2-D ones, so the rules agree)
    Conv1d: lambda nn, m: nn.Conv1d(m.in_channels, m.out_channels, m.kernel_size[1], stride=m.stride[1],
                                    padding=_pad1d(m), dilation=m.dilation[1], groups=m.groups,
                                    bias=m.bias is not None, device="meta"),
    MaxPool1d: lambda nn, m: nn.MaxPool1d(m.kernel_size[1], m.stride[1], _pad1d(m)),
    AvgPool1d: lambda nn, m: nn.AvgPool1d(m.kernel_size[1], m.stride[1], _pad1d(m), ceil_mode=m.ceil_mode,
                                          count_include_pad=m.count_include_pad),
    SumPool1d: _sum_pool1d,
    GlobalMaxPool1d: _global_max_pool1d,
    Transpose: _transpose,
    Sigmoid: lambda nn, m: nn.Sigmoid(),
}


def to_torch(net, copy=True, split_bytes=None):
    """The equivalent float64 PyTorch module (same weights, eval mode) of a Sequential or Graph.

    With ``copy=False`` the module's float64 tensors share memory with the network's arrays
    (no second copy of a large model); Zennit's canonizers and rules replace tensors rather than
    writing into them, so the network is left unchanged.

    With ``split_bytes``, a Linear layer whose weight is larger (other than the network's first
    Conv2d/Linear, which composites may treat specially) becomes several ``nn.Linear`` modules
    on the same input, each computing a block of the outputs, concatenated: the same function,
    and, since every LRP rule's denominator belongs to one output neuron, the same relevance
    (the blocks' relevance adds up at the shared input).  Zennit then modifies one block's
    weights at a time: its Gamma rule keeps four modified copies of a layer's weights, 3.3 GB
    for vgg16's first dense layer in float64.

    Each layer type's torch equivalent is in :data:`TORCH_MODULES`.  Flatten is applied
    functionally (Captum has no rule for ``nn.Flatten``); sum pooling is an ``nn.AvgPool2d``
    subclass scaled by ``kh * kw``, so Zennit and Captum treat it as average pooling.  In a
    Graph, :class:`~lrpnumpy.layers.Add` becomes Zennit's ``Sum`` module on the stacked inputs
    (so Zennit's composites give it the Norm rule, as lrpnumpy does), Concat and ChannelShuffle
    plain tensor operations (relevance passes through them as the gradient).  A trailing
    Softmax is dropped: the logits are compared.
    """
    torch = _torch()
    nn = torch.nn

    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float64, copy=copy or None))

    first = next((layer for layer in net if isinstance(layer, WEIGHTED)), None)

    def module(layer):
        if isinstance(layer, Flatten):
            return "flatten"
        if split_bytes and isinstance(layer, Linear) and layer is not first and layer.weight.nbytes > split_bytes:
            return _row_blocks(nn, layer, split_bytes, t)
        make = TORCH_MODULES.get(type(layer))
        if make is None:
            raise UnsupportedLayerError(f"{layer!r} has no PyTorch equivalent in lrpnumpy.verify")
        return _with_params(nn, make(nn, layer), layer, t)

    if isinstance(net, Graph):
        net = without_softmax(net)
        return _GraphModule(nn)(net, [module(layer) for layer in net]).double().eval()

    class Chain(nn.Module):
        def __init__(self, steps, layers):
            super().__init__()
            self.steps, self.lrp_layers, self.record, self.pin = steps, layers, None, False
            self.layers = nn.ModuleList([s for s in steps if s != "flatten"])

        def forward(self, x):
            modules = iter(self.layers)
            for k, step in enumerate(self.steps):
                x = _step_output(self, k, x.flatten(1) if step == "flatten" else next(modules)(x), (x,))
            return x

    net = without_softmax(net)
    return Chain([module(layer) for layer in net], list(net)).double().eval()


def _step_output(tnet, k, y, args):
    """Step ``k``'s output ``y``: recorded (``tnet.record``, a list) and, with ``tnet.pin``, given the value
    lrpnumpy's layer computes from the same inputs while keeping torch's graph for the backward pass
    (``y + (value - y).detach()``), so that both sides see the same forward values: every max-pool
    winner, ReLU mask and stabilizer sign is then decided alike (see :func:`near_ties`)."""
    if tnet.record is not None:
        tnet.record.append(y.detach().numpy().copy())
    if tnet.pin:
        value = tnet.lrp_layers[k].forward(*(a.detach().numpy() for a in args))
        y = y + (_torch().from_numpy(value) - y).detach()
    return y


def _row_blocks(nn, layer, split_bytes, tensor):
    """``layer`` as ``nn.Linear`` blocks of at most ``split_bytes`` of weights each, outputs concatenated."""
    torch = _torch()
    rows = max(1, split_bytes // (layer.weight.shape[1] * layer.weight.itemsize))

    class RowBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList()
            for start in range(0, layer.out_features, rows):
                stop = min(start + rows, layer.out_features)
                part = Linear.from_config(  # views of the rows: no copy
                    dict(in_features=layer.in_features, out_features=stop - start, bias=layer.bias is not None),
                    dict(weight=layer.weight[start:stop], bias=None if layer.bias is None else layer.bias[start:stop]))
                self.blocks.append(_with_params(nn, TORCH_MODULES[Linear](nn, part), part, tensor))

        def forward(self, x):
            return torch.cat([block(x) for block in self.blocks], dim=1)
    return RowBlocks()


def _GraphModule(nn):
    class GraphModule(nn.Module):
        """Runs the nodes of an lrpnumpy Graph in its execution order."""

        def __init__(self, graph, modules):
            super().__init__()
            self.steps = [(m, [graph.names.index(n) if n != graph.input_name else -1 for n in graph.inputs[name]])
                          for name, m in zip(graph.names, modules)]
            self.nodes = nn.ModuleList([m for m in modules if m != "flatten"])
            self.lrp_layers, self.record, self.pin = list(graph), None, False

        def forward(self, x):
            outputs, modules = [], iter(self.nodes)
            for k, (m, parents) in enumerate(self.steps):
                args = [x if p < 0 else outputs[p] for p in parents]
                if m == "flatten":
                    y = args[0].flatten(1)
                elif getattr(m, "stacked", False):  # Zennit's hooks see one input: the stacked tensors
                    y = next(modules)(_torch().stack(args, dim=-1))
                else:
                    y = next(modules)(*args)
                outputs.append(_step_output(self, k, y, args))
            return outputs[-1]
    return GraphModule


def _add(nn, layer):
    """Zennit's ``Sum`` over the last axis of the stacked inputs (the graph module stacks them)."""
    if layer.coefficients is not None:
        raise UnsupportedLayerError(f"{layer!r}: weighted sums have no Zennit equivalent here")
    try:
        from zennit.layer import Sum
    except ImportError:
        class Sum(nn.Module):
            def forward(self, x):
                return x.sum(dim=-1)
    module = Sum()
    module.stacked = True
    return module


def _concat(nn, layer):
    class Cat(nn.Module):
        def forward(self, *inputs):
            return _torch().cat(inputs, dim=1)
    return Cat()


def _shuffle(nn, layer):
    class Shuffle(nn.Module):
        def forward(self, x):
            n, c = x.shape[:2]
            g = layer.groups
            return x.reshape(n, g, c // g, *x.shape[2:]).transpose(1, 2).reshape(x.shape)
    return Shuffle()


def _channel_affine(nn, layer):
    class ChannelAffine(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = self.bias = None

        def forward(self, x):
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = x if self.weight is None else x * self.weight.reshape(shape)
            return y if self.bias is None else y + self.bias.reshape(shape)
    return ChannelAffine()


TORCH_MODULES.update({Add: _add, Concat: _concat, ChannelShuffle: _shuffle, ChannelAffine: _channel_affine})


# ----- sequence layers (issue 28): the modules torch text models are built of -----

def _embedding(nn, layer):
    class Embedding(nn.Embedding):  # the network's input holds the ids as whole floats
        def forward(self, x):
            return super().forward(x.long())
    return Embedding(layer.num_embeddings, layer.embedding_dim, device="meta")


def _recurrent(nn, layer):
    """``torch.nn.LSTM`` / ``GRU`` (batch first) with the layer's weights (direction k is torch's suffix
    ``_reverse`` for k = 1); output the sequence, or the final states of the directions side by side."""
    torch = _torch()
    cell = getattr(nn, type(layer).__name__)(layer.input_size, layer.hidden_size, batch_first=True,
                                             bidirectional=layer.bidirectional, dtype=torch.float64)
    for name in layer.params:
        for k in range(layer.dirs):
            value = torch.from_numpy(np.array(getattr(layer, name)[k], dtype=np.float64))
            setattr(cell, f"{name}_l0{'_reverse' if k else ''}", nn.Parameter(value, requires_grad=False))
    last = layer.output == "last"

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell

        def forward(self, x):
            out, h = self.rnn(x)
            h = h[0] if isinstance(h, tuple) else h
            return torch.cat(list(h), dim=1) if last else out
    return Recurrent()


TORCH_MODULES.update({Embedding: _embedding, LSTM: _recurrent, GRU: _recurrent})


def _with_params(nn, module, layer, tensor):
    """``module`` (built on the meta device: no memory, no random init) given the layer's values."""
    for name in layer.params:
        value = getattr(layer, name, None)
        if value is None:
            continue
        if name in ("running_mean", "running_var") or not isinstance(getattr(module, name, None), nn.Parameter):
            setattr(module, name, tensor(value))
        else:
            setattr(module, name, nn.Parameter(tensor(value), requires_grad=False))
    if hasattr(module, "num_batches_tracked"):
        module.num_batches_tracked = _torch().zeros((), dtype=_torch().long)
    return module.double()


def canonize(module, x):
    """A float64 copy of the user's torch ``module`` rewritten as Zennit needs it, and what was done.

    Zennit's rules see modules, not functions, so two things in a user's network make it explain
    another function than lrpnumpy does: a BatchNorm (Zennit gives it the Pass rule unless merged;
    lrpnumpy folds it into the layer before) and a ``+`` in ``forward`` (no module, so no rule:
    relevance follows the gradient to both summands instead of being split by their
    contributions).  The module is traced with ``torch.fx``; each BatchNorm whose input is a
    Conv/Linear module used nowhere else is merged into it with Zennit's ``NamedMergeBatchNorm``
    (its eps then set to 0, so that the emptied BatchNorm is exactly the identity), and each
    ``a + b`` of two tensors of the same shape becomes Zennit's ``Sum`` on ``torch.stack([a, b],
    -1)`` (the Norm rule, as lrpnumpy's Add).  What cannot be rewritten is left and said.

    Parameters
    ----------
    module : torch.nn.Module
        Not changed (a deep copy is rewritten).
    x : ndarray
        An example input batch (for the shapes of the summands).

    Returns
    -------
    (torch.nn.Module, list of str)
        The rewritten float64 module in eval mode, and one line per canonizer applied or rewrite
        not made.
    """
    import copy
    import operator
    torch = _torch()
    nn = torch.nn
    module = copy.deepcopy(module).double().eval()
    try:
        import torch.fx
        from torch.fx.passes.shape_prop import ShapeProp
        gm = torch.fx.symbolic_trace(module)
        ShapeProp(gm).propagate(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))
    except Exception as exc:  # noqa: BLE001 - any tracing failure: the module is used as it is, and said so
        return module, [f"none: torch.fx cannot trace the module ({_reason(exc)}); its BatchNorms and + are "
                        f"left as they are, so Zennit may explain another function"]
    from zennit.canonizers import NamedMergeBatchNorm
    from zennit.layer import Sum
    modules = dict(gm.named_modules())
    applied, pairs, left = [], [], []
    linear = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        bn, src = modules[node.target], node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules[src.target], linear)
                and len(src.users) == 1 and bn.affine and bn.running_mean is not None):
            pairs.append(([src.target], node.target))
        else:
            left.append(f"BatchNorm {node.target} left unmerged (its input is not a Conv/Linear module used only "
                        f"by it): Zennit gives it the Pass rule, lrpnumpy folds it")
    if pairs:
        for instance in NamedMergeBatchNorm(pairs).apply(gm):
            instance.batch_norm.eps = 0.0  # the emptied BatchNorm: exactly the identity
        applied.append("merged BatchNorm into the layer before (zennit.canonizers.NamedMergeBatchNorm): "
                       + ", ".join(f"{bn} into {lin[0]}" for lin, bn in pairs))
    adds = (operator.add, operator.iadd, torch.add)
    summed = []
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in adds) or \
            (node.op == "call_method" and node.target in ("add", "add_", "__add__"))
        if not is_add or len(node.args) != 2 or node.kwargs:
            continue
        a, b = node.args
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or "get_attr" in (a.op, b.op):
            continue  # a tensor plus a constant or a parameter: a bias, no summands to split relevance between
        shapes = [n.meta.get("tensor_meta") for n in (a, b)]
        if any(m is None or not hasattr(m, "shape") for m in shapes) or shapes[0].shape != shapes[1].shape:
            left.append(f"{node.name} ({a.name} + {b.name}) left as it is: its summands' shapes differ (broadcast)")
            continue
        name = f"zennit_sum_{len(summed)}"
        gm.add_submodule(name, Sum())
        with gm.graph.inserting_before(node):
            stacked = gm.graph.call_function(torch.stack, ([a, b],), {"dim": -1})
            new = gm.graph.call_module(name, (stacked,))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        summed.append(f"{node.name} ({a.name} + {b.name})")
    if summed:
        gm.graph.lint()
        gm.recompile()
        applied.append(f"replaced {len(summed)} + by zennit.layer.Sum on the stacked summands (the Norm rule): "
                       + ", ".join(summed))
    return gm.eval(), (applied or ["nothing to rewrite (no BatchNorm, no + of two tensors)"]) + left


def _bounds(net, x):
    """Scalar bounds below and above every Conv2d/Linear input (for ZBox on every layer)."""
    _, trace = net.forward_trace(x)
    inputs = [step.input for step in trace if isinstance(step.layer, WEIGHTED)]
    return min(0.0, min(float(a.min()) for a in inputs)) - 1.0, max(float(a.max()) for a in inputs) + 1.0


def _lrpnumpy_rule(method, low, high):
    return {"epsilon": Epsilon(), "zplus": ZPlus(), "alpha_beta_2_1": AlphaBeta(2, 1),
            "alpha_beta_1_0": AlphaBeta(1, 0), "gamma": Gamma(0.25), "zbox": ZBox(low, high), "flat": Flat(),
            "wsquare": WSquare()}[method]


def _zennit_composite(method, low, high):
    from zennit import composites as zc, rules as zr
    from zennit.layer import Sum
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution
    import torch
    # Zennit turns Python-float bounds into float32 tensors; float64 tensors keep them exact.
    low, high = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    if method in ZENNIT_COMPOSITES:
        cls = {"epsilon_plus": zc.EpsilonPlus, "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
               "epsilon_gamma_box": zc.EpsilonGammaBox, "epsilon_plus_flat": zc.EpsilonPlusFlat,
               "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat}[method]
        bounds = dict(low=low, high=high)
        return cls(**{k: bounds[k] for k in C.REGISTRY[method].needs})
    rule = {"epsilon": lambda: zr.Epsilon(1e-6), "zplus": zr.ZPlus, "alpha_beta_2_1": lambda: zr.AlphaBeta(2, 1),
            "alpha_beta_1_0": lambda: zr.AlphaBeta(1, 0), "gamma": lambda: zr.Gamma(0.25),
            "zbox": lambda: zr.ZBox(low, high), "flat": zr.Flat, "wsquare": zr.WSquare}[method]()
    base = [(Activation, zr.Pass()), (Sum, zr.Norm()), (AvgPool, zr.Norm()), (BatchNorm, zr.Pass())]
    return zc.LayerMapComposite(base + [((Convolution, torch.nn.Linear), rule)])


def _run_lrpnumpy(method, net, x, target, low, high, against, noise, alphas):
    if method in GRADIENT_METHODS:
        return {"gradient": lambda: M.gradient(net, x, target),
                "gradient_x_input": lambda: M.gradient_x_input(net, x, target),
                "integrated_gradients": lambda: M.integrated_gradients(net, x, target, alphas=alphas),
                "smoothgrad": lambda: M.smoothgrad(net, x, target, n=len(noise) + 1, noise=noise)}[method]().relevance
    if against == "captum":
        pools = (SumPool2d, MaxPool2d, GlobalAvgPool2d)
        rule = {"epsilon": Epsilon(1e-9), "gamma": Rho("gamma", 0.25, bias="raw", epsilon=1e-9),
                "alpha_beta_1_0": Rho("positive", bias="raw", epsilon=1e-9)}[method]
        comp = C.Composite([((Conv2d, Linear), rule), (pools, Epsilon(1e-9))])
        return explain(net, x, target, composite=comp).relevance
    if method in ZENNIT_COMPOSITES:
        return explain(net, x, target, composite=C.get(method, bounds=(low, high))).relevance
    return explain(net, x, target, rule=_lrpnumpy_rule(method, low, high)).relevance


def _run_zennit(method, tnet, x, onehot, low, high, noise, alphas):
    import torch
    from zennit.attribution import Gradient
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    oh = torch.from_numpy(onehot)
    if method in GRADIENT_METHODS:
        out, grad = Gradient(model=tnet)(xt, oh)
        if method == "gradient":
            return grad.numpy()
        if method == "gradient_x_input":
            return (grad * xt).detach().numpy()
        if method == "integrated_gradients":
            from zennit.attribution import IntegratedGradients
            _, attr = IntegratedGradients(model=tnet, n_iter=len(alphas))(xt, oh)
            return attr.detach().numpy()
        from zennit.attribution import SmoothGrad
        draws = iter(torch.from_numpy(noise))
        original = torch.randn_like
        torch.randn_like = lambda t, **kw: next(draws).to(t)  # the same standard-normal draws as lrpnumpy
        try:
            _, attr = SmoothGrad(model=tnet, n_iter=len(noise) + 1, noise_level=0.1)(xt, oh)
        finally:
            torch.randn_like = original
        return attr.detach().numpy()
    with Gradient(model=tnet, composite=_zennit_composite(method, low, high)) as attributor:
        _, rel = attributor(xt, lambda out: out * oh)
    return rel.detach().numpy()


def _run_captum(method, tnet, x, target):
    import torch
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
    for m in tnet.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.rule = {"epsilon": EpsilonRule, "gamma": GammaRule, "alpha_beta_1_0": Alpha1_Beta0_Rule}[method]()
        elif isinstance(m, torch.nn.AvgPool2d) and type(m) is not torch.nn.AvgPool2d:
            m.rule = EpsilonRule()  # our sum pool: an AvgPool2d subclass Captum does not list
    _captum_has_rules(tnet)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    rel = LRP(tnet).attribute(xt, target=torch.from_numpy(np.asarray(target)))
    return rel.detach().numpy()


def _captum_has_rules(tnet):
    """Refuse, naming the module type, a network Captum's LRP has no rule for (a residual sum, say): Captum
    would raise only after setting rules on some modules, which breaks its next run on them."""
    from captum.attr._core import lrp
    known = tuple(lrp.SUPPORTED_LAYERS_WITH_RULES) + tuple(lrp.SUPPORTED_NON_LINEAR_LAYERS)
    for m in tnet.modules():
        if not list(m.children()) and not hasattr(m, "rule") and type(m) not in known:
            raise UnsupportedLayerError(f"captum has no rule for {type(m).__name__}")


# ----- the other explanation methods: one table of cases, (implementation, method) -> both sides -----

def _case(ours, theirs, note, rtol=0.0):
    """A verification case: ``ours(ctx)`` and ``theirs(ctx)`` give the relevance arrays; ``rtol`` is a
    tolerance the reference's own precision needs (it loosens, never tightens, compare's rtol)."""
    return {"ours": ours, "theirs": theirs, "note": note, "rtol": rtol}


def _captum_attr(ctx, name, module=None, **kwargs):
    import torch
    import captum.attr
    cls = getattr(captum.attr, name)
    attributor = cls(ctx.tnet) if module is None else cls(ctx.tnet, module)
    xt = torch.from_numpy(ctx.x.copy()).requires_grad_(True)
    return attributor.attribute(xt, target=torch.from_numpy(ctx.target), **kwargs).detach().numpy()


def _captum_smoothgrad(ctx):
    """Captum's NoiseTunnel over Saliency with lrpnumpy's standard-normal draws (in Captum's order:
    each sample's draws together)."""
    import torch
    from captum.attr import NoiseTunnel, Saliency
    n = len(ctx.noise_all)
    draws = torch.from_numpy(np.ascontiguousarray(np.swapaxes(ctx.noise_all, 0, 1)).reshape((-1,) + ctx.x.shape[1:]))
    original = torch.normal
    torch.normal = lambda mean, std, *a, **k: mean + std * draws
    try:
        xt = torch.from_numpy(ctx.x.copy()).requires_grad_(True)
        return NoiseTunnel(Saliency(ctx.tnet)).attribute(xt, nt_type="smoothgrad", nt_samples=n, stdevs=0.1,
                                                         target=torch.from_numpy(ctx.target), abs=False) \
            .detach().numpy()
    finally:
        torch.normal = original


def _captum_alphas(n):
    from captum.attr._utils.approximation_methods import approximation_parameters
    return np.asarray(approximation_parameters("riemann_right")[1](n), dtype=np.float64)


def _zennit_modified(ctx, composite):
    import torch
    from zennit import composites as zc
    from zennit.attribution import Gradient
    xt = torch.from_numpy(ctx.x.copy()).requires_grad_(True)
    with Gradient(model=ctx.tnet, composite=getattr(zc, composite)()) as attributor:
        _, grad = attributor(xt, torch.from_numpy(ctx.onehot))
    return grad.detach().numpy()


def _zennit_occlusion(ctx):
    import torch
    from zennit.attribution import Occlusion
    xt, oh = torch.from_numpy(ctx.x.copy()), torch.from_numpy(ctx.onehot)
    _, attr = Occlusion(model=ctx.tnet, window=(3, 3), stride=(2, 2))(xt, lambda out: out * oh)  # the target logit
    return attr.detach().numpy()


def _torch_module(tnet, k):
    """The torch module that computes step ``k`` of the network ``to_torch`` converted."""
    step = tnet.steps[k]
    module = step[0] if isinstance(step, tuple) else step
    if module == "flatten":
        raise UnsupportedLayerError(f"step {k} is a Flatten, which to_torch applies as a function")
    return module


def _grad_cam_layer(ctx):
    return M.grad_cam(ctx.net, ctx.x, ctx.target).params["layer"]


CASES = {
    ("captum", "gradient"): _case(lambda c: M.gradient(c.net, c.x, c.target).relevance,
                                  lambda c: _captum_attr(c, "Saliency", abs=False),
                                  "Captum: Saliency(abs=False); lrpnumpy: gradient"),
    ("captum", "gradient_x_input"): _case(lambda c: M.gradient_x_input(c.net, c.x, c.target).relevance,
                                          lambda c: _captum_attr(c, "InputXGradient"),
                                          "Captum: InputXGradient"),
    ("captum", "integrated_gradients"): _case(
        lambda c: M.integrated_gradients(c.net, c.x, c.target, alphas=_captum_alphas(c.n_steps)).relevance,
        lambda c: _captum_attr(c, "IntegratedGradients", n_steps=c.n_steps, method="riemann_right"),
        "Captum: IntegratedGradients(method='riemann_right'): alphas k/n, k = 1..n, as lrpnumpy's default"),
    ("captum", "smoothgrad"): _case(
        lambda c: M.smoothgrad(c.net, c.x, c.target, n=c.n_steps, noise=c.noise_all, stdev=0.1,
                               clean=False).relevance,
        _captum_smoothgrad,
        "Captum: NoiseTunnel(Saliency, nt_type='smoothgrad', stdevs=0.1), every pass noisy; lrpnumpy: "
        "smoothgrad(stdev=0.1, clean=False) (its default is Zennit's: one clean pass, std relative to the range)"),
    ("captum", "deeplift"): _case(lambda c: M.deeplift(c.net, c.x, c.target, maxpool="gradient").relevance,
                                  lambda c: _captum_attr(c, "DeepLift"),
                                  "Captum: DeepLift (Rescale), zero baseline; at max pooling Captum 0.9.0 passes the "
                                  "gradient (lrpnumpy: maxpool='gradient'; its default 'rescale' is complete for any "
                                  "baseline)"),
    ("captum", "guided_backprop"): _case(lambda c: M.guided_backprop(c.net, c.x, c.target).relevance,
                                         lambda c: _captum_attr(c, "GuidedBackprop"), "Captum: GuidedBackprop"),
    ("captum", "deconvnet"): _case(lambda c: M.deconvnet(c.net, c.x, c.target).relevance,
                                   lambda c: _captum_attr(c, "Deconvolution"), "Captum: Deconvolution"),
    ("captum", "occlusion"): _case(
        lambda c: M.occlusion(c.net, c.x, c.target, window=3, stride=2).relevance,
        lambda c: _captum_attr(c, "Occlusion", sliding_window_shapes=(c.x.shape[1], 3, 3), strides=(1, 2, 2)),
        "Captum: Occlusion, windows (C, 3, 3), strides 2, baseline 0; lrpnumpy's default convention.  Captum "
        "rounds its result to float32 (it divides by the window counts with .float()), so the rows agree to "
        "float32 precision", rtol=1e-6),
    ("captum", "grad_cam"): _case(
        lambda c: M.grad_cam(c.net, c.x, c.target, relu=False).relevance,
        lambda c: _captum_attr(c, "LayerGradCam", _torch_module(c.tnet, _grad_cam_layer(c))),
        "Captum: LayerGradCam at the last feature maps, relu_attributions=False; lrpnumpy: grad_cam(relu=False)"),
    ("zennit", "guided_backprop"): _case(lambda c: M.guided_backprop(c.net, c.x, c.target).relevance,
                                         lambda c: _zennit_modified(c, "GuidedBackprop"),
                                         "Zennit: the GuidedBackprop composite"),
    ("zennit", "deconvnet"): _case(lambda c: M.deconvnet(c.net, c.x, c.target).relevance,
                                   lambda c: _zennit_modified(c, "DeconvNet"), "Zennit: the DeconvNet composite"),
    ("zennit", "occlusion"): _case(
        lambda c: M.occlusion(c.net, c.x, c.target, window=3, stride=2, occlude="outside", score="output",
                              average=False, wrap=True).relevance,
        _zennit_occlusion,
        "Zennit: Occlusion(window=(3, 3), stride=(2, 2)) keeps the window, zeros the rest, sums the target logit "
        "over windows (wrapping around); lrpnumpy: occlusion(occlude='outside', score='output', average=False, "
        "wrap=True)"),
}
#: Methods that need image inputs (N, C, H, W); compare skips them by default for other inputs.
IMAGE_METHODS = ("occlusion", "grad_cam")
#: compare runs occlusion by default only up to this many pixels (it runs one forward pass per window:
#: 12,544 vgg16 passes at 224 x 224).
OCCLUSION_PIXELS = 64 * 64


def _by_default(method, x):
    """Whether compare runs ``method`` when no methods are named."""
    if method in IMAGE_METHODS and x.ndim != 4:
        return False
    return method != "occlusion" or x.shape[2] * x.shape[3] <= OCCLUSION_PIXELS


def available(name):
    """Whether the reference implementation ``name`` ("zennit" or "captum") can be imported."""
    try:
        __import__({"zennit": "zennit", "captum": "captum.attr"}[name])
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False


def default_methods(against):
    extra = tuple(m for impl, m in CASES if impl == against)
    if against == "captum":
        return CAPTUM_METHODS + extra
    return ZENNIT_RULE_METHODS + ZENNIT_COMPOSITES + GRADIENT_METHODS + extra


def compare(model, x, target=None, against=("zennit",), methods=None, rtol=1e-10, n_steps=8, seed=0, progress=None,
            chunk=None, torch_module=None, canonize_module=True):
    """Run each method in lrpnumpy and in each reference implementation; report the differences.

    Parameters
    ----------
    model : Sequential
        Converted to float64 (and BatchNorm folded into the layer before it) for both sides.  A
        text model that starts with an :class:`~lrpnumpy.layers.Embedding` (``x``: token ids) is
        compared from the embedding's output: the references explain float inputs.
    x : ndarray
        Input batch.
    target : None, int or sequence of int
        Class per sample; None: lrpnumpy's predicted class (used on both sides).
    against : sequence of {"zennit", "captum"}
    methods : sequence of str, optional
        Method names (snake case); default: every method the implementation supports.  A method
        is compared with each implementation that has it.
    rtol : float
        A row passes when ``max_abs <= rtol * max|reference|``.
    n_steps : int
        Steps of integrated gradients and passes of SmoothGrad.
    seed : int
        Seed of SmoothGrad's noise (the same draws on both sides).
    progress : callable, optional
        Called with each row as soon as its method is done (the command line prints them).
    chunk : int, optional
        Run both sides on this many samples at a time (every method explains each sample on its
        own, so the results are the same): the activations both sides keep scale with it, which
        bounds the memory of large models.  Default: the whole batch at once.
    torch_module : torch.nn.Module, optional
        The user's own module (e.g. the one ``lrpnumpy.io.from_torch`` converted into ``model``):
        the references run on it instead of on lrpnumpy's rebuild (:func:`to_torch`), after
        :func:`canonize` (BatchNorm merged, ``+`` made Zennit's ``Sum``); every row's note says
        which rewrites were applied.  Its outputs must equal ``model``'s (checked).  Near-ties are
        looked for only on the rebuild.
    canonize_module : bool
        False runs the references on ``torch_module`` as it is (float64, eval mode): what Zennit
        computes on a module nobody canonized.

    Notes
    -----
    The torch module shares the float64 network's memory (``to_torch(net, copy=False)``) and
    each method's results are freed before the next runs, so the peak memory is one copy of the
    float64 network plus what the most demanding single method needs on either side.  Zennit gets
    dense layers above :data:`SPLIT_BYTES` as blocks of output neurons (same function, same
    relevance), so that its rules modify one block of weights at a time.

    Returns
    -------
    list of dict
        One row per (method, implementation): ``method``, ``against``, ``max_abs``, ``max_rel``
        (``max_abs / max|reference|``), ``sum_lrpnumpy``, ``sum_reference`` (over the batch),
        ``sums_lrpnumpy``, ``sums_reference`` (one per sample), ``passed``, ``note``, and
        ``status``: ``"pass"``, ``"FAIL"``, ``"ill-conditioned"`` (it fails as computed, the
        forward passes agree to ``rtol``, there are near-ties (``near_ties``, their number;
        ``tie_layers``, by layer, see :func:`near_ties`), and it passes once the reference sees
        lrpnumpy's forward values, so that both sides break every tie alike: ``max_rel_ties_alike``)
        or ``"n/a"`` (a side cannot run the method; the numbers are None);
        ``reason`` says why for every status but ``"pass"``.

    Raises
    ------
    ShapeError
        ``x`` does not fit the model (``model.input_shape``, when recorded, is named).
    MissingDependencyError
        A reference implementation is not installed.
    """
    _check_input_shape(model, x)
    net = fold_batchnorm(logit_network(model, x))  # shares the layers it does not change
    net = net if net.dtype is None or net.dtype == np.float64 else net.astype(np.float64)
    x = x.astype(np.float64)
    embedded = None
    if torch_module is None and isinstance(net, Sequential) and len(net) > 1 and isinstance(net[0], Embedding):
        # the references explain a float input: the embedded sequence (lrpnumpy's per-token relevance is theirs
        # summed over the embedding's D)
        x, net, embedded = net[0].forward(x), Sequential(*list(net)[1:]), "from the Embedding's output"
    onehot = target_onehot(net.forward(x), target)
    target = onehot.argmax(axis=1)
    low, high = float(x.min()), float(x.max())
    zlow, zhigh = _bounds(net, x)
    noise = np.random.default_rng(seed).standard_normal((n_steps - 1,) + x.shape)
    noise_all = np.random.default_rng(seed).standard_normal((n_steps,) + x.shape)
    alphas = None
    for method in methods or ():
        if not any(method in default_methods(impl) for impl in against):
            raise UnsupportedLayerError(f"method {method!r} is not compared with {', '.join(against)}; choose from "
                                        f"{', '.join(sorted(set().union(*(default_methods(i) for i in against))))}")
    for impl in against:
        if impl not in ("zennit", "captum"):
            raise UnsupportedLayerError(f"unknown reference implementation {impl!r}; use 'zennit' or 'captum'")
        if not available(impl):
            raise MissingDependencyError(f"{impl} is not installed: pip install 'lrpnumpy[reference]'")
    slices = [slice(i, i + (chunk or len(x))) for i in range(0, len(x), chunk or len(x))]
    user, rewrites = (None, None) if torch_module is None else _user_module(torch_module, net, x, canonize_module)
    rows = []
    for impl in against:
        if impl == "zennit":
            import torch
            alphas = torch.linspace(1.0 / n_steps, 1.0, n_steps).double().numpy()  # Zennit's float32 steps
        tnet, no_torch, ties = None, None, None  # one torch copy per implementation
        for method in (methods or [m for m in default_methods(impl) if _by_default(m, x)]):
            if method not in default_methods(impl):
                continue  # e.g. the composites have no Captum counterpart; checked below
            lo, hi = (zlow, zhigh) if method == "zbox" else (low, high)
            if user is not None:
                tnet = user
            elif tnet is None and no_torch is None:
                try:
                    tnet = to_torch(net, copy=False, split_bytes=SPLIT_BYTES if impl == "zennit" else None)
                except UnsupportedLayerError as exc:
                    no_torch = f"n/a: no PyTorch equivalent ({exc})"
            case = CASES.get((impl, method))
            contexts = [SimpleNamespace(net=net, tnet=tnet, x=x[sl], target=target[sl], onehot=onehot[sl],
                                        n_steps=n_steps, noise=noise[:, sl], noise_all=noise_all[:, sl])
                        for sl in slices]

            def ours_of(c):
                if case is not None:
                    return case["ours"](c)
                return _run_lrpnumpy(method, net, c.x, c.target, lo, hi, impl, c.noise, alphas)

            def theirs_of(c):
                if case is not None:
                    return case["theirs"](c)
                if impl == "zennit":
                    return _run_zennit(method, c.tnet, c.x, c.onehot, lo, hi, c.noise, alphas)
                return _run_captum(method, c.tnet, c.x, c.target)

            note = case["note"] if case is not None else NOTES.get((impl, method), NOTES.get((impl, "*"), ""))
            if rewrites is not None:
                note = f"{note}; on your torch module: {'; '.join(rewrites)}"
            if embedded:
                note = f"{note}; {embedded}"
            tol = max(rtol, case["rtol"] if case is not None else 0.0)
            row = dict(method=method, against=impl, max_abs=None, max_rel=None, sum_lrpnumpy=None,
                       sum_reference=None, sums_lrpnumpy=None, sums_reference=None, passed=False, note=note,
                       status="n/a", reason=no_torch or "", near_ties=None, tie_layers=None,
                       max_rel_ties_alike=None)
            ours = theirs = None
            if not no_torch:
                ours, theirs, row["status"], row["reason"] = _run_sides(ours_of, theirs_of, contexts, impl)
            if ours is not None:
                max_abs, max_rel = _difference(ours, theirs)
                row.update(max_abs=max_abs, max_rel=max_rel, sum_lrpnumpy=float(ours.sum()),
                           sum_reference=float(theirs.sum()), sums_lrpnumpy=_per_sample(ours),
                           sums_reference=_per_sample(theirs), status="pass" if max_rel <= tol else "FAIL")
                if row["status"] == "FAIL":
                    if ties is None and user is not None:
                        ties = {"error": "FAIL on your torch module as it is: Zennit needs it canonized "
                                         "(canonize_module=True)" if not canonize_module else
                                "FAIL on your torch module (near-ties are looked for on lrpnumpy's own torch "
                                "rebuild only: compare without torch_module to see them)"}
                    if ties is None:
                        try:
                            ties = near_ties(net, x, tnet, chunk=chunk, rtol=rtol)
                        except Exception as exc:  # noqa: BLE001 - the row stays FAIL, saying why
                            ties = {"error": f"FAIL (its near-ties could not be looked for: {_reason(exc)})"}
                    row.update(_ties_alike(ours, theirs_of, contexts, tnet, ties, tol))
                row["passed"] = row["status"] == "pass"
            del ours, theirs
            gc.collect()
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def _user_module(module, net, x, canonize_module):
    """The user's module for the references, canonized for Zennit (or as it is), and the rewrites done; its
    outputs must be the network's."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise UnsupportedLayerError(f"torch_module must be a torch.nn.Module, got {type(module).__name__}")
    if canonize_module:
        user, rewrites = canonize(module, x)
    else:
        import copy
        user, rewrites = copy.deepcopy(module).double().eval(), ["none (canonize_module=False)"]
    with torch.no_grad():
        theirs = user(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    ours = net.forward(x)
    if theirs.shape != ours.shape:
        raise ShapeError(f"torch_module's output has shape {theirs.shape}, the network's {ours.shape}")
    diff, rel = _difference(ours, theirs)
    if rel > 1e-8:
        raise ModelFormatError(f"torch_module and the network compute different outputs (largest difference "
                               f"{diff:.3g}, {rel:.2e} of the largest output): give the module the network "
                               f"was made from")
    return user, rewrites


def _check_input_shape(model, x):
    """Refuse an input the model cannot take, naming its recorded ``input_shape`` (inputs of other sizes that
    it can take, e.g. through a global pooling, are fine)."""
    shape = getattr(model, "input_shape", None)
    if not (shape and isinstance(x, np.ndarray) and x.ndim >= 1 and tuple(x.shape[1:]) != tuple(shape)):
        return
    try:
        model.output_shape((1,) + tuple(x.shape[1:]))
    except LRPError:
        raise ShapeError(f"the input has shape {tuple(x.shape)} but the model expects "
                         f"{' x '.join(str(d) for d in shape)} per sample (a batch of shape "
                         f"(N, {', '.join(str(d) for d in shape)}))") from None


def _difference(ours, theirs):
    max_abs = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf))


def _reason(exc, limit=160):
    """One short line from an exception's message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _why_not(impl, exc):
    """Why the reference ``impl`` cannot run a method, from the exception it raised."""
    import re
    if isinstance(exc, UnsupportedLayerError):
        return f"n/a: {exc}"
    found = re.search(r"Module of type <class '(?:[\w.]*\.)?(\w+)'> has no rule", str(exc))
    if found:
        return f"n/a: {impl} has no rule for {found.group(1)}"
    return f"n/a: {impl} cannot run it ({type(exc).__name__}: {_reason(exc)})"


def _run_sides(ours_of, theirs_of, contexts, impl):
    """``(ours, theirs, status, reason)``: both sides' relevance, or None and why a side could not run.

    lrpnumpy's own refusals (an :class:`~lrpnumpy.errors.LRPError`) make the row n/a; any other
    exception on lrpnumpy's side is a failure of lrpnumpy (FAIL).  Whatever the reference raises
    makes the row n/a, saying why.
    """
    try:
        ours = np.concatenate([ours_of(c) for c in contexts])
    except LRPError as exc:
        return None, None, "n/a", f"n/a: lrpnumpy cannot run it ({_reason(exc)})"
    except Exception as exc:  # noqa: BLE001 - reported in the row: a failure of lrpnumpy
        return None, None, "FAIL", f"lrpnumpy raised {type(exc).__name__}: {_reason(exc)}"
    try:
        theirs = np.concatenate([theirs_of(c) for c in contexts])
    except Exception as exc:  # noqa: BLE001 - a reference that cannot run a row says why in that row
        return None, None, "n/a", _why_not(impl, exc)
    if theirs.shape != ours.shape:
        return None, None, "FAIL", f"the reference's result has shape {theirs.shape}, lrpnumpy's {ours.shape}"
    return ours, theirs, "", ""


def _ties_alike(ours, theirs_of, contexts, tnet, ties, tol):
    """The row's update after a FAIL: ill-conditioned if near-ties explain the difference, else why not."""
    if ties.get("error"):
        return dict(reason=ties["error"])
    update = dict(near_ties=ties["total"], tie_layers=ties["layers"])
    if not ties["total"]:
        return update
    if ties["forward_rel"] > ties["rtol"]:
        return dict(update, reason=f"the forward passes differ by {ties['forward_rel']:.1e} (relative) at "
                                   f"{ties['forward_layer']}, not only in the last bits")
    tnet.pin = True  # break every tie alike: the reference computes from lrpnumpy's forward values
    try:
        theirs = np.concatenate([theirs_of(c) for c in contexts])
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return dict(update, reason=f"with the ties broken alike the reference failed ({_reason(exc)})")
    finally:
        tnet.pin = False
    _, alike = _difference(ours, theirs)
    update["max_rel_ties_alike"] = alike
    if alike <= tol:
        return dict(update, status="ill-conditioned", reason=f"ill-conditioned ({ties['total']} near-ties)")
    return dict(update, reason=f"FAIL with the {ties['total']} near-ties broken alike too "
                               f"(max rel diff {alike:.1e})")


#: A decision of the forward pass is a near-tie when the two sides' values there differ and its
#: margin is within this many ulps of the values plus twice their difference, so that the last bits
#: of the arithmetic decide it: a max-pool window's top two taps, a ReLU's input near 0, a
#: Conv2d/Linear/Add output near 0 (step 2's denominator ``z``, whose sign picks the stabilizer's).
TIE_ULPS = 4


def _pool_windows(layer, a):
    """Every window's taps of the max pool ``layer`` on ``a``: shape (N, C, Ho, Wo, kh * kw), -inf in the padding.
    A 1-D pool's input (N, C, L) is seen as (N, C, 1, L), its windows as those of the 2-D pool it runs."""
    if isinstance(layer, GlobalMaxPool1d):
        return a[:, :, None, None, :]
    if a.ndim == 3:
        a = a[:, :, None]
    n, c, h, w = a.shape
    pt, pb, pl, pr = layer.effective_padding(h, w)
    padded = np.pad(a, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-np.inf)
    (kh, kw), (sh, sw), (dh, dw) = layer._span(), layer.stride, layer.dilation
    oh, ow = (1, layer.output_shape(a[:, :, 0].shape)[2]) if isinstance(layer, MaxPool1d) \
        else layer.output_shape(a.shape)[2:]
    view = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    return view[:, :, :oh, :ow].reshape(n, c, oh, ow, -1)


def _near_zero(a, b):
    """Where ``a`` and ``b`` (the two sides' values) straddle 0 or lie within their difference of it; where
    they straddle it (the sides decide differently)."""
    d = np.abs(a - b)
    eps = np.finfo(np.float64).eps
    small = np.minimum(np.abs(a), np.abs(b)) <= TIE_ULPS * eps * np.maximum(np.abs(a), np.abs(b)) + 2 * d
    flip = (a > 0) != (b > 0)
    return flip | ((d > 0) & small), flip


def _pool_ties(layer, a, b):
    ta, tb = _pool_windows(layer, a), _pool_windows(layer, b)
    if ta.shape[-1] < 2:
        return np.zeros(ta.shape[:4], dtype=bool), np.zeros(ta.shape[:4], dtype=bool)
    with np.errstate(invalid="ignore"):
        diff = np.nan_to_num(np.abs(ta - tb), nan=0.0)  # -inf - -inf in the padding: no difference
        top_a, top_b = ta.max(axis=-1, keepdims=True), tb.max(axis=-1, keepdims=True)
        margin = TIE_ULPS * np.finfo(np.float64).eps * np.abs(top_a) + 2 * diff.max(axis=-1, keepdims=True)
        # the taps that could win on either side, and how far below the top each side puts them: where
        # those gaps are the same on both sides (exact ties of a uniform region, say) they are ranked alike
        contenders = (ta >= top_a - margin) | (tb >= top_b - margin)
        regap = np.nan_to_num(np.abs((ta - top_a) - (tb - top_b)), nan=0.0)
    close = (contenders.sum(axis=-1) >= 2) & (np.where(contenders, regap, 0.0).max(axis=-1) > 0)
    flip = ta.argmax(axis=-1) != tb.argmax(axis=-1)
    return flip | close, flip


def near_ties(net, x, tnet=None, chunk=None, rtol=1e-10):
    """The forward pass's near-ties, found on both sides: lrpnumpy's trace and the torch module's values.

    A near-tie is a decision the last bits of the arithmetic make (see :data:`TIE_ULPS`): a max-pool
    window whose top two taps are that close (or whose winners differ between the sides), a ReLU
    whose input is that close to 0, a Conv2d/Linear/Add output that close to 0 (a denominator of
    step 2).  Decisions both sides compute from bitwise equal values (exact ties, e.g. a black
    background) are made alike and are not counted.

    Parameters
    ----------
    net : Sequential or Graph
        float64, as :func:`compare` uses it (no trailing Softmax).
    x : ndarray
        The input batch.
    tnet : torch module, optional
        ``to_torch(net)`` (built if not given).
    chunk : int, optional
        Samples per forward pass.
    rtol : float
        The forward passes "agree" when every layer's outputs differ by at most ``rtol`` times the
        layer's largest value (``forward_rel``; the largest difference is at ``forward_layer``).

    Returns
    -------
    dict
        ``total`` (int), ``per_sample`` (list of int), ``layers`` (list of ``(layer, kind, count,
        decided_differently)`` for the layers that have near-ties: how many of them the two sides
        decide differently, a max-pool window won by another tap or a value on the other side of 0), ``forward_rel``, ``forward_layer``, ``rtol``.
    """
    torch = _torch()
    tnet = to_torch(net, copy=False) if tnet is None else tnet
    names = net.names if isinstance(net, Graph) else None
    counts, per_sample, worst = {}, [], (0.0, "")
    for i in range(0, len(x), chunk or len(x)):
        xs = np.ascontiguousarray(x[i:i + (chunk or len(x))])  # as compare runs it (lowerings follow the layout)
        _, trace = net.forward_trace(xs)
        tnet.record = []
        try:
            # with the input requiring grad, as the methods run it (torch may pick other kernels without)
            tnet(torch.from_numpy(xs.copy()).requires_grad_(True))
            theirs = tnet.record
        finally:
            tnet.record = None
        sample = np.zeros(len(xs), dtype=np.int64)
        for k, step in enumerate(trace):
            layer = step.layer
            name = f"{names[k]} ({type(layer).__name__})" if names else f"layer {k} ({type(layer).__name__})"
            ours_out, theirs_out = step.output, theirs[k]
            scale = float(np.abs(ours_out).max()) if ours_out.size else 0.0
            rel = float(np.abs(ours_out - theirs_out).max()) / scale if scale > 0 else 0.0
            if rel > worst[0]:
                worst = (rel, name)
            found = []
            p = step.parents[0]
            a, b = step.input, (xs if p < 0 else theirs[p])  # both sides' input of the layer
            if isinstance(layer, MaxPool2d):  # which tap wins a window
                found.append(("max-pool windows", _pool_ties(layer, a, b)))
            elif isinstance(layer, ReLU):  # which side of the kink
                found.append(("ReLU inputs at 0", _near_zero(a, b)))
            if isinstance(layer, WEIGHTED) or isinstance(layer, Add):  # the sign of a rule's denominator
                found.append(("denominators at 0", _near_zero(ours_out, theirs_out)))
            for kind, (mask, flip) in found:
                n = mask.reshape(len(xs), -1).sum(axis=1)
                sample += n
                before = counts.get((name, kind), (0, 0))
                counts[(name, kind)] = (before[0] + int(n.sum()), before[1] + int(flip.sum()))
        per_sample += [int(v) for v in sample]
    layers = [(name, kind, n, flipped) for (name, kind), (n, flipped) in counts.items() if n]
    return dict(total=sum(per_sample), per_sample=per_sample, layers=layers, forward_rel=worst[0],
                forward_layer=worst[1], rtol=rtol)


def _per_sample(r):
    return [float(v) for v in r.reshape(len(r), -1).sum(axis=1)]


def _result(row):
    """The row's result column: pass, FAIL, ill-conditioned (N near-ties) or n/a: why."""
    if row["status"] in ("pass", "FAIL"):
        return row["status"]
    return row["reason"]


def exit_status(rows):
    """The command line's exit status for these rows: 0 when no row fails and at least one was compared
    (pass or ill-conditioned; n/a rows compare nothing), 1 otherwise."""
    statuses = [r["status"] for r in rows]
    return 0 if "FAIL" not in statuses and any(st in ("pass", "ill-conditioned") for st in statuses) else 1


def format_rows(rows, rtol):
    """The comparison as a text table, then its notes: near-ties by layer, why rows failed, the conventions."""
    head = (f"{'method':<26} {'against':<7} {'max abs diff':>12} {'max rel diff':>12} {'sum R lrpnumpy':>16} "
            f"{'sum R reference':>16}  result (rtol {rtol:g})")
    lines = [head, "-" * len(head)]

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0].lstrip(">")))
    for r in rows:
        lines.append(f"{r['method']:<26} {r['against']:<7} {num(r['max_abs'], '>12.3e')} "
                     f"{num(r['max_rel'], '>12.3e')} {num(r['sum_lrpnumpy'], '>16.10g')} "
                     f"{num(r['sum_reference'], '>16.10g')}  {_result(r)}")
    counts = {st: sum(r["status"] == st for r in rows) for st in ("pass", "ill-conditioned", "n/a", "FAIL")}
    lines.append(", ".join(f"{n} {st}" for st, n in counts.items() if n) or "no rows")
    ties = {}
    for r in rows:
        if r.get("tie_layers"):
            ties.setdefault(r["against"], (r["near_ties"], r["tie_layers"]))
    for impl, (total, layers) in ties.items():
        lines += ["", f"near-ties against {impl} (decisions the last bits of the forward arithmetic make; "
                      f"{total} in all):"]
        lines += [f"  {name}: {n} {kind}, {flipped} decided differently" for name, kind, n, flipped in layers]
    failed = [r for r in rows if r["status"] == "FAIL" and r.get("reason")]
    if failed:
        lines += ["", "failures:"] + [f"  {r['method']} against {r['against']}: {r['reason']}" for r in failed]
    notes = sorted({(r["against"], r["note"]) for r in rows if r["note"]})
    lines += ["", "notes:"] + [f"  {impl}: {note}" for impl, note in notes]
    return "\n".join(lines)


__all__ = ["compare", "canonize", "to_torch", "format_rows", "available", "near_ties", "exit_status"]
