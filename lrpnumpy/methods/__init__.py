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
:func:`lrpnumpy.explain`.  Each method is named where it is defined, with ``@register("name")``
(:func:`register`, also for methods defined outside the package).
"""

# (imported in this order, the registry lists the methods in it)
from ..errors import RuleParameterError
from ..explain import explain  # noqa: F401  ("lrp")
from ..registry import METHODS
from .gradient import (gradient, gradient_x_input, integrated_gradients, interior_gradients, sensitivity, smoothgrad,
                       walk)
from .taylor import find_root, simple_taylor
from .backprop import deconvnet, deeplift, guided_backprop
from .perturbation import occlusion
from .cam import grad_cam, interpolate, layer_index
from .patterns import fit_patterns, pattern_attribution, pattern_net
from .attention import attention_rollout, attention_weights, raw_attention
from .tricks import channel_mask, contrastive, internal_influence, shift, sliding_window, top_units, translation_trick

#: Method name -> ``method(model, x, target=None, **kwargs) -> Explanation``.
REGISTRY = METHODS


def register(name, method=None):
    """Add an explanation method to :data:`REGISTRY` under ``name``: ``register(name, fn)``, or
    ``@register(name)`` above the function; returns ``method``.

    A method is ``method(model, x, target=None, **kwargs) -> Explanation``; once registered, the
    command line, ``verify`` and ``evaluate`` find it by name.
    """
    return REGISTRY.register(name, method)


def get(name):
    """The method registered as ``name`` (see :data:`REGISTRY`)."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise RuleParameterError(f"unknown method {name!r}; choose from {', '.join(sorted(REGISTRY))}") from None


__all__ = ["deconvnet", "deeplift", "grad_cam", "gradient", "gradient_x_input", "guided_backprop",
           "integrated_gradients", "interior_gradients", "occlusion", "pattern_attribution", "pattern_net",
           "sensitivity", "simple_taylor", "smoothgrad",
           "REGISTRY", "register", "get", "interpolate", "layer_index", "walk", "find_root", "shift",
           "translation_trick", "sliding_window", "contrastive", "internal_influence", "top_units", "channel_mask",
           "fit_patterns", "attention_rollout", "raw_attention", "attention_weights"]
