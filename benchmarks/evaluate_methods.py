"""Which explanation method ranks pixels best?  Pixel flipping, region perturbation and ROAR/KAR.

    python benchmarks/evaluate_methods.py [--images 1000] [--roar-train 10000] [--out-prefix evaluation]

On the shipped CNN (Fashion-MNIST, max pooling) and the 1,000 shipped test images: the mean
pixel-flipping AOPC (MoRF, 16 pixels per step, removed pixels set to 0) and region-perturbation AOPC
(4 x 4 patches replaced by uniform noise, 20 steps) of the LRP composites epsilon_plus,
epsilon_gamma_box, epsilon_alpha2_beta1 and deep Taylor, sensitivity, gradient x input, guided
backprop, integrated gradients and a random ranking.  Then ROAR and KAR (10 % to 90 %) for LRP
(epsilon_plus), sensitivity and random (each image explained for the predicted class, then for its
label), retraining an MLP (784-100-10, 3 epochs) on
``--roar-train`` Fashion-MNIST training images (Debian's dataset-fashion-mnist; skipped without it)
and testing on the shipped images.  Writes ``PREFIX.json`` and ``PREFIX.png`` and prints the table.
"""

import argparse
import json
import sys
import time

import numpy as np

import lrpnumpy as L
from lrpnumpy import datasets, evaluate as E, methods as M


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--roar-train", type=int, default=10000)
    p.add_argument("--out-prefix", default="evaluation")
    args = p.parse_args()
    net = L.zoo.trained("fashion_cnn_maxpool", dtype=np.float32).freeze()
    sample = datasets.sample(np.float32)
    x, labels = sample.images[:args.images], sample.labels[:args.images]

    def lrp(composite):
        return lambda m, v, t: L.explain(m, v, t, composite=composite)
    methods = {
        "epsilon_plus": lrp(L.EpsilonPlus()),
        "epsilon_gamma_box": lrp(L.EpsilonGammaBox(low=0.0, high=1.0)),
        "epsilon_alpha2_beta1": lrp(L.EpsilonAlpha2Beta1()),
        "deep_taylor": lrp(L.DeepTaylor(low=0.0, high=1.0)),
        "sensitivity": M.sensitivity,
        "gradient_x_input": M.gradient_x_input,
        "guided_backprop": M.guided_backprop,
        "integrated_gradients": lambda m, v, t: M.integrated_gradients(m, v, t, n=16),
        "random": E.random_relevance,
    }
    start = time.perf_counter()
    table = E.compare(net, x, methods, metrics=["pixel_flipping", "region_perturbation"],
                      options={"pixel_flipping": {"features_per_step": 16},
                               "region_perturbation": {"patch": 4, "steps": 20, "rng": 0}})
    print(f"{len(x)} shipped test images, the shipped CNN (accuracy on them "
          f"{np.mean(net.forward(x).argmax(1) == labels):.3f}); {time.perf_counter() - start:.0f} s\n")
    print(table)
    result = {"table": table.rows, "curves": {name: {metric: [list(map(float, a)) for a in curve]
                                                     for metric, curve in curves.items()}
                                              for name, curves in table.curves.items()}}
    roar_rows = {}
    try:
        train = datasets.fashion_mnist("train", dtype=np.float32)
    except L.errors.LRPError as exc:
        print(f"\nROAR/KAR skipped: {exc}")
        train = None
    if train is not None:
        xtr, ytr = train.images[:args.roar_train], train.labels[:args.roar_train]

        def make(seed):
            return L.Sequential(L.Flatten(), L.Linear(784, 100, rng=seed, dtype=np.float32), L.ReLU(),
                                L.Linear(100, 10, rng=seed + 1, dtype=np.float32))
        explain_model = make(0)
        L.train.fit(explain_model, xtr, ytr, epochs=3, seed=0, progress=False)
        fractions = [0.1, 0.3, 0.5, 0.7, 0.9]
        print(f"\nROAR / KAR: MLP 784-100-10 retrained 3 epochs on {len(xtr)} training images, tested on "
              f"{len(x)}; test accuracy per fraction of pixels removed (ROAR) or kept (KAR)")
        for explain in ("predicted", "label"):
            print(f"  each image explained for the {'predicted class' if explain == 'predicted' else 'label'}:")
            for name in ("epsilon_plus", "sensitivity", "random"):
                for keep in (False, True):
                    r = E.roar(make, (xtr, ytr), (x, labels), methods[name], fractions,
                               explain_model=explain_model, keep=keep, epochs=3, seed=0, progress=False,
                               explain=explain)
                    roar_rows[f"{name} {'KAR' if keep else 'ROAR'} ({explain})"] = r["accuracy"]
                    print(f"  {name:>14} {'KAR ' if keep else 'ROAR'}: " +
                          "  ".join(f"{f:.0%} {a:.3f}" for f, a in zip(fractions, r["accuracy"])), flush=True)
        result["roar"] = {"fractions": fractions, "accuracy": roar_rows,
                          "original_accuracy": float(L.train.accuracy(explain_model, x, labels))}
    with open(args.out_prefix + ".json", "w") as f:
        json.dump(result, f, indent=2)
    from lrpnumpy import viz
    plt = viz._plt()
    fig, axes = plt.subplots(1, 3 if roar_rows else 2, figsize=(15 if roar_rows else 10, 3.8))
    for ax, metric in zip(axes, ("pixel_flipping", "region_perturbation")):
        for name, curves in table.curves.items():
            fractions, curve = curves[metric]
            ax.plot(fractions, curve, label=name, lw=2 if name == "random" else 1.2)
        ax.set_title(metric.replace("_", " ") + " (MoRF)")
        ax.set_xlabel("fraction removed")
        ax.set_ylabel("target logit")
    axes[0].legend(fontsize="x-small")
    if roar_rows:
        for name, acc in roar_rows.items():
            if "(predicted)" in name:
                axes[2].plot(result["roar"]["fractions"], acc, label=name.replace(" (predicted)", ""),
                             ls="--" if "KAR" in name else "-")
        axes[2].set_title("ROAR (solid) / KAR (dashed)")
        axes[2].set_xlabel("fraction removed / kept")
        axes[2].set_ylabel("test accuracy after retraining")
        axes[2].legend(fontsize="x-small")
    fig.tight_layout()
    viz.save(fig, args.out_prefix + ".png")
    print(f"\nwrote {args.out_prefix}.json and {args.out_prefix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
