"""Which explanation method ranks pixels best on the shipped vision transformer?  Pixel flipping.

    python benchmarks/evaluate_vit.py [--images 1000] [--out data/evaluation_vit.json]

On the shipped ViT (``fashion_vit``: patches 7 x 7, width 64, two pre-norm encoder blocks) and the
shipped Fashion-MNIST test images (the same 1,000 as the CNN's table in
``benchmarks/evaluate_methods.py``): the mean pixel-flipping AOPC (MoRF, 16 pixels per step,
removed pixels set to 0, the predicted class's logit) of AttnLRP, CP-LRP, gradient x input,
integrated gradients (16 steps), attention rollout and a random ranking.  Prints the table and
writes it with the curves to ``--out``.
"""

import argparse
import json
import sys
import time

import numpy as np

import lrpnumpy as L
from lrpnumpy import composites, datasets, evaluate as E, methods as M


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default="data/evaluation_vit.json")
    args = p.parse_args()
    net = L.zoo.trained("fashion_vit", dtype=np.float32).freeze()
    sample = datasets.sample(np.float32)
    x, labels = sample.images[:args.images], sample.labels[:args.images]

    def lrp(name):
        comp = composites.get(name)
        return lambda m, v, t: L.explain(m, v, t, composite=comp)
    methods = {
        "attnlrp": lrp("attnlrp"),
        "cp_lrp": lrp("cp_lrp"),
        "gradient_x_input": M.gradient_x_input,
        "integrated_gradients": lambda m, v, t: M.integrated_gradients(m, v, t, n=16),
        "attention_rollout": M.attention_rollout,
        "random": E.random_relevance,
    }
    start = time.perf_counter()
    table = E.compare(net, x, methods, metrics=["pixel_flipping"],
                      options={"pixel_flipping": {"features_per_step": 16}})
    print(f"{len(x)} shipped test images, the shipped ViT (accuracy on them "
          f"{np.mean(net.forward(x).argmax(1) == labels):.3f}); {time.perf_counter() - start:.0f} s\n")
    print(table)
    result = {"images": len(x), "table": table.rows,
              "curves": {name: {metric: [list(map(float, a)) for a in curve] for metric, curve in curves.items()}
                         for name, curves in table.curves.items()}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
