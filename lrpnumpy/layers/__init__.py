"""lrpnumpy's own layers: forward, exact-gradient backward and LRP."""

from .activation import Hardtanh, LeakyReLU, ReLU, ReLU6, Softmax, Tanh
from .base import AffineLayer, Layer
from .conv import Conv2d
from .linear import Linear
from .norm import LRN, BatchNorm2d
from .pool import AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d, SumPool2d
from .graph import Graph
from .merge import Add, ChannelAffine, ChannelShuffle, Concat
from .recurrent import GRU, LSTM, sequence_lengths
from .sequence import (AvgPool1d, Conv1d, Embedding, GlobalMaxPool1d, MaxPool1d, Sigmoid, SumPool1d,
                       Transpose)
from .sequential import Network, Sequential
from .shape import Dropout, Flatten
from .attention import GELU, CausalMask, MatMul, MergeHeads, Mul, MultiheadAttention, Scale, SiLU, SplitHeads, expand
from .transformer_norm import LayerNorm, RMSNorm
from .transformer import (ClassToken, GraphLayer, PatchEmbedding, PositionEmbedding, SelectToken, SwiGLUBlock,
                          ToTokens, TransformerEncoderLayer)

#: The layers with connection weights (output units on the weight's first axis): what the named
#: composites call weighted (Zennit's Linear and Convolution), PatternNet fits patterns for and
#: BatchNorm folds into.  Other modules name these kinds through this tuple only.
WEIGHTED = (Conv2d, Linear)

__all__ = ["WEIGHTED", "Layer", "AffineLayer", "Linear", "Conv2d", "ReLU", "Tanh", "Softmax", "SumPool2d", "AvgPool2d",
           "GlobalAvgPool2d", "LRN", "MaxPool2d", "Flatten", "Dropout", "BatchNorm2d", "Add", "Concat",
           "ChannelAffine", "ChannelShuffle", "Network", "Sequential", "Graph", "Hardtanh", "ReLU6", "LeakyReLU",
           "AdaptiveAvgPool2d", "GELU", "SiLU", "Scale", "CausalMask", "SplitHeads", "MergeHeads", "MatMul", "Mul",
           "MultiheadAttention", "LayerNorm", "RMSNorm", "expand",
           "GraphLayer", "TransformerEncoderLayer", "SwiGLUBlock", "PatchEmbedding", "ToTokens", "ClassToken",
           "PositionEmbedding", "SelectToken",
           "Embedding", "Transpose", "Sigmoid", "Conv1d", "MaxPool1d", "AvgPool1d", "SumPool1d", "GlobalMaxPool1d",
           "LSTM", "GRU", "sequence_lengths"]
