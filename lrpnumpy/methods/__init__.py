"""Explanation methods besides LRP's rules, each ``name(model, x, target=None, ...) -> Explanation``.

* the gradient family (:mod:`.gradient`): ``gradient``, ``sensitivity``, ``gradient_x_input``,
  ``interior_gradients``, ``integrated_gradients``, ``smoothgrad``;
* simple Taylor decomposition at a root point (:mod:`.taylor`): ``simple_taylor``;
* modified backward passes (:mod:`.backprop`): ``deconvnet``, ``guided_backprop``, ``deeplift``;
* perturbation (:mod:`.perturbation`): ``occlusion``;
* class activation maps (:mod:`.cam`): ``grad_cam`` and ``interpolate``;
* attention (:mod:`.attention`): ``attention_rollout``, ``raw_attention``;
* signal and attribution from patterns fitted to data (:mod:`.patterns`): ``fit_patterns``,
  ``pattern_net``, ``pattern_attribution``;
* tricks around any method (:mod:`.tricks`): ``translation_trick``, ``sliding_window``,
  ``contrastive``, ``internal_influence`` with ``top_units`` and ``channel_mask``.

:data:`REGISTRY` maps names to methods for the command line and ``verify``; ``"lrp"`` is
:func:`lrpnumpy.explain`.
"""

from ..errors import RuleParameterError
from ..explain import explain
from .attention import attention_rollout, attention_weights, raw_attention
from .backprop import deconvnet, deeplift, guided_backprop
from .cam import grad_cam, interpolate, layer_index
from .gradient import (gradient, gradient_x_input, integrated_gradients, interior_gradients, sensitivity, smoothgrad,
                       walk)
from .patterns import fit_patterns, pattern_attribution, pattern_net
from .perturbation import occlusion
from .taylor import find_root, simple_taylor
from .tricks import channel_mask, contrastive, internal_influence, shift, sliding_window, top_units, translation_trick

#: Method name -> ``method(model, x, target=None, **kwargs) -> Explanation``.
REGISTRY = {
    "lrp": explain, "gradient": gradient, "sensitivity": sensitivity, "gradient_x_input": gradient_x_input,
    "interior_gradients": interior_gradients, "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad, "simple_taylor": simple_taylor, "deconvnet": deconvnet,
    "guided_backprop": guided_backprop, "deeplift": deeplift, "occlusion": occlusion, "grad_cam": grad_cam,
    "pattern_net": pattern_net, "pattern_attribution": pattern_attribution,
    "attention_rollout": attention_rollout, "raw_attention": raw_attention,
}


def get(name):
    """The method registered as ``name`` (see :data:`REGISTRY`)."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise RuleParameterError(f"unknown method {name!r}; choose from {', '.join(sorted(REGISTRY))}") from None


__all__ = sorted(REGISTRY) + ["REGISTRY", "get", "interpolate", "layer_index", "walk", "find_root", "shift",
                              "translation_trick", "sliding_window", "contrastive", "internal_influence",
                              "top_units", "channel_mask", "fit_patterns", "attention_weights"]
__all__.remove("lrp")
