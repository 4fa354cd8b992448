"""Heatmaps: colours checked pixel by pixel (red positive, blue negative, white zero), grids, overlays, files;
the title, colour bar and legend of every figure the CLI and the demo write; heatmap in a script."""

import os
import subprocess
import sys

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import viz


R = np.array([[1.0, 0.0, -1.0]])


@pytest.fixture(autouse=True)
def _close_figures():
    """pyplot keeps every figure until closed (and warns past 20): close this file's figures."""
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def test_colours_follow_the_convention():
    rgb = viz.to_rgb(R)
    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0], atol=0.02)   # positive: red
    np.testing.assert_allclose(rgb[0, 1], [1, 1, 1], atol=0.02)   # zero: white
    np.testing.assert_allclose(rgb[0, 2], [0, 0, 1], atol=0.02)   # negative: blue
    hc = viz.to_rgb(np.array([[1.0, 0.5, 0.0, -0.5, -1.0]]), cmap="hotcold")
    np.testing.assert_allclose(hc[0, 2], [0, 0, 0], atol=0.02)    # the Toolbox's look: black at zero
    np.testing.assert_allclose(hc[0, 0], [1, 1, 0], atol=0.02)    # hot
    np.testing.assert_allclose(hc[0, 1], [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(hc[0, 4], [0, 1, 1], atol=0.02)    # cold
    np.testing.assert_allclose(hc[0, 3], [0, 0, 1], atol=0.02)


def test_limits_are_symmetric_and_gamma_and_percentile_apply():
    r = np.array([[4.0, -1.0, 0.0]])
    np.testing.assert_allclose(viz.normalize(r), [[1.0, -0.25, 0.0]])
    np.testing.assert_allclose(viz.normalize(r, gamma=0.5), [[1.0, -0.5, 0.0]])
    spiky = np.concatenate([np.full(99, 1.0), [100.0]])[None]
    assert viz.normalize(spiky, percentile=90)[0, 0] == 1.0  # the outlier no longer washes out the rest
    assert np.isfinite(viz.normalize(np.zeros((2, 2)))).all()
    with pytest.raises(L.errors.ShapeError, match="one sample"):
        viz.heatmap(np.zeros((2, 1, 3, 3)))


def test_rendered_png_has_the_colours(tmp_path):
    import matplotlib.image as mpimg
    fig = viz.heatmap(R, colorbar=False).figure
    fig.set_size_inches(3, 1)
    path = viz.save(fig, tmp_path / "h.png", dpi=100)
    img = mpimg.imread(path)[..., :3]
    row = img[img.shape[0] // 2]
    # the three cells, left to right, sampled at a quarter, a half and three quarters of the width
    w = img.shape[1]
    for x, want in ((w // 6, [1, 0, 0]), (w // 2, [1, 1, 1]), (5 * w // 6, [0, 0, 1])):
        np.testing.assert_allclose(row[x], want, atol=0.05)
    assert viz.save(fig, tmp_path / "h.pdf").read_bytes()[:4] == b"%PDF"


def test_grid_and_overlay():
    rng = np.random.default_rng(0)
    rel = {"lrp": rng.normal(size=(2, 1, 5, 5)), "gradient": rng.normal(size=(2, 1, 5, 5))}
    fig = viz.grid(rel, images=rng.random((2, 1, 5, 5)), titles=["a", "b"])
    assert len(fig.axes) == 7 and fig.axes[1].get_title() == "lrp" and fig.axes[0].get_ylabel() == "a"
    assert fig.axes[6].get_label() == "<colorbar>"  # 2 x 3 cells and the colour bar
    fig = viz.heatmap(rel["lrp"][0], image=rng.random((1, 5, 5)), colorbar=True).figure
    assert len(fig.axes) == 2  # the image and its colour bar


def _pixel(fig, ax, fx, fy):
    """The RGB at the fraction (fx, fy) of ``ax``'s box (from its lower left) in ``fig`` as drawn."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    box = ax.get_window_extent()
    x, y = box.x0 + fx * box.width, box.y0 + fy * box.height
    return img[img.shape[0] - 1 - int(round(y)), int(round(x))]


def _check_heatmap_figure(fig, title=None):
    """A title, a colour bar red at the top and blue at the bottom, and the red/blue legend."""
    assert fig.get_suptitle() and (title is None or title in fig.get_suptitle())
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    np.testing.assert_allclose(_pixel(fig, bars[0], 0.5, 0.98), [1, 0, 0], atol=0.1)
    np.testing.assert_allclose(_pixel(fig, bars[0], 0.5, 0.5), [1, 1, 1], atol=0.1)
    np.testing.assert_allclose(_pixel(fig, bars[0], 0.5, 0.02), [0, 0, 1], atol=0.1)
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    assert tuple(t.get_text() for t in legend.get_texts()) == viz.LEGEND
    assert viz.LEGEND == ("red: evidence for the class", "blue: against")
    red, blue = (h.get_facecolor()[:3] for h in legend.legend_handles)
    assert red[0] > 0.9 > 0.3 > red[2] and blue[2] > 0.9 > 0.3 > blue[0]
    assert legend.get_window_extent(fig.canvas.get_renderer()).y1 < min(
        ax.get_window_extent().y0 for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>") + 1


def test_grid_has_a_title_a_colour_bar_and_the_legend(tmp_path):
    rng = np.random.default_rng(0)
    rel = {"lrp": rng.normal(size=(2, 1, 5, 5)), "gradient": rng.normal(size=(2, 1, 5, 5))}
    fig = viz.grid(rel, images=rng.random((2, 1, 5, 5)), save=tmp_path / "g.png")
    _check_heatmap_figure(fig, "relevance")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    hot = viz.grid(rel, cmap="hotcold").legends[0].legend_handles
    np.testing.assert_allclose([h.get_facecolor()[:3] for h in hot], [[1, 0, 0], [0, 0, 1]], atol=0.02)
    plain = viz.grid(rel, title=None, colorbar=False, legend=False)
    assert not plain.get_suptitle() and not plain.legends and len(plain.axes) == 4


def test_heatmap_returns_its_axes_and_adds_colour_bar_legend_and_file_when_asked(tmp_path):
    import matplotlib.pyplot as plt
    ax = viz.heatmap(R, title="t", colorbar=True, legend=True, save=tmp_path / "h.png")
    assert isinstance(ax, plt.Axes) and ax.get_title() == "t" and plt.gcf() is ax.figure
    assert [a.get_label() for a in ax.figure.axes].count("<colorbar>") == 1
    assert tuple(t.get_text() for t in ax.get_legend().get_texts()) == viz.LEGEND
    assert (tmp_path / "h.png").exists() and viz.save(ax, tmp_path / "h.pdf").read_bytes()[:4] == b"%PDF"
    fig, (left, right) = plt.subplots(1, 2)
    assert viz.heatmap(R, ax=right) is right and not left.images and len(fig.axes) == 2  # drawn where asked


def _written_figures(monkeypatch):
    written = []
    write = viz._write

    def record(fig, path, dpi=120):
        written.append((fig, str(path)))
        return write(fig, path, dpi)
    monkeypatch.setattr(viz, "_write", record)
    return written


def test_the_demo_figure_has_a_title_a_colour_bar_and_the_legend(tmp_path, monkeypatch):
    from lrpnumpy import demo
    written = _written_figures(monkeypatch)
    lines = []
    demo.run(str(tmp_path / "demo.png"), out=lines.append)
    [(fig, path)] = written
    assert path == str(tmp_path / "demo.png") and os.path.exists(path)
    _check_heatmap_figure(fig, "fashion_cnn_maxpool")
    assert any(", ".join(viz.LEGEND) in line for line in lines)


def test_the_explain_command_figure_has_a_title_a_colour_bar_and_the_legend(tmp_path, monkeypatch, capsys):
    from lrpnumpy.__main__ import main
    written = _written_figures(monkeypatch)
    np.save(tmp_path / "x.npy", L.datasets.sample().images[:2])
    model = os.path.join(L.datasets.DATA_DIR, "fashion_mlp.npz")
    assert main(["explain", model, str(tmp_path / "x.npy"), "--out", str(tmp_path / "h.png")]) == 0
    [(fig, path)] = written
    assert path == str(tmp_path / "h.png") and os.path.exists(path)
    _check_heatmap_figure(fig)


# a matplotlib backend that only records what plt.show() was asked to show
_RECORDING_BACKEND = """
from matplotlib._pylab_helpers import Gcf
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas


def show(*args, **kwargs):
    for manager in Gcf.get_all_fig_managers():
        print("shown:", [ax.get_title() for ax in manager.canvas.figure.axes])
"""


def test_heatmap_in_a_script_keeps_the_users_backend_so_plt_show_shows_it(tmp_path):
    (tmp_path / "recording_backend.py").write_text(_RECORDING_BACKEND)
    script = ("import numpy as np, matplotlib, matplotlib.pyplot as plt\n"
              "from lrpnumpy import viz\n"
              "ax = viz.heatmap(np.array([[1.0, -1.0]]), title='mine')\n"
              "print('backend:', matplotlib.get_backend())\n"
              "plt.show()\n")
    env = dict(os.environ, MPLBACKEND="module://recording_backend",
               PYTHONPATH=os.pathsep.join([str(tmp_path)] + [p for p in sys.path if p]))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "backend: module://recording_backend" in r.stdout and "shown: ['mine']" in r.stdout


def test_pictures(tmp_path, rng):
    from lrpnumpy import viz
    from lrpnumpy.demo import sample_input
    from lrpnumpy.zoo import lenet5
    e = L.explain(lenet5(), sample_input(), composite=L.EpsilonPlus())
    fig = viz.plot_conservation(e.conservation())
    fig.savefig(tmp_path / "c.png")
    viz.heatmap(e.relevance[0]).figure.savefig(tmp_path / "h.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "h.png").stat().st_size > 1000
