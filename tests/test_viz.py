"""Heatmaps: colours checked pixel by pixel (red positive, blue negative, white zero), grids, overlays, files."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import viz


R = np.array([[1.0, 0.0, -1.0]])


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
    fig = viz.heatmap(R, colorbar=False)
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
    assert len(fig.axes) == 6 and fig.axes[1].get_title() == "lrp" and fig.axes[0].get_ylabel() == "a"
    fig = viz.heatmap(rel["lrp"][0], image=rng.random((1, 5, 5)), colorbar=True)
    assert len(fig.axes) == 2  # the image and its colour bar
