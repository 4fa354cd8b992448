"""The demo: a trained Fashion-MNIST model, shipped test images, and the heatmaps of five explanations.

``lrpnumpy demo`` loads the shipped ``fashion_cnn_maxpool`` model (package data,
``lrpnumpy/data/``, trained by the repository's ``data/make_models.py``) and four of the shipped
test images, explains the predicted class with three LRP composites, LRP-0
and the gradient (sensitivity), prints the predictions and the conservation table of one
explanation, and writes a figure comparing them (titled, with a colour bar and the red/blue legend).
"""

import os

import numpy as np

from . import composites, datasets, methods, viz, zoo
from .explain import explain
from .rules import LRP0

#: One test image each of: T-shirt/top, Trouser, Sneaker, Ankle boot (indices into the shipped sample).
DEMO_CLASSES = (0, 1, 7, 9)


def sample_input():
    """A 1x1x28x28 image in [0, 1]: a ring and a bar, drawn without any data file."""
    yy, xx = np.mgrid[:28, :28]
    ring = np.exp(-((np.hypot(yy - 14, xx - 11) - 6) ** 2) / 4)
    bar = np.exp(-((xx - 21) ** 2) / 3) * (np.abs(yy - 14) < 9)
    return np.clip(ring + bar, 0, 1)[None, None]


def run(out_png="lrpnumpy_demo.png", model="fashion_cnn_maxpool", out=print):
    """Run the demo; returns the epsilon_gamma_box explanation (AttnLRP's for a transformer whose metadata
    names that composite).  ``out_png=None`` draws no figure."""
    net = zoo.trained(model, dtype=np.float64)  # float64: the reference
    data = datasets.sample()
    x = data.images[[int(np.flatnonzero(data.labels == k)[0]) for k in DEMO_CLASSES]]
    classes = net.meta.get("classes", data.classes)
    if net.meta.get("composite") == "attnlrp":  # a transformer (fashion_vit): its rules, attention as a baseline
        main = "attnlrp"
        explanations = {
            "attnlrp": explain(net, x, composite=composites.get("attnlrp")),
            "cp_lrp": explain(net, x, composite=composites.get("cp_lrp")),
            "gradient_x_input": methods.gradient_x_input(net, x),
            "attention_rollout": methods.attention_rollout(net, x),
            "gradient": methods.gradient(net, x),
        }
    else:
        main = "epsilon_gamma_box"
        explanations = {
            "epsilon_plus": explain(net, x, composite=composites.get("epsilon_plus")),
            "epsilon_gamma_box": explain(net, x, composite=composites.get("epsilon_gamma_box", bounds=(0.0, 1.0))),
            "epsilon_alpha2_beta1": explain(net, x, composite=composites.get("epsilon_alpha2_beta1")),
            "LRP-0": explain(net, x, rule=LRP0()),
            "gradient": methods.gradient(net, x),
        }
    e = explanations[main]
    out(f"model {model} ({net.meta.get('dataset', '?')}, test accuracy {net.meta.get('test_accuracy', '?')}):\n{net}\n")
    for i, (pred, label) in enumerate(zip(e.target, data.labels[[int(np.flatnonzero(data.labels == k)[0])
                                                                 for k in DEMO_CLASSES]])):
        out(f"image {i}: predicted {classes[pred]!r} (logit {e.output[i, pred]:.3f}), true {classes[label]!r}; "
            f"sum of relevance {e.relevance[i].sum():.4f}")
    out(f"\nper-layer conservation of image 0, {main}:\n{e.conservation().to_text(sample=0)}")
    if out_png:
        viz.grid({name: ex.relevance for name, ex in explanations.items()}, images=x,
                 titles=[f"{classes[p]}" for p in e.target], save=out_png,
                 title=f"{model}: relevance for the predicted class, five explanations")
        out(f"\nheatmaps ({', '.join(viz.LEGEND)}): {os.path.abspath(out_png)}")
    return e
