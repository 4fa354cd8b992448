"""Convert a PyTorch module into an lrpnumpy :class:`~lrpnumpy.layers.Graph` (``from_torch``).

The module is traced with ``torch.fx`` (its ``forward`` run on proxies, so every module call,
function and tensor method becomes a node), each node is mapped to lrpnumpy layers, named after
the module's own names (``layer1.0.conv1``; functions and methods keep fx's node names, ``add``,
``flatten``, ``cat_3``), and the weights are copied.  Both networks are then run on the example
input and the conversion is refused if their outputs differ.  PyTorch's layouts are lrpnumpy's
(NCHW, Conv2d weights ``(out, in / groups, kh, kw)``, Linear ``(out, in)``): what is converted
here is operator semantics.
"""

import copy
import math
import numbers
import operator
import os
import re

import numpy as np

from .. import layers as Lyr
from ..canonize import fold_batchnorm as _fold_batchnorm
from ..errors import DTypeError, LRPError, MissingDependencyError, ShapeError, UnsupportedLayerError
from ..layers.base import as_dtype, check_finite
from ..layers.graph import INPUT
from ._common import unique_name

#: The relative difference (max |lrpnumpy - torch| / max |torch|) above which a float64 conversion is refused.
TOLERANCE = 1e-10


def _torch():
    try:
        import torch
        import torch.fx  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("from_torch needs PyTorch: pip install 'lrpnumpy[reference]'") from exc
    return torch


