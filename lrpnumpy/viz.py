"""Pictures: relevance heatmaps, method grids, overlays and the per-layer conservation plot (matplotlib, headless).

The field's conventions: colour limits symmetric around zero, so zero is white with ``bwr`` /
``seismic`` (red positive, blue negative), or black with the LRP Toolbox's ``hotcold`` look
(positive red to yellow, negative blue to cyan).  :func:`heatmap` draws on one Axes and returns
it, as matplotlib's own plotting functions do; the others return the figure.  Figures are made
with :mod:`matplotlib.pyplot` and its backend as configured (Agg when there is no display), so in
a script ``plt.show()`` shows them and in an interactive session they appear at once; ``save=PATH``
(or :func:`save`) writes PNG or PDF.  :func:`to_rgb` is the colour mapping itself, as an array.

The heatmap figures (:func:`grid`, and :func:`heatmap` with ``colorbar`` and ``legend``) carry
a title, a colour bar and the legend :data:`LEGEND` (red: evidence for the class, blue: against).
"""

import numpy as np

from .errors import ShapeError


#: The two entries of the heatmaps' legend: relevance above zero speaks for the explained class.
LEGEND = ("red: evidence for the class", "blue: against")
_RED_BLUE = ("bwr", "seismic", "hotcold", "coolwarm", "RdBu_r")


def _plt():
    # pyplot with the backend matplotlib chose or the user set: never forced, so plt.show() works
    import matplotlib.pyplot as plt
    return plt


def _legend_labels(cmap):
    if cmap in _RED_BLUE:
        return LEGEND
    return (f"high ({cmap}): evidence for the class", "low: against")


def _legend_handles(cmap):
    from matplotlib.patches import Patch
    colours, (positive, negative) = _cmap(cmap), _legend_labels(cmap)
    high, low = (0.75, 0.25) if cmap == "hotcold" else (0.9, 0.1)  # hotcold: red and blue, not yellow and cyan
    return [Patch(facecolor=colours(high), edgecolor="none", label=positive),
            Patch(facecolor=colours(low), edgecolor="none", label=negative)]


def _colorbar(fig, im, ax):
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=[-1, 0, 1])
    bar.ax.set_yticklabels(["-max", "0", "+max"], fontsize="x-small")
    bar.set_label("relevance / max |R|", fontsize="x-small")
    return bar


def _cmap(name):
    import matplotlib
    from matplotlib.colors import LinearSegmentedColormap
    if name == "hotcold":
        return LinearSegmentedColormap.from_list("hotcold", [(0.0, (0.0, 1.0, 1.0)), (0.25, (0.0, 0.0, 1.0)),
                                                             (0.5, (0.0, 0.0, 0.0)), (0.75, (1.0, 0.0, 0.0)),
                                                             (1.0, (1.0, 1.0, 0.0))])
    return matplotlib.colormaps[name]


def _one_sample(relevance, what="relevance"):
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 3:
        r = r.sum(axis=0)
    if r.ndim != 2:
        raise ShapeError(f"{what} must be one sample, (C, H, W) or (H, W), got shape {r.shape}; for a batch pass "
                         f"relevance[i], or use viz.grid")
    return r


def normalize(relevance, gamma=1.0, percentile=None):
    """One sample's relevance summed over channels, scaled to [-1, 1] (0 stays 0).

    ``percentile`` (e.g. 99.5) clips at that percentile of ``|R|`` instead of its maximum;
    ``gamma`` < 1 brightens faint relevance (``sign(r) |r| ** gamma``).
    """
    r = _one_sample(relevance)
    limit = np.percentile(np.abs(r), percentile) if percentile is not None else np.abs(r).max()
    r = np.clip(r / limit, -1, 1) if limit > 0 else np.zeros_like(r)
    return np.sign(r) * np.abs(r) ** gamma if gamma != 1.0 else r


def to_rgb(relevance, cmap="bwr", gamma=1.0, percentile=None):
    """The heatmap as an (H, W, 3) array of floats in [0, 1]."""
    return _cmap(cmap)((normalize(relevance, gamma, percentile) + 1) / 2)[..., :3]


def heatmap(relevance, ax=None, title=None, cmap="bwr", gamma=1.0, percentile=None, image=None, alpha=0.6,
            colorbar=False, legend=False, save=None):
    """Draw one sample's relevance (C, H, W) or (H, W), summed over channels; returns the Axes.

    Parameters
    ----------
    ax : matplotlib Axes, optional
        Where to draw; default a new 3 x 3 inch figure (made with pyplot: ``plt.show()`` shows it).
    title : str, optional
    cmap : str
        ``"bwr"`` (default; white at zero), ``"seismic"``, ``"hotcold"`` (the LRP Toolbox's look,
        black at zero) or any matplotlib colormap.
    gamma, percentile
        See :func:`normalize`.
    image : ndarray, optional
        The input (C, H, W) or (H, W), drawn in grey beneath the heatmap (an overlay), which is
        then drawn with ``alpha``.
    colorbar : bool
        Add a colour bar (relevance scaled to [-1, 1]).
    legend : bool
        Add the legend :data:`LEGEND` below the heatmap.
    save : str or path-like, optional
        Also write the figure to this PNG or PDF file (see :func:`save`).

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on (its figure: ``ax.figure``).
    """
    r = normalize(relevance, gamma, percentile)
    if ax is None:
        _, ax = _plt().subplots(figsize=(3, 3), layout="constrained")
    if image is not None:
        ax.imshow(_one_sample(image, "image"), cmap="gray")
    im = ax.imshow(r, cmap=_cmap(cmap), vmin=-1, vmax=1, alpha=alpha if image is not None else None,
                   interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="small")
    if colorbar:
        _colorbar(ax.figure, im, ax)
    if legend:
        ax.legend(handles=_legend_handles(cmap), loc="upper center", bbox_to_anchor=(0.5, -0.02),
                  fontsize="x-small", frameon=False)
    if save is not None:
        _write(ax.figure, save)
    return ax


