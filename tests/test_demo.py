"""lrpnumpy.demo: the conservation table it prints and the figure it writes."""

import numpy as np


def test_demo_prints_the_conservation_table(tmp_path):
    import matplotlib.image as mpimg
    lines = []
    e = __import__("lrpnumpy.demo", fromlist=["run"]).run(str(tmp_path / "demo.png"), out=lines.append)
    text = "\n".join(lines)
    assert "ZBox" in text and "R at output" in text and "predicted" in text
    assert np.abs(e.conservation().residual()).max() < 1e-12
    img = mpimg.imread(tmp_path / "demo.png")[..., :3]
    reddish = (img[..., 0] > 0.8) & (img[..., 1] < 0.4) & (img[..., 2] < 0.4)
    assert reddish.sum() > 50  # the heatmaps show positive relevance, not only white and grey