def from_torch(module, example_input, dtype=np.float64, fold_batchnorm=True, tolerance=TOLERANCE):
    """An lrpnumpy :class:`~lrpnumpy.layers.Graph` computing what the PyTorch ``module`` computes.

    Parameters
    ----------
    module : torch.nn.Module
        Converted in its inference form (a copy in ``eval()`` mode: batch norm uses its running
        statistics, dropout is the identity); the module itself is not changed.
    example_input : ndarray or torch.Tensor
        A batch the module accepts, e.g. of shape (1, 3, 64, 64).  Shapes that depend on the
        input size (adaptive pooling, ``view``) are read from it, and both networks are run on
        it to check the conversion.
    dtype : float32 or float64
        The parameters' dtype (float64 by default, lrpnumpy's reference precision).  The check
        always runs in float64.
    fold_batchnorm : bool
        Fold each ``BatchNorm2d`` into the ``Conv2d``/``Linear`` before it (when that layer feeds
        nothing else), as LRP needs: unfolded, batch norm passes relevance through unchanged,
        which is a different explanation.  Batch norms that cannot be folded (DenseNet's, after
        a concatenation) stay :class:`~lrpnumpy.layers.BatchNorm2d` layers; the returned graph's
        ``meta["torch"]`` lists both (``"folded"``: node -> the batch norm folded into it;
        ``"batchnorm"``: the batch norms kept as layers; a ``BatchNorm1d`` is always kept, as a
        :class:`~lrpnumpy.layers.ChannelAffine`).
    tolerance : float
        The largest relative difference (``max |lrpnumpy - torch| / max |torch|`` over the
        outputs) accepted, in float64.

    Returns
    -------
    Graph
        Node names are the module's qualified names; ``input_shape`` is the example's sample
        shape; ``meta["torch"]["modules"]`` maps nodes made from module calls to the module's
        name, ``"folded"`` each folded node to ``[batch norm name, eps]``, and ``"eps"`` the batch
        norms' eps: what :func:`~lrpnumpy.io.load_state_dict` needs to read a checkpoint into it.

    Raises
    ------
    UnsupportedLayerError
        A module, function or method without an lrpnumpy equivalent (the message names it, the
        fx node and the line of the module's ``forward`` that called it), a ``forward`` that
        ``torch.fx`` cannot trace (control flow that depends on tensor values), or outputs that
        differ (the message gives the largest difference and the first node whose output differs).

    Notes
    -----
    Supported: ``Conv2d`` (zero padding, groups, dilation), ``Linear``, ``BatchNorm2d`` (running
    statistics), ``BatchNorm1d`` (as a per-feature scale and shift), ``ReLU``, ``ReLU6``,
    ``Hardtanh``, ``LeakyReLU``, ``Tanh``, ``Softmax``, ``MaxPool2d``, ``AvgPool2d``,
    ``AdaptiveAvgPool2d`` (output size 1 becomes a global average pool), ``Flatten`` and
    ``flatten``/``view``/``reshape`` to (N, features), ``mean`` over the spatial axes, ``+`` /
    ``torch.add`` of two tensors, ``torch.cat`` along the channels, and dropout / identity,
    as modules, functions (``torch.nn.functional``) or tensor methods.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise UnsupportedLayerError(f"from_torch converts a torch.nn.Module, got {type(module).__name__}")
    dt = as_dtype(dtype)
    if not (isinstance(tolerance, numbers.Real) and tolerance >= 0):
        raise ShapeError(f"tolerance must be a number >= 0, got {tolerance!r}")
    x = _example(torch, example_input)
    ref = _float64_copy(torch, module)
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(ref)
    except Exception as exc:  # noqa: BLE001 - fx raises TraceError, TypeError, ... on untraceable Python
        raise UnsupportedLayerError(f"torch.fx cannot trace {type(module).__name__}.forward ({type(exc).__name__}: "
                                    f"{exc}); from_torch needs a forward without control flow that depends on "
                                    f"tensor values") from None
    gm = torch.fx.GraphModule(ref, graph)
    xt = torch.from_numpy(x)
    values = _run(torch, gm, xt, keep=False)
    conv = _Converter(torch, gm, values)
    nodes, output = conv.convert()
    net = Lyr.Graph(_contributing(nodes, output), output=output, input_shape=x.shape[1:])
    meta = {"class": type(module).__name__, "modules": conv.modules, "folded": {}, "batchnorm": [],
            "eps": conv.eps}
    if fold_batchnorm:
        folded = _fold_batchnorm(net)
        for name in set(net.names) - set(folded.names):  # folded batch norms: their input node took them
            meta["folded"][net.inputs[name][0]] = [conv.modules.get(name, name), conv.eps[name]]
        net = folded
    meta["batchnorm"] = [n for n in net.names if n in conv.eps]  # batch norms left as layers (unfolded)
    net = Lyr.Graph(net.nodes(), output=net.output, input_shape=x.shape[1:], meta={"torch": meta})
    with torch.no_grad():
        try:
            expected = ref(xt)
        except Exception as exc:  # noqa: BLE001 - the user's module refused the example
            raise ShapeError(f"the module cannot run on the example input of shape {x.shape} "
                             f"({type(exc).__name__}: {exc})") from None
    _check(torch, net, x, expected, tolerance, gm, conv)
    return net if dt == np.float64 else net.astype(dt)


def _float64_copy(torch, module):
    """A float64 copy of ``module`` in eval mode: floating parameters and buffers copied to float64 once
    (not copied, then converted), without gradients."""
    memo = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in memo:
            data = t.detach().to(device="cpu", dtype=torch.float64 if t.is_floating_point() else t.dtype, copy=True)
            memo[id(t)] = torch.nn.Parameter(data, requires_grad=False) if isinstance(t, torch.nn.Parameter) else data
    return copy.deepcopy(module, memo).eval()


def _example(torch, example_input):
    if isinstance(example_input, torch.Tensor):
        example_input = example_input.detach().cpu().numpy()
    if not isinstance(example_input, np.ndarray) or example_input.dtype.kind != "f":
        raise DTypeError(f"example_input must be a float ndarray or torch tensor, got "
                         f"{getattr(example_input, 'dtype', type(example_input).__name__)}")
    if example_input.ndim < 2 or example_input.shape[0] < 1:
        raise ShapeError(f"example_input must be a batch (N, ...) with N >= 1, got shape {example_input.shape}")
    return check_finite(np.array(example_input, dtype=np.float64), "example_input")


def _run(torch, gm, xt, keep):
    """Each fx node's value on ``xt`` (tensors only when ``keep``; otherwise their shapes)."""
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if isinstance(v, torch.Tensor):
                values[n] = v.detach().numpy().copy() if keep else _Tensor(tuple(v.shape), v.dtype)
            else:
                values[n] = v
            return v
    with torch.no_grad():
        if not keep:  # shapes only: fake tensors, which compute nothing (a float64 depthwise conv is slow)
            try:
                from torch._subclasses.fake_tensor import FakeTensorMode
                with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                    Recorder(gm).run(mode.from_tensor(xt))
                return values
            except Exception:  # noqa: BLE001 - fall back to running it for real, which names the problem
                values.clear()
        try:
            Recorder(gm).run(xt)
        except Exception as exc:  # noqa: BLE001 - the user's module refused the example
            raise ShapeError(f"the module cannot run on the example input of shape {tuple(xt.shape)} "
                             f"({type(exc).__name__}: {exc})") from None
    return values


