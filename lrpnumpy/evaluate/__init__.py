r"""How good is an explanation?  Perturbation curves, continuity, class sensitivity, the
parameter-randomisation check, and the use of context.

* :func:`pixel_flipping` (Bach et al., 2015), :func:`region_perturbation` (Samek et al., 2017) and
  :func:`selectivity` (Montavon et al., 2018) remove features in order of relevance and record the
  target score after each step: a :class:`PerturbationResult` with the curves, their area
  (:meth:`~PerturbationResult.auc`) and the average drop (:meth:`~PerturbationResult.aopc`),
  ``AOPC = 1/(L+1) sum_{k=0}^{L} f(x^(0)) - f(x^(k))``.
* :func:`continuity` (Montavon et al., 2018): ``max ||R(x) - R(x')||_1 / ||x - x'||_2`` over
  slightly translated inputs, with ``f`` and ``sum R`` along the path.
* :func:`class_sensitivity`: how much the explanations of different classes differ.
* :func:`randomization_check` (Adebayo et al., 2018): the similarity of the explanation to itself
  as the model's layers are randomised.
* :func:`context`: the share of relevance outside a region.
* :func:`word_deletion` and :func:`word_deletion_curves` (:mod:`~lrpnumpy.evaluate.words`): pixel
  flipping for text models, words deleted in order of relevance.

The perturbed copies of a batch go through the network together, in chunks of ``batch_size``
inputs, so memory stays bounded; a long run shows a progress bar and, interrupted with Ctrl-C,
returns the steps it finished.

When each step removes few pixels, the perturbation curves do not recompute the network's first,
local layers for every perturbed input: a step's change reaches only the receptive fields of the
pixels it changes, so a convolution adds the convolution of the change and activations and pools
are recomputed where it reaches (:mod:`lrpnumpy.incremental`; ``incremental=True``, the default; the
same scores up to rounding, tested against the full recomputation).

The package's modules: :mod:`~lrpnumpy.evaluate.perturbation` (the curves),
:mod:`~lrpnumpy.evaluate.metrics` (the other metrics), :mod:`~lrpnumpy.evaluate.tables` (comparison
tables) and :mod:`~lrpnumpy.evaluate.retraining` (ROAR and KAR); every name is importable from
``lrpnumpy.evaluate`` itself.
"""

from .tables import METRICS, Comparison, compare
from .metrics import class_sensitivity, context, continuity, random_relevance, randomization_check, similarity
from .perturbation import (PerturbationResult, channel_axis_of, pixel_flipping, region_perturbation, removal_order,
                           selectivity)
from .retraining import kar, roar
from .words import WordDeletionResult, word_deletion, word_deletion_curves

# helpers of the single module this package was, still importable from here
from .metrics import _cosine, _ranks, _relevance  # noqa: E402,F401
from .perturbation import _fill, _fill_values, _int, _Layout, _scores  # noqa: E402,F401

__all__ = ["METRICS", "Comparison", "PerturbationResult", "channel_axis_of", "class_sensitivity", "compare",
           "context", "continuity", "kar", "pixel_flipping", "random_relevance", "randomization_check",
           "region_perturbation", "removal_order", "roar", "selectivity", "similarity",
           "WordDeletionResult", "word_deletion", "word_deletion_curves"]
