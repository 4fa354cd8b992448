"""lrpnumpy: Layer-wise Relevance Propagation in plain NumPy, step by step.

The public API: layers, rules, composites, :func:`explain`, the gradient methods, the traces
of forward passes, verification against other implementations, and the errors.
"""

from . import (composites, datasets, errors, evaluate, io, kernels, methods, parallel, prototypes, rules, train,
               verify, viz, zoo)
from . import text
from .canonize import fold_batchnorm
from .composites import (Composite, DeepTaylor, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox,
                         EpsilonPlus, EpsilonPlusFlat, LRPToolbox)
from .explain import ConservationReport, Explanation, explain
from .layers import (LRN, Add, AvgPool2d, BatchNorm2d, ChannelAffine, ChannelShuffle, Concat, Conv2d, Dropout,
                     Flatten, GlobalAvgPool2d, Graph, Layer, Linear, MaxPool2d, ReLU, Sequential, Softmax, SumPool2d,
                     Tanh)
from .layers import AdaptiveAvgPool2d, Hardtanh, LeakyReLU, ReLU6
from .layers import GELU, LayerNorm, MatMul, Mul, MultiheadAttention, RMSNorm, SiLU
from .layers import ClassToken, PatchEmbedding, PositionEmbedding, SelectToken, SwiGLUBlock, TransformerEncoderLayer
from .layers import (GRU, LSTM, AvgPool1d, Conv1d, Embedding, GlobalMaxPool1d, MaxPool1d, Sigmoid, SumPool1d,
                     Transpose, sequence_lengths)
from .rules import LRP0, AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, Rho, WinnerTakesAll, WSquare, ZBox, ZPlus
from .rules import HalfHalf, ProductRule, Proportional, SignalTakesAll, TokenSum
from .composites import LRPAll, LRPHalf, LRPProp
from .stabilize import stabilize
from .trace import Step, Trace

try:
    from importlib.metadata import PackageNotFoundError, version as _version
    __version__ = _version("lrpnumpy")
except PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0.2.0"

__all__ = [
    "explain", "Explanation", "ConservationReport", "fold_batchnorm", "stabilize", "Step", "Trace",
    "Layer", "Linear", "Conv2d", "ReLU", "Tanh", "Softmax", "SumPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "MaxPool2d", "LRN", "Flatten",
    "Dropout", "BatchNorm2d", "Add", "Concat", "ChannelAffine", "ChannelShuffle", "Sequential", "Graph",
    "LRP0", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "Flat", "WSquare", "Norm", "Pass", "Rho",
    "WinnerTakesAll",
    "Hardtanh", "ReLU6", "LeakyReLU", "AdaptiveAvgPool2d",
    "GELU", "SiLU", "LayerNorm", "RMSNorm", "MatMul", "Mul", "MultiheadAttention",
    "TransformerEncoderLayer", "SwiGLUBlock", "PatchEmbedding", "ClassToken", "PositionEmbedding", "SelectToken",
    "Embedding", "Transpose", "Sigmoid", "Conv1d", "MaxPool1d", "AvgPool1d", "SumPool1d", "GlobalMaxPool1d", "LSTM",
    "GRU", "sequence_lengths", "TokenSum", "ProductRule", "SignalTakesAll", "HalfHalf", "Proportional", "LRPAll",
    "LRPHalf", "LRPProp",
    "Composite", "EpsilonPlus", "EpsilonAlpha2Beta1", "EpsilonGammaBox", "EpsilonPlusFlat",
    "EpsilonAlpha2Beta1Flat", "DeepTaylor", "LRPToolbox",
    "composites", "rules", "errors", "evaluate", "io", "kernels", "methods", "prototypes", "parallel", "verify", "viz", "zoo",
    "datasets",
    "train", "text",
    "__version__",
]
