"""Pictures: relevance heatmaps and the per-layer conservation plot (matplotlib)."""

import numpy as np


def _plt():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - an interactive backend already in use is fine
            pass
    import matplotlib.pyplot as plt
    return plt


def heatmap(relevance, ax=None, title=None):
    """Show one sample's relevance (C, H, W) or (H, W), summed over channels, red positive / blue negative.

    The colour scale is symmetric around 0, so white means no relevance.
    """
    plt = _plt()
    r = np.asarray(relevance)
    r = r.sum(axis=0) if r.ndim == 3 else r
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    v = float(np.abs(r).max()) or 1.0
    im = ax.imshow(r, cmap="bwr", vmin=-v, vmax=v)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return im


def plot_conservation(report, sample=None, title="relevance at each layer"):
    """Plot a :class:`~lrpnumpy.explain.ConservationReport`; returns the figure.

    Top: sum of relevance at the input of every layer (and at the output, last).  Bottom: the
    share of each layer's output relevance absorbed by its biases and by its stabilizer
    (including relevance dropped at zero denominators), in percent.
    """
    plt = _plt()
    rows = report.to_dict(sample)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(max(6, 0.6 * len(rows)), 5),
                                      gridspec_kw={"height_ratios": [2, 1]})
    sums = [r["relevance_in"] for r in rows] + [rows[-1]["relevance_out"]]
    labels = [f"{r['index']}: {r['layer'].split('(')[0]}" for r in rows] + ["output"]
    xs = np.arange(len(sums))
    top.bar(xs, sums, color="#8da0cb")
    top.axhline(0, color="black", linewidth=0.5)
    top.set_ylabel("sum of R")
    top.set_title(title)

    def share(key):
        return [100 * r[key] / r["relevance_out"] if r["relevance_out"] else 0.0 for r in rows]

    width = 0.4
    bottom.bar(xs[:-1] - width / 2, share("bias"), width, color="#fc8d62", label="bias")
    stab = [a + b for a, b in zip(share("stabilizer"), share("dropped"))]
    bottom.bar(xs[:-1] + width / 2, stab, width, color="#66c2a5", label="stabilizer / dropped")
    bottom.axhline(0, color="black", linewidth=0.5)
    bottom.set_ylabel("absorbed, % of R out")
    bottom.legend(fontsize="small")
    bottom.set_xticks(xs)
    bottom.set_xticklabels(labels, rotation=45, ha="right")
    fig.tight_layout()
    return fig
