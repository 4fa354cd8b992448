"""Word heatmaps: each token on a background coloured by its relevance (re-exported as ``viz.text``).

Red is evidence for the explained class, blue against, white zero; the scale is symmetric around
zero (``max_abs``, by default the largest ``|relevance|`` of the text), as in :mod:`lrpnumpy.viz`.
:func:`text` returns a :class:`TextHeatmap`: its ``html`` (shown by Jupyter as it is), a
matplotlib figure (:meth:`TextHeatmap.figure`, with a title and a colour bar), and
:meth:`TextHeatmap.save` (``.html``: the HTML page; anything else: the figure, PNG or PDF).
"""

import html
import numbers

import numpy as np

from .errors import ParameterError, ShapeError

_LEGEND = "red: evidence for the class, blue: against, white: zero"


def _colours(values, max_abs, cmap="bwr"):
    """RGB in [0, 1] per value; ``bwr`` exactly (matplotlib's 256-entry table has no exact white)."""
    import matplotlib
    scaled = np.clip(np.asarray(values, np.float64) / max_abs, -1, 1) if max_abs > 0 else np.zeros(len(values))
    if cmap == "bwr":  # blue (0, 0, 1) -> white -> red (1, 0, 0), linear on each side
        pos, neg = np.maximum(scaled, 0), np.maximum(-scaled, 0)
        return np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1).reshape(-1, 3)
    return matplotlib.colormaps[cmap]((scaled + 1) / 2)[:, :3]


class TextHeatmap:
    """Tokens with their relevance and colours; ``html`` is the highlighted text as an HTML fragment."""

    def __init__(self, tokens, relevance, title=None, max_abs=None, cmap="bwr"):
        self.tokens = [str(t) for t in tokens]
        r = np.asarray(relevance, np.float64)
        if r.shape != (len(self.tokens),):
            raise ShapeError(f"viz.text needs one relevance per token: {len(self.tokens)} tokens, relevance of "
                             f"shape {r.shape}")
        if not np.isfinite(r).all():
            raise ShapeError("viz.text: the relevance holds NaN or infinity")
        if max_abs is None:
            max_abs = float(np.abs(r).max()) if r.size else 0.0
        elif not (isinstance(max_abs, numbers.Real) and np.isfinite(max_abs) and max_abs > 0):
            raise ParameterError(f"max_abs must be a finite number > 0 (or None: the largest |relevance|), "
                                 f"got {max_abs!r}")
        self.relevance, self.title, self.max_abs, self.cmap = r, title, float(max_abs), cmap
        self.colours = _colours(r, self.max_abs, cmap)

    @property
    def html(self):
        """The tokens as ``<span>`` elements with their colour as background and relevance as tooltip."""
        spans = []
        for tok, value, c in zip(self.tokens, self.relevance, self.colours):
            rgb = ",".join(str(int(round(255 * v))) for v in c)
            spans.append(f'<span title="{value:+.4g}" style="background-color: rgb({rgb}); padding: 1px 2px; '
                         f'border-radius: 2px">{html.escape(tok)}</span>')
        head = f"<p><b>{html.escape(self.title)}</b></p>" if self.title else ""
        return (f'<div class="lrpnumpy-text">{head}<p style="line-height: 1.9">{" ".join(spans)}</p>'
                f'<p style="font-size: small">{_LEGEND}; scale +-{self.max_abs:.4g}</p></div>')

    def _repr_html_(self):
        return self.html

    def __repr__(self):
        return f"TextHeatmap({len(self.tokens)} tokens, max |R| {self.max_abs:.4g})"

    def figure(self, width=8.0, fontsize=11):
        """A matplotlib figure: the tokens in lines on their colours, a title and a colour bar."""
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from .viz import _plt
        plt = _plt()
        fig = plt.figure(figsize=(width, 1.0))
        renderer = fig.canvas.get_renderer()
        dpi = fig.dpi
        probe = fig.text(0, 0, "Hg", fontsize=fontsize)
        line = 1.9 * probe.get_window_extent(renderer).height
        widths = []
        for tok in self.tokens:  # token widths in pixels (they depend on the dpi, not the figure size)
            probe.set_text(tok)
            widths.append(probe.get_window_extent(renderer).width)
        probe.remove()
        margin, gap, usable = 0.15 * dpi, 0.5 * fontsize * dpi / 72, (width - 0.3) * dpi
        places, x, row = [], 0.0, 0
        for w in widths:
            if x > 0 and x + w > usable:
                x, row = 0.0, row + 1
            places.append((x, row))
            x += w + gap
        title_h = 0.35 * dpi if self.title else 0.1 * dpi
        bar_h = 0.75 * dpi
        height = title_h + (row + 1) * line + bar_h
        fig.set_size_inches(width, height / dpi)
        W, H = width * dpi, height
        for tok, c, (x, r) in zip(self.tokens, self.colours, places):
            fig.text((margin + x) / W, 1 - (title_h + (r + 0.5) * line) / H, tok, fontsize=fontsize, va="center",
                     ha="left", bbox=dict(facecolor=c, edgecolor="none", pad=1.5))
        if self.title:
            fig.text(margin / W, 1 - 0.5 * title_h / H, self.title, fontsize="small", va="center", ha="left",
                     weight="bold")
        cax = fig.add_axes([margin / W, 0.45 * dpi / H, 1 - 2 * margin / W, 0.12 * dpi / H])
        bar = fig.colorbar(ScalarMappable(Normalize(-self.max_abs, self.max_abs), self.cmap), cax=cax,
                           orientation="horizontal")
        bar.set_label(f"relevance ({_LEGEND})", fontsize="x-small")
        bar.ax.tick_params(labelsize="x-small")
        return fig

    def save(self, path, dpi=120):
        """Write the HTML (``.html``/``.htm``) or the figure (other suffixes: matplotlib's, PNG or PDF)."""
        path = str(path)
        if path.lower().endswith((".html", ".htm")):
            with open(path, "w", encoding="utf-8") as f:
                f.write(f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(self.title or "")}'
                        f"</title></head><body>{self.html}</body></html>\n")
            return path
        from .viz import save
        save(self.figure(), path, dpi=dpi)
        return path


def text(tokens, relevance, title=None, max_abs=None, cmap="bwr"):
    """A word heatmap of ``tokens`` (strings) and their ``relevance`` (one number each).

    Returns a :class:`TextHeatmap`: ``.html``, ``.figure()``, ``.save(path)``; in Jupyter it shows as
    the highlighted text.  ``max_abs`` fixes the colour scale (to compare several texts on one
    scale); by default the text's largest ``|relevance|`` is full red or blue.
    """
    return TextHeatmap(tokens, relevance, title, max_abs, cmap)


__all__ = ["text", "TextHeatmap"]