def grid(relevances, images=None, titles=None, cmap="bwr", gamma=1.0, percentile=None, size=1.8,
         title="relevance of each pixel for the explained class", colorbar=True, legend=True, save=None):
    """A grid of heatmaps: one row per sample, one column per method (and the input first, if given).

    Parameters
    ----------
    relevances : dict of str to ndarray of shape (N, C, H, W) or (N, H, W)
        Method or rule name -> relevance of a batch.
    images : ndarray, optional
        The inputs, shown in the first column.
    titles : list of str, optional
        One per sample (e.g. the predicted class), put on the left.
    title : str or None
        The figure's title (None: none).
    colorbar, legend : bool
        A colour bar beside the heatmaps, and the legend :data:`LEGEND` below them.
    save : str or path-like, optional
        Also write the figure to this PNG or PDF file (see :func:`save`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    names = list(relevances)
    n = len(next(iter(relevances.values())))
    cols = len(names) + (images is not None)
    fig, axes = plt.subplots(n, cols, figsize=(size * cols + 0.8 * colorbar, size * n + 0.5 * bool(title) +
                                               0.4 * legend), squeeze=False, layout="constrained")
    for i in range(n):
        col = 0
        if images is not None:
            axes[i, 0].imshow(_one_sample(images[i], "image"), cmap="gray")
            axes[i, 0].set_xticks([])
            axes[i, 0].set_yticks([])
            if i == 0:
                axes[i, 0].set_title("input", fontsize="small")
            col = 1
        for j, name in enumerate(names):
            heatmap(relevances[name][i], ax=axes[i, col + j], title=name if i == 0 else None, cmap=cmap,
                    gamma=gamma, percentile=percentile)
        if titles:
            axes[i, 0].set_ylabel(titles[i], fontsize="small")
    maps = axes[:, cols - len(names):]
    if title:
        fig.suptitle(title, fontsize="medium")
    if colorbar:
        _colorbar(fig, maps[0, 0].images[-1], list(maps.ravel()))
    if legend:
        fig.legend(handles=_legend_handles(cmap), loc="outside lower center", ncol=2, fontsize="small",
                   frameon=False)
    if save is not None:
        _write(fig, save)
    return fig


def images(batch, titles=None, cols=8, size=1.2, cmap="gray", symmetric=False):
    """A grid of images (N, C, H, W) or (N, H, W), e.g. activation-maximization prototypes; with
    ``symmetric`` a colour map centred at zero (``bwr``: weights, filters)."""
    plt = _plt()
    batch = np.asarray(batch)
    n = len(batch)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        img = _one_sample(batch[k], "image")
        if symmetric:
            lim = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim)
        else:
            ax.imshow(img, cmap=cmap)
        if titles is not None:
            ax.set_title(str(titles[k]), fontsize="x-small")
    fig.tight_layout()
    return fig


def filters(layer, cols=8, size=1.0):
    """The filters of a Conv2d layer as a grid of images (output channel per cell, input channels
    averaged), colours symmetric around zero."""
    w = np.asarray(layer.weight)
    if w.ndim != 4:
        raise ShapeError(f"filters needs a Conv2d layer (weights (out, in, kh, kw)), got weights of shape {w.shape}")
    return images(w.mean(axis=1), titles=[f"filter {k}" for k in range(len(w))], cols=cols, size=size, symmetric=True)


def weights(layer, shape, titles=None, cols=5, size=1.4):
    """The weights of a Linear layer reshaped to its input's shape (e.g. (28, 28)), one image per
    output neuron: what each neuron looks for in the input."""
    w = np.asarray(layer.weight)
    if w.ndim != 2 or int(np.prod(shape)) != w.shape[1]:
        raise ShapeError(f"weights of shape {w.shape} cannot be shown as inputs of shape {tuple(shape)}")
    return images(w.reshape((len(w),) + tuple(shape)), titles=titles, cols=cols, size=size, symmetric=True)


def save(fig, path, dpi=120):
    """Write ``fig`` (a Figure, or an Axes: its figure) to ``path`` (PNG or PDF, by its extension);
    returns the path."""
    return _write(fig.figure, path, dpi)


def _write(fig, path, dpi=120):
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


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


from .viz_text import TextHeatmap, text  # noqa: E402,F401  word heatmaps (lrpnumpy/viz_text.py)
