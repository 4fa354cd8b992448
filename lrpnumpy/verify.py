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
"""

import gc
from types import SimpleNamespace

import numpy as np

from . import composites as C
from . import methods as M
from .canonize import fold_batchnorm
from .errors import MissingDependencyError, UnsupportedLayerError
from .explain import explain, logit_network, target_onehot, without_softmax
from .layers import (Add, AvgPool2d, BatchNorm2d, ChannelAffine, ChannelShuffle, Concat, Conv2d, Dropout, Flatten,
                     GlobalAvgPool2d, Graph, Linear, MaxPool2d, ReLU, SumPool2d, Tanh)
from .layers import AdaptiveAvgPool2d, Hardtanh, LeakyReLU, ReLU6
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

    first = next((layer for layer in net if isinstance(layer, (Conv2d, Linear))), None)

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
        def __init__(self, steps):
            super().__init__()
            self.steps = steps
            self.layers = nn.ModuleList([s for s in steps if s != "flatten"])

        def forward(self, x):
            modules = iter(self.layers)
            for step in self.steps:
                x = x.flatten(1) if step == "flatten" else next(modules)(x)
            return x

    return Chain([module(layer) for layer in without_softmax(net)]).double().eval()


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

        def forward(self, x):
            outputs, modules = [], iter(self.nodes)
            for m, parents in self.steps:
                args = [x if p < 0 else outputs[p] for p in parents]
                if m == "flatten":
                    outputs.append(args[0].flatten(1))
                elif getattr(m, "stacked", False):  # Zennit's hooks see one input: the stacked tensors
                    outputs.append(next(modules)(_torch().stack(args, dim=-1)))
                else:
                    outputs.append(next(modules)(*args))
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


def _bounds(net, x):
    """Scalar bounds below and above every Conv2d/Linear input (for ZBox on every layer)."""
    _, trace = net.forward_trace(x)
    inputs = [step.input for step in trace if isinstance(step.layer, (Conv2d, Linear))]
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
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    rel = LRP(tnet).attribute(xt, target=torch.from_numpy(np.asarray(target)))
    return rel.detach().numpy()


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
            chunk=None):
    """Run each method in lrpnumpy and in each reference implementation; report the differences.

    Parameters
    ----------
    model : Sequential
        Converted to float64 (and BatchNorm folded into the layer before it) for both sides.
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
        ``sums_lrpnumpy``, ``sums_reference`` (one per sample), ``passed``, ``note``.
    """
    net = fold_batchnorm(logit_network(model, x))  # shares the layers it does not change
    net = net if net.dtype is None or net.dtype == np.float64 else net.astype(np.float64)
    x = x.astype(np.float64)
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
    rows = []
    for impl in against:
        if impl not in ("zennit", "captum"):
            raise UnsupportedLayerError(f"unknown reference implementation {impl!r}; use 'zennit' or 'captum'")
        if not available(impl):
            raise MissingDependencyError(f"{impl} is not installed: pip install 'lrpnumpy[reference]'")
        if impl == "zennit":
            import torch
            alphas = torch.linspace(1.0 / n_steps, 1.0, n_steps).double().numpy()  # Zennit's float32 steps
        tnet = None  # one torch copy per implementation
        for method in (methods or [m for m in default_methods(impl) if _by_default(m, x)]):
            if method not in default_methods(impl):
                continue  # e.g. the composites have no Captum counterpart; checked below
            lo, hi = (zlow, zhigh) if method == "zbox" else (low, high)
            if tnet is None:
                tnet = to_torch(net, copy=False, split_bytes=SPLIT_BYTES if impl == "zennit" else None)
            case = CASES.get((impl, method))
            parts = []
            for sl in [slice(i, i + (chunk or len(x))) for i in range(0, len(x), chunk or len(x))]:
                xs, ts, ohs, nz = x[sl], target[sl], onehot[sl], noise[:, sl]
                if case is not None:
                    ctx = SimpleNamespace(net=net, tnet=tnet, x=xs, target=ts, onehot=ohs, n_steps=n_steps,
                                          noise_all=noise_all[:, sl])
                    parts.append((case["ours"](ctx), case["theirs"](ctx)))
                elif impl == "zennit":
                    parts.append((_run_lrpnumpy(method, net, xs, ts, lo, hi, impl, nz, alphas),
                                  _run_zennit(method, tnet, xs, ohs, lo, hi, nz, alphas)))
                else:
                    parts.append((_run_lrpnumpy(method, net, xs, ts, lo, hi, impl, nz, alphas),
                                  _run_captum(method, tnet, xs, ts)))
            ours, theirs = (np.concatenate(side) for side in zip(*parts))
            del parts
            max_abs = float(np.abs(ours - theirs).max())
            scale = float(np.abs(theirs).max())
            max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
            rows.append(dict(method=method, against=impl, max_abs=max_abs, max_rel=max_rel,
                             sum_lrpnumpy=float(ours.sum()), sum_reference=float(theirs.sum()),
                             sums_lrpnumpy=_per_sample(ours), sums_reference=_per_sample(theirs),
                             passed=bool(max_rel <= max(rtol, case["rtol"] if case is not None else 0.0)),
                             note=case["note"] if case is not None else
                             NOTES.get((impl, method), NOTES.get((impl, "*"), ""))))
            del ours, theirs
            gc.collect()
            if progress is not None:
                progress(rows[-1])
    return rows


def _per_sample(r):
    return [float(v) for v in r.reshape(len(r), -1).sum(axis=1)]


def format_rows(rows, rtol):
    """The comparison as a text table."""
    head = (f"{'method':<26} {'against':<7} {'max abs diff':>12} {'max rel diff':>12} {'sum R lrpnumpy':>16} "
            f"{'sum R reference':>16}  result (rtol {rtol:g})")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<26} {r['against']:<7} {r['max_abs']:>12.3e} {r['max_rel']:>12.3e} "
                     f"{r['sum_lrpnumpy']:>16.10g} {r['sum_reference']:>16.10g}  {'pass' if r['passed'] else 'FAIL'}")
    notes = sorted({(r["against"], r["note"]) for r in rows if r["note"]})
    lines += ["", "notes:"] + [f"  {impl}: {note}" for impl, note in notes]
    return "\n".join(lines)


__all__ = ["compare", "to_torch", "format_rows", "available"]