class _Tensor:
    """What conversion needs of a tensor value: its shape and dtype."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


def _contributing(nodes, output):
    inputs = {name: ins for name, _, ins in nodes}
    keep, todo = set(), [output]
    while todo:
        n = todo.pop()
        if n in keep or n not in inputs:
            continue
        keep.add(n)
        todo.extend(inputs[n])
    return [node for node in nodes if node[0] in keep]


def _where(torch, n):
    """``file, line N, in forward: code`` of the innermost frame outside torch that created fx node ``n``."""
    trace = n.meta.get("stack_trace") or getattr(n, "stack_trace", None)
    if not trace:
        return None
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep  # not torchvision's folder
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n([^\n]*)', trace)
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(torch_dir)]
    if not user:
        return None
    file, line, func, code = user[-1]
    return f"{file}, line {line}, in {func}: {code.strip()}"


def _function_name(target):
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod and mod != "builtins" and not mod.startswith("_operator") else name


class _Converter:
    """Walks the fx graph and builds ``(name, layer, inputs)`` nodes."""

    def __init__(self, torch, gm, values):
        self.torch, self.gm, self.values = torch, gm, values
        self.name_of = {}       # fx node -> lrpnumpy node name (or INPUT)
        self.nodes, self.taken = [], {INPUT}
        self.modules = {}       # lrpnumpy node -> torch module name (nodes made from module calls)
        self.fx_of = {}         # lrpnumpy node -> the fx node whose value it computes
        self.eps = {}           # lrpnumpy node -> eps of the batch norm it came from
        F = torch.nn.functional
        self.functions = {
            operator.add: self._add, operator.iadd: self._add, torch.add: self._add,
            torch.cat: self._cat, torch.concat: self._cat, getattr(torch, "concatenate", torch.cat): self._cat,
            torch.flatten: self._flatten, torch.reshape: self._reshape,
            F.relu: self._act(lambda a: Lyr.ReLU()), torch.relu: self._act(lambda a: Lyr.ReLU()),
            F.relu6: self._act(lambda a: Lyr.ReLU6()),
            F.hardtanh: self._act(lambda a: Lyr.Hardtanh(a.get(1, "min_val", -1.0), a.get(2, "max_val", 1.0))),
            F.leaky_relu: self._act(lambda a: Lyr.LeakyReLU(a.get(1, "negative_slope", 0.01))),
            torch.tanh: self._act(lambda a: Lyr.Tanh()), F.tanh: self._act(lambda a: Lyr.Tanh()),
            F.softmax: self._softmax, torch.softmax: self._softmax,
            F.dropout: self._identity, F.dropout2d: self._identity, F.alpha_dropout: self._identity,
            F.adaptive_avg_pool2d: self._adaptive_fn, F.avg_pool2d: self._avg_pool_fn, F.max_pool2d: self._max_pool_fn,
            torch.mean: self._mean,
        }
        if hasattr(F, "relu_"):
            self.functions[F.relu_] = self._act(lambda a: Lyr.ReLU())
        self.methods = {
            "add": self._add, "add_": self._add, "__add__": self._add, "flatten": self._flatten, "view": self._reshape,
            "reshape": self._reshape, "relu": self._act(lambda a: Lyr.ReLU()), "relu_": self._act(lambda a: Lyr.ReLU()),
            "tanh": self._act(lambda a: Lyr.Tanh()), "softmax": self._softmax, "mean": self._mean,
            "contiguous": self._identity, "clone": self._identity, "detach": self._identity,
        }
        nn = torch.nn
        self.module_types = [
            (nn.Conv2d, self._conv), (nn.Linear, self._linear), (nn.BatchNorm2d, self._batchnorm),
            (nn.BatchNorm1d, self._batchnorm1d), (nn.ReLU, lambda m, n: Lyr.ReLU()),
            (nn.ReLU6, lambda m, n: Lyr.ReLU6()),
            (nn.Hardtanh, lambda m, n: Lyr.Hardtanh(float(m.min_val), float(m.max_val))),
            (nn.LeakyReLU, lambda m, n: Lyr.LeakyReLU(float(m.negative_slope))),
            (nn.Tanh, lambda m, n: Lyr.Tanh()), (nn.Softmax, self._softmax_module),
            (nn.MaxPool2d, self._max_pool), (nn.AvgPool2d, self._avg_pool),
            (nn.AdaptiveAvgPool2d, lambda m, n: self._adaptive(n, m.output_size)),
            (nn.Flatten, lambda m, n: self._flatten_dims(n, m.start_dim, m.end_dim)),
            (nn.Dropout, lambda m, n: Lyr.Dropout(m.p) if 0 <= m.p < 1 else None),
            (nn.Dropout2d, lambda m, n: Lyr.Dropout(m.p) if 0 <= m.p < 1 else None),
            (nn.AlphaDropout, lambda m, n: None), (nn.Identity, lambda m, n: None),
        ]

    # ----- errors -----

    def label(self, n):
        if n.op == "call_module":
            what = f"{type(self.gm.get_submodule(n.target)).__name__} module {n.target!r}"
        elif n.op == "call_method":
            what = f"tensor method .{n.target}()"
        elif n.op == "call_function":
            what = f"function {_function_name(n.target)}"
        else:
            what = f"{n.op} {n.target!r}"
        where = _where(self.torch, n)
        return f"fx node {n.name!r} ({what}" + (f", called at {where})" if where else ")")

    def unsupported(self, n, why):
        return UnsupportedLayerError(f"{self.label(n)}: {why}")

    # ----- walking -----

    def shape(self, n):
        v = self.values.get(n)
        return v.shape if isinstance(v, _Tensor) else None

    def data(self, n, arg, what="input"):
        """The lrpnumpy node name holding tensor ``arg``."""
        fx = self.torch.fx
        if isinstance(arg, fx.Node) and arg in self.name_of:
            return self.name_of[arg]
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            raise self.unsupported(n, f"its {what} is the module's tensor {arg.target!r}; only tensors computed from "
                                      f"the input are supported as data (constants and parameters used outside "
                                      f"layers are not)")
        raise self.unsupported(n, f"its {what} {arg!r} is not a tensor computed from the module's input")

    def convert(self):
        output = None
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedLayerError(f"from_torch converts modules with one input; forward takes "
                                        f"{[n.target for n in placeholders]}")
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self.name_of[n] = INPUT
            elif n.op == "get_attr":
                continue  # refused where a layer reads it as data (see data())
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, self.torch.fx.Node) or self.shape(out) is None:
                    raise self.unsupported(n, f"forward returns {type(out).__name__}; from_torch converts modules "
                                              f"that return one tensor")
                output = self.data(n, out, "output")
            elif self.shape(n) is None:
                continue  # a non-tensor value (x.size(0), x.shape): used only as a shape argument
            else:
                self._node(n)
        if output == INPUT:
            raise UnsupportedLayerError("the module's output is its input: there is nothing to convert")
        return self.nodes, output

    def _node(self, n):
        if n.op == "call_module":
            m = self.gm.get_submodule(n.target)
            make = next((f for t, f in self.module_types if type(m) is t), None)
            if make is None:
                raise self.unsupported(n, f"{type(m).__name__} has no lrpnumpy equivalent in from_torch (supported "
                                          f"modules: {', '.join(t.__name__ for t, _ in self.module_types)})")
            if len(n.args) != 1 or n.kwargs:
                raise self.unsupported(n, "a module called with more than one argument")
            layers = make(m, n)
            self._emit(n, layers, [self.data(n, n.args[0])], n.target)
        elif n.op == "call_function":
            handler = self.functions.get(n.target)
            if handler is None:
                raise self.unsupported(n, "this function has no lrpnumpy equivalent in from_torch")
            layers, ins = handler(n)
            self._emit(n, layers, ins, n.name)
        elif n.op == "call_method":
            handler = self.methods.get(n.target)
            if handler is None:
                raise self.unsupported(n, f"tensor method .{n.target}() has no lrpnumpy equivalent in from_torch "
                                          f"(supported: {', '.join(sorted(self.methods))})")
            layers, ins = handler(n)
            self._emit(n, layers, ins, n.name)
        else:
            raise self.unsupported(n, f"fx operation {n.op!r} is not supported")

    def _emit(self, n, layers, ins, name):
        """Add ``layers`` (a chain; None or [] is the identity) reading ``ins``, as the value of fx node ``n``."""
        if layers is None:
            layers = []
        elif not isinstance(layers, list):
            layers = [layers]
        if not layers:
            if len(ins) != 1:
                raise self.unsupported(n, "an identity with several inputs")
            self.name_of[n] = ins[0]
            return
        in_shapes = [self._shape_of(i) for i in ins]
        shape, current = in_shapes, list(ins)
        for k, layer in enumerate(layers):
            try:
                shape = [layer.output_shape(*shape)]
            except LRPError as exc:
                raise self.unsupported(n, f"{layer!r} does not take inputs of shapes {in_shapes}: {exc}") from None
            node = unique_name(name, self.taken, k)
            self.nodes.append((node, layer, tuple(current)))
            if n.op == "call_module" and layer.params:
                self.modules[node] = n.target
                eps = getattr(self.gm.get_submodule(n.target), "eps", None)
                if isinstance(self.gm.get_submodule(n.target), self.torch.nn.modules.batchnorm._BatchNorm):
                    self.eps[node] = float(eps)
            current = [node]
        expected = tuple(self.shape(n))
        if tuple(shape[0]) != expected:
            raise self.unsupported(n, f"lrpnumpy's {layers[-1]!r} gives shape {tuple(shape[0])}, torch gives "
                                      f"{expected}")
        self.name_of[n] = current[0]
        self.fx_of[current[0]] = n

    def _shape_of(self, name):
        if name == INPUT:
            return tuple(self.shape(next(n for n, v in self.name_of.items() if v == INPUT)))
        return tuple(self.shape(self.fx_of[name]))

    # ----- argument access -----

    class _Args:
        def __init__(self, n):
            self.n = n

        def get(self, i, key, default=None):
            if i < len(self.n.args):
                return self.n.args[i]
            return self.n.kwargs.get(key, default)

    def _constant(self, n, value, what):
        if isinstance(value, self.torch.fx.Node):
            v = self.values.get(value)
            if isinstance(v, (numbers.Number, tuple, list)) or v is None:
                return v
            raise self.unsupported(n, f"{what} is computed from tensors; only constants are supported")
        return value

    # ----- modules -----

    @staticmethod
    def _array(t):
        """A float64 array of the (float64, private) copy's tensor ``t``; None for None."""
        return None if t is None else t.detach().numpy()

    def _conv(self, m, n):
        if m.padding_mode != "zeros":
            raise self.unsupported(n, f"padding_mode={m.padding_mode!r}; only zero padding is supported")
        if isinstance(m.padding, str):
            if m.padding == "valid":
                padding = 0
            else:  # "same": PyTorch puts the odd extra row at the end
                totals = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
                padding = (totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2, totals[1] - totals[1] // 2)
        else:
            padding = tuple(m.padding)
        config = dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=tuple(m.kernel_size),
                      stride=tuple(m.stride), padding=padding, bias=m.bias is not None, groups=m.groups,
                      dilation=tuple(m.dilation))
        return Lyr.Conv2d.from_config(config, {"weight": self._array(m.weight), "bias": self._array(m.bias)})

    def _linear(self, m, n):
        config = dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)
        return Lyr.Linear.from_config(config, {"weight": self._array(m.weight), "bias": self._array(m.bias)})

    def _bn_params(self, m, n):
        if m.running_mean is None or m.running_var is None:
            raise self.unsupported(n, "track_running_stats=False: the module normalises with each batch's "
                                      "statistics, which has no fixed inference form")
        c = m.num_features
        weight = self._array(m.weight) if m.weight is not None else np.ones(c)
        bias = self._array(m.bias) if m.bias is not None else np.zeros(c)
        return weight, bias, self._array(m.running_mean), self._array(m.running_var)

    def _batchnorm(self, m, n):
        layer = Lyr.BatchNorm2d(m.num_features, eps=float(m.eps))
        layer.weight, layer.bias, layer.running_mean, layer.running_var = self._bn_params(m, n)
        return layer

    def _batchnorm1d(self, m, n):
        if len(self.shape(n)) != 2:
            raise self.unsupported(n, f"BatchNorm1d on an input of shape {tuple(self.shape(n))}; only (N, features)")
        weight, bias, mean, var = self._bn_params(m, n)
        scale = weight / np.sqrt(var + m.eps)
        return Lyr.ChannelAffine(m.num_features, weight=scale, bias=bias - mean * scale)

    def _softmax_module(self, m, n):
        return self._softmax_layer(n, m.dim)

    def _softmax_layer(self, n, dim):
        ndim = len(self.shape(n))
        if dim is None or not isinstance(dim, int) or dim % ndim != 1:
            raise self.unsupported(n, f"softmax over dim={dim!r}; only over the channels (dim 1) is supported")
        return Lyr.Softmax(axis=1)

    def _max_pool(self, m, n):
        return self._max_pool_layer(n, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)

    def _max_pool_layer(self, n, kernel, stride, padding, dilation, ceil_mode, return_indices):
        if return_indices:
            raise self.unsupported(n, "return_indices=True is not supported")
        try:
            return Lyr.MaxPool2d(kernel, stride or None, padding, ceil_mode=bool(ceil_mode), dilation=dilation)
        except LRPError as exc:
            raise self.unsupported(n, str(exc)) from None

    def _avg_pool(self, m, n):
        return self._avg_pool_layer(n, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                    m.divisor_override)

    def _avg_pool_layer(self, n, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        if divisor_override is not None:
            raise self.unsupported(n, f"divisor_override={divisor_override!r} is not supported")
        return Lyr.AvgPool2d(kernel, stride or None, padding, ceil_mode=bool(ceil_mode),
                             count_include_pad=bool(count_include_pad))

    def _adaptive(self, n, output_size):
        shape = self.shape(n.args[0])
        size = (output_size, output_size) if isinstance(output_size, int) or output_size is None else \
            tuple(output_size)
        if len(size) != 2 or len(shape) != 4:
            raise self.unsupported(n, f"output_size={output_size!r} on an input of shape {tuple(shape)}; expected "
                                      f"an int or a pair on (N, C, H, W)")
        size = tuple(int(shape[2 + i] if s is None else s) for i, s in enumerate(size))  # None: keep that axis
        return Lyr.GlobalAvgPool2d() if size == (1, 1) else Lyr.AdaptiveAvgPool2d(size)

    def _flatten_dims(self, n, start, end):
        ndim = len(self.shape(n))
        if start % ndim != 1 or end % ndim != ndim - 1:
            raise self.unsupported(n, f"flatten(start_dim={start}, end_dim={end}) of a {ndim}-D tensor; only "
                                      f"flattening everything but the batch axis (start_dim=1) is supported")
        return Lyr.Flatten()

    # ----- functions and methods: (layers, input names) -----

    def _act(self, make):
        def handler(n):
            return make(self._Args(n)), [self.data(n, n.args[0])]
        return handler

    def _identity(self, n):
        return None, [self.data(n, n.args[0])]

    def _add(self, n):
        a = self._Args(n)
        x, y = a.get(0, "input"), a.get(1, "other")
        alpha = self._constant(n, n.kwargs.get("alpha", a.get(2, "alpha", 1)), "alpha")
        fx = self.torch.fx
        if not (isinstance(x, fx.Node) and isinstance(y, fx.Node) and self.shape(x) is not None
                and self.shape(y) is not None):
            raise self.unsupported(n, "adding a constant; only the sum of two tensors computed from the input is "
                                      "supported")
        ins = [self.data(n, x), self.data(n, y)]  # refuses the module's own tensors (a bias added in forward)
        if self.shape(x) != self.shape(y):
            raise self.unsupported(n, f"adding tensors of shapes {tuple(self.shape(x))} and {tuple(self.shape(y))} "
                                      f"(broadcasting is not supported)")
        return Lyr.Add(None if alpha == 1 else (1.0, float(alpha))), ins

    def _cat(self, n):
        a = self._Args(n)
        tensors, dim = a.get(0, "tensors"), self._constant(n, a.get(1, "dim", 0), "dim")
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise self.unsupported(n, "cat of something that is not a list of tensors")
        ndim = len(self.shape(n))
        if not isinstance(dim, int) or dim % ndim != 1:
            raise self.unsupported(n, f"cat along dim={dim!r}; only along the channels (dim 1) is supported")
        return Lyr.Concat(), [self.data(n, t) for t in tensors]

    def _flatten(self, n):
        a = self._Args(n)
        start = self._constant(n, a.get(1, "start_dim", 0), "start_dim")
        end = self._constant(n, a.get(2, "end_dim", -1), "end_dim")
        return self._flatten_dims(n, start, end), [self.data(n, n.args[0])]

    def _reshape(self, n):
        src = n.args[0]
        shape_in, shape_out = tuple(self.shape(src)), tuple(self.shape(n))
        if shape_out == shape_in:
            return None, [self.data(n, src)]
        if shape_out == (shape_in[0], math.prod(shape_in[1:])):
            return Lyr.Flatten(), [self.data(n, src)]
        raise self.unsupported(n, f"reshaping {shape_in} to {shape_out}; only to (N, features) is supported")

    def _softmax(self, n):
        a = self._Args(n)
        return self._softmax_layer(n, self._constant(n, a.get(1, "dim"), "dim")), [self.data(n, n.args[0])]

    def _mean(self, n):
        a = self._Args(n)
        dims = self._constant(n, a.get(1, "dim"), "dim")
        keep = self._constant(n, a.get(2, "keepdim", False), "keepdim")
        shape = self.shape(n.args[0])
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if len(shape) != 4 or sorted(d % 4 for d in dims) != [2, 3]:
            raise self.unsupported(n, f"mean over dims {dims} of a {len(shape)}-D tensor; only over the spatial "
                                      f"axes (2, 3) of (N, C, H, W) is supported")
        layers = [Lyr.GlobalAvgPool2d()] + ([] if keep else [Lyr.Flatten()])
        return layers, [self.data(n, n.args[0])]

    def _adaptive_fn(self, n):
        a = self._Args(n)
        size = self._constant(n, a.get(1, "output_size"), "output_size")
        return self._adaptive(n, size), [self.data(n, n.args[0])]

    def _avg_pool_fn(self, n):
        a = self._Args(n)
        args = [self._constant(n, a.get(i, k, d), k) for i, (k, d) in enumerate(
            [("input", None), ("kernel_size", None), ("stride", None), ("padding", 0), ("ceil_mode", False),
             ("count_include_pad", True), ("divisor_override", None)]) if i]
        return self._avg_pool_layer(n, *args), [self.data(n, n.args[0])]

    def _max_pool_fn(self, n):
        a = self._Args(n)
        args = [self._constant(n, a.get(i, k, d), k) for i, (k, d) in enumerate(
            [("input", None), ("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1),
             ("ceil_mode", False), ("return_indices", False)]) if i]
        return self._max_pool_layer(n, *args), [self.data(n, n.args[0])]


def _check(torch, net, x, expected, tolerance, gm, conv):
    """Refuse the conversion if ``net`` and the module disagree on ``x``; name the first node that differs."""
    if not isinstance(expected, torch.Tensor):
        raise UnsupportedLayerError(f"the module returns {type(expected).__name__}; from_torch converts modules "
                                    f"that return one tensor")
    want = expected.detach().numpy()
    got = net.forward(x)
    if got.shape != want.shape:
        raise UnsupportedLayerError(f"the converted network's output has shape {got.shape}, the module's "
                                    f"{want.shape}")
    diff, scale = float(np.abs(got - want).max(initial=0.0)), float(np.abs(want).max(initial=0.0)) or 1.0
    if diff <= tolerance * scale:
        return
    first = _first_difference(torch, net, x, gm, conv, tolerance)
    raise UnsupportedLayerError(f"the converted network differs from the module on the example input: max "
                                f"|difference| {diff:.3g}, {diff / scale:.3g} of the output's largest value "
                                f"(more than {tolerance:g}){first}")


def _first_difference(torch, net, x, gm, conv, tolerance):
    values = _run(torch, gm, torch.from_numpy(x), keep=True)
    _, trace = net.forward_trace(x)
    by_name = dict(zip(net.names, trace))
    for name in net.names:
        fx_node = conv.fx_of.get(name)
        if name in net.meta["torch"]["folded"]:  # the folded layer computes the batch norm's value
            bn = net.meta["torch"]["folded"][name][0]
            fx_node = next((f for node, f in conv.fx_of.items() if conv.modules.get(node) == bn), fx_node)
        want = values.get(fx_node)
        got = by_name[name].output
        if want is None or not isinstance(want, np.ndarray) or want.shape != got.shape:
            continue
        scale = float(np.abs(want).max(initial=0.0)) or 1.0
        if float(np.abs(got - want).max(initial=0.0)) > tolerance * scale:
            return f"; the first node whose output differs is {name!r} ({by_name[name].layer!r}, from " \
                   f"{conv.label(fx_node)})"
    return "; every node's output agrees, so the module's forward does something its fx trace does not record"
