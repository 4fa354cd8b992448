"""Attention as explanation: raw attention maps and attention rollout (Abnar & Zuidema, 2020).

Both read the attention weights (the softmax outputs, (N, H, T, T)) of every
:class:`~lrpnumpy.layers.MultiheadAttention` in a traced forward pass, inside transformer blocks
too, fuse the heads, and take the row of the token that the classifier reads (the class token: the
:class:`~lrpnumpy.layers.SelectToken` index, else 0).  The scores of the tokens that came from the
input (a :class:`~lrpnumpy.layers.ClassToken`'s column left out) are the explanation; behind a
:class:`~lrpnumpy.layers.PatchEmbedding` each pixel gets its patch's score, so the relevance has the
input's shape.  Neither depends on the target class (the target is recorded only): they are the
baselines that AttnLRP is compared with.

References
----------
.. [1] Abnar, Zuidema. "Quantifying Attention Flow in Transformers". ACL 2020.
"""

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explain import Explanation, logit_network, target_classes
from ..explanation import forward_checked
from ..layers import MultiheadAttention
from ..registry import register_method as register
from ..layers.transformer import ClassToken, GraphLayer, PatchEmbedding, SelectToken

FUSIONS = {"mean": lambda a: a.mean(axis=1), "max": lambda a: a.max(axis=1), "min": lambda a: a.min(axis=1)}


def attention_weights(trace):
    """The attention weights (N, H, T, T) of every MultiheadAttention of ``trace``, in execution order
    (those inside transformer blocks included)."""
    found = []
    for step in trace:
        if isinstance(step.layer, MultiheadAttention):
            graph, inner = step.state
            found.append(inner[graph.names.index("attention")].output)
        elif isinstance(step.layer, GraphLayer):
            found += attention_weights(step.state[1])
    return found


def _fuse(head_fusion):
    if head_fusion not in FUSIONS:
        raise RuleParameterError(f"head_fusion must be one of {sorted(FUSIONS)}, got {head_fusion!r}")
    return FUSIONS[head_fusion]


def _setup(model, x):
    net = logit_network(model, x)
    out, trace = forward_checked(net, x)
    weights = attention_weights(trace)
    if not weights:
        raise ShapeError("attention maps need a network with MultiheadAttention layers (or transformer blocks); "
                         "this one has none")
    return net, out, trace, weights


def _token_scores(net, x, scores, token):
    """Scores (N, T) of the read token's row: the input's tokens only, as pixels behind a patch embedding."""
    layers = list(net)
    if token is None:
        token = next((layer.index for layer in layers if isinstance(layer, SelectToken)), 0)
    T = scores.shape[-1]
    if not -T <= token < T:
        raise RuleParameterError(f"token {token} is not among the {T} tokens")
    row = scores[:, token]
    added = sum(isinstance(layer, ClassToken) for layer in layers)
    row = row[:, added:]
    patch = next((layer for layer in layers if isinstance(layer, PatchEmbedding)), None)
    if patch is None or x.ndim != 4:
        return row
    p = patch.patch_size
    h, w = x.shape[2] // p, x.shape[3] // p
    grid = row.reshape(len(x), 1, h, w)
    pixels = np.repeat(np.repeat(grid, p, axis=2), p, axis=3)
    return np.broadcast_to(pixels, (len(x), x.shape[1], h * p, w * p)).copy()


@register("attention_rollout")
def attention_rollout(model, x, target=None, head_fusion="mean", residual=True, token=None):
    r"""Attention rollout (Abnar & Zuidema 2020): the attention of all layers multiplied through.

    Per layer the heads are fused (``head_fusion``: mean, max or min), the residual connection is
    modelled as ``A' = (A + I) / 2`` (``residual=True``; rows still sum to 1), and

    .. math:: \tilde A = A'_L A'_{L-1} \cdots A'_1

    The explanation is the row of the read token (``token``; default the SelectToken's index, else 0)
    over the input's tokens.

    Returns
    -------
    Explanation
        ``relevance`` of the input's shape behind a PatchEmbedding (each pixel its patch's score),
        else (N, T) token scores.
    """
    fuse = _fuse(head_fusion)
    net, out, trace, weights = _setup(model, x)
    t = target_classes(out, target)
    rollout = None
    for a in weights:
        a = fuse(a)
        if residual:
            a = (a + np.eye(a.shape[-1], dtype=a.dtype)) * a.dtype.type(0.5)
        rollout = a if rollout is None else a @ rollout
    return Explanation(_token_scores(net, x, rollout, token), out, t, method="attention_rollout",
                       params=dict(head_fusion=head_fusion, residual=residual, token=token))


@register("raw_attention")
def raw_attention(model, x, target=None, layer=-1, head_fusion="mean", token=None):
    """One layer's attention weights (default the last), heads fused, the read token's row.

    ``layer`` counts the attention layers in execution order (negative from the end).  Returns an
    Explanation shaped as :func:`attention_rollout`'s.
    """
    fuse = _fuse(head_fusion)
    net, out, trace, weights = _setup(model, x)
    if not (isinstance(layer, int) and not isinstance(layer, bool) and -len(weights) <= layer < len(weights)):
        raise RuleParameterError(f"layer must be an int in [{-len(weights)}, {len(weights)}) (the network has "
                                 f"{len(weights)} attention layers), got {layer!r}")
    t = target_classes(out, target)
    return Explanation(_token_scores(net, x, fuse(weights[layer]), token), out, t, method="raw_attention",
                       params=dict(layer=layer, head_fusion=head_fusion, token=token))
