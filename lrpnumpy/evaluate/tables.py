"""Comparison tables: several explanation methods scored by several metrics (:func:`compare`)."""

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explanation import forward_finite, logit_network, target_classes
from .metrics import _relevance, class_sensitivity, continuity, randomization_check
from .perturbation import pixel_flipping, region_perturbation, selectivity


def _perturbation_metric(function, **defaults):
    def run(model, x, R, t, method, options):
        r = function(model, x, R, t, **{**defaults, **options})
        return {"aopc": r.aopc(), "auc": r.auc()}, (r.fractions, r.curves.mean(axis=0))
    return run


def _continuity_metric(model, x, R, t, method, options):
    return {"continuity": continuity(model, method, x, options.get("shifts", [(0, 1), (1, 1), (1, 0)]), t)[
        "continuity"]}, None


def _sensitivity_metric(model, x, R, t, method, options):
    return {"class_sensitivity": class_sensitivity(model, method, x)["sensitivity"]}, None


def _randomization_metric(model, x, R, t, method, options):
    res = randomization_check(model, method, x, t, **options)
    return {"randomization": res["similarity"][-1]}, None  # similarity once every layer is random


#: Metric name -> function(model, x, relevance, target, method, options) -> (columns, curve or None).
METRICS = {
    "pixel_flipping": _perturbation_metric(pixel_flipping),
    "region_perturbation": _perturbation_metric(region_perturbation),
    "selectivity": _perturbation_metric(selectivity),
    "continuity": _continuity_metric,
    "class_sensitivity": _sensitivity_metric,
    "randomization": _randomization_metric,
}


class Comparison:
    """The table :func:`compare` returns: one row per method, one column per metric score (means over
    the samples; ``per_sample`` keeps every value), and the mean curve of each perturbation metric."""

    def __init__(self, rows, per_sample, curves):
        self.rows, self.per_sample, self.curves = rows, per_sample, curves

    def to_dict(self):
        return {"rows": self.rows}

    def to_json(self, path=None):
        import json
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def to_csv(self, path=None):
        columns = list(self.rows[0]) if self.rows else []
        lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in self.rows]
        text = "\n".join(lines) + "\n"
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def __str__(self):
        if not self.rows:
            return "(no rows)"
        columns = list(self.rows[0])
        width = {c: max(len(c), *(len(_cell(r[c])) for r in self.rows)) for c in columns}
        head = "  ".join(f"{c:<{width[c]}}" if c == "method" else f"{c:>{width[c]}}" for c in columns)
        body = ["  ".join(f"{_cell(r[c]):<{width[c]}}" if c == "method" else f"{_cell(r[c]):>{width[c]}}"
                          for c in columns) for r in self.rows]
        return "\n".join([head, "-" * len(head)] + body)

    def plot(self, metric="pixel_flipping", ax=None):
        """The mean curve of ``metric`` for every method (a matplotlib figure; drawn on ``ax`` if given)."""
        from ..viz import _plt
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 3.5)) if ax is None else (ax.figure, ax)
        for name, curves in self.curves.items():
            if metric in curves:
                fractions, curve = curves[metric]
                ax.plot(fractions, curve, label=name)
        ax.set_xlabel("fraction of features removed")
        ax.set_ylabel("target score")
        ax.set_title(metric.replace("_", " "))
        ax.legend(fontsize="small")
        fig.tight_layout()
        return fig


def _cell(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def compare(model, x, methods, metrics=("pixel_flipping",), target=None, options=None):
    """Score several explanation methods with several metrics on the same inputs: one table.

    Parameters
    ----------
    methods : dict of str to callable
        Name -> ``method(model, x, target) -> Explanation`` (or a relevance array); e.g.
        ``{"lrp": lambda m, v, t: lrpnumpy.explain(m, v, t, composite=...), "gradient":
        lrpnumpy.methods.gradient, "random": random_relevance}``.
    metrics : sequence of str
        Names of :data:`METRICS`: ``pixel_flipping`` and ``region_perturbation`` and ``selectivity``
        (columns ``<metric>_aopc`` and ``<metric>_auc``), ``continuity``, ``class_sensitivity``,
        ``randomization`` (the Spearman similarity once every layer is randomised).
    target : None, int or sequence of int
        The class explained and scored (None: the class predicted for ``x``).
    options : dict of str to dict, optional
        Keyword arguments per metric, e.g. ``{"pixel_flipping": {"features_per_step": 16}}``.

    Returns
    -------
    Comparison
        Printable; ``to_json()``, ``to_csv()``, ``plot(metric)``.
    """
    net = logit_network(model, x)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise RuleParameterError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if not isinstance(methods, dict) or not methods or not all(callable(m) for m in methods.values()):
        raise RuleParameterError("methods must be a non-empty dict {name: method(model, x, target)}")
    options = dict(options or {})
    if len(x) == 0:
        raise ShapeError(f"x is an empty batch (shape {x.shape}): a comparison reports each metric's mean over "
                         f"the samples, and no samples have no mean; the metrics themselves (pixel_flipping, "
                         f"continuity, ...) return empty per-sample scores")
    t = target_classes(forward_finite(net, x), target)
    rows, per_sample, curves = [], {}, {}
    for name, method in methods.items():
        R = _relevance(method(model, x, t))
        row, values, curves[name] = {"method": name}, {}, {}
        for metric in metrics:
            columns, curve = METRICS[metric](model, x, R, t, method, options.get(metric, {}))
            for column, v in columns.items():
                key = column if metric in ("continuity", "class_sensitivity", "randomization") else \
                    f"{metric}_{column}"
                values[key] = v
                row[key] = float(np.mean(v))
            if curve is not None:
                curves[name][metric] = curve
        rows.append(row)
        per_sample[name] = values
    return Comparison(rows, per_sample, curves)
