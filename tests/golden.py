"""Golden float64 relevances: every rule, composite and gradient method on three networks.

``tests/data/golden.npz`` was written by this module (``python tests/golden.py --write``)
before the engine rewrite; ``test_golden.py`` recomputes every case and requires agreement
to 1e-12 relative.  Rewrite the file only when a number is meant to change, and say why in
the commit.
"""

import os
import sys

import numpy as np

PATH = os.path.join(os.path.dirname(__file__), "data", "golden.npz")


def networks():
    """name -> (network, input batch): lenet5, the Toolbox's LeNet, and a small VGG-like net with biases."""
    import lrpnumpy as L
    from lrpnumpy import zoo
    rng = np.random.default_rng(12)
    vgg = L.Sequential(
        L.Conv2d(3, 8, 3, padding=1, rng=rng), L.ReLU(), L.Conv2d(8, 8, 3, padding=1, rng=rng), L.ReLU(),
        L.MaxPool2d(2), L.Conv2d(8, 16, 3, padding=1, rng=rng), L.ReLU(), L.AvgPool2d(2), L.Flatten(),
        L.Linear(16 * 4 * 4, 32, rng=rng), L.ReLU(), L.Dropout(0.5), L.Linear(32, 10, rng=rng),
        input_shape=(3, 16, 16))
    for layer in vgg:
        if getattr(layer, "bias", None) is not None:
            layer.bias = rng.normal(scale=0.1, size=layer.bias.shape)
    return {
        "lenet5": (zoo.lenet5(seed=0), np.random.default_rng(10).random((2, 1, 28, 28))),
        "toolbox_lenet": (zoo.toolbox_lenet(seed=0), np.random.default_rng(11).random((2, 1, 32, 32))),
        "vgg_small": (vgg, np.random.default_rng(13).random((2, 3, 16, 16)) - 0.2),  # negative inputs too
    }


def cases(x):
    """name -> (kind, arguments): 'rule' and 'composite' go to explain, 'method' to lrpnumpy.methods."""
    import lrpnumpy as L
    low, high = float(x.min()), float(x.max())
    weighted, pools = (L.Conv2d, L.Linear), (L.SumPool2d, L.MaxPool2d, L.GlobalAvgPool2d)
    rules = {"lrp0": L.LRP0(), "epsilon": L.Epsilon(), "epsilon_0.25": L.Epsilon(0.25), "zplus": L.ZPlus(),
             "alpha2beta1": L.AlphaBeta(2, 1), "alpha1beta0": L.AlphaBeta(1, 0), "gamma": L.Gamma(0.25),
             "zbox": L.ZBox(low - 1, high + 1), "flat": L.Flat(), "wsquare": L.WSquare(),
             "rho_gamma_raw": L.Rho("gamma", 0.25, bias="raw", epsilon=1e-9),
             "rho_positive_zero": L.Rho("positive", bias="zero")}
    out = {f"rule/{k}": ("rule", v) for k, v in rules.items()}
    out["composite/maxpool_split"] = ("composite", L.Composite([(weighted, L.Epsilon()),
                                                                 (L.MaxPool2d, L.WinnerTakesAll("split"))]))
    out["composite/captum_like"] = ("composite", L.Composite([(weighted, L.Rho("gamma", 0.25, bias="raw",
                                                                               epsilon=1e-9)),
                                                               (pools, L.Epsilon(1e-9))]))
    out["composite/norm_on_maxpool"] = ("composite", L.Composite([(weighted, L.ZPlus()), (L.MaxPool2d, L.Norm())]))
    for name in ("epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus_flat",
                 "epsilon_alpha2_beta1_flat", "deep_taylor"):
        kwargs = dict(low=low, high=high) if name in ("epsilon_gamma_box", "deep_taylor") else {}
        out[f"composite/{name}"] = ("composite", L.composites.get(name, **kwargs))
    for name in ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad"):
        out[f"method/{name}"] = ("method", name)
    return out


TARGETS = [1, 7]


def compute():
    """Every case on every network: name -> float64 array."""
    import lrpnumpy as L
    from lrpnumpy import methods as M
    results = {}
    for net_name, (net, x) in networks().items():
        for case, (kind, arg) in cases(x).items():
            key = f"{net_name}/{case}"
            if kind == "method":
                kwargs = {"integrated_gradients": dict(n=8), "smoothgrad": dict(n=5, rng=0)}.get(arg, {})
                r = getattr(M, arg)(net, x, TARGETS, **kwargs)
                results[key] = np.asarray(getattr(r, "relevance", r))
                continue
            target = None if kind == "rule" else TARGETS
            e = L.explain(net, x, target=target, **{kind: arg})
            results[key] = e.relevance
            rows = e.conservation().rows
            results[key + "/ledger"] = np.array([[row[c] for c in ("relevance_in", "relevance_out", "bias",
                                                                   "stabilizer", "dropped")] for row in rows])
    return results


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden.py --write   (overwrites tests/data/golden.npz)")
    res = compute()
    np.savez_compressed(PATH, **res)
    print(f"wrote {len(res)} arrays to {PATH}")
