"""Train the shipped Fashion-MNIST models from scratch (deterministic) and write them to lrpnumpy/data/.

    python data/make_models.py [--fashion-mnist FOLDER] [--epochs N]

Needs Debian's dataset-fashion-mnist package (or the four IDX files in FOLDER).  Each model is
trained with lrpnumpy's own layers and backward (lrpnumpy.train), on the 60,000 training images,
float32, seeded; the test accuracy on the 10,000 test images is printed and stored in the model's
metadata.  Takes a few minutes on 2 cores.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lrpnumpy as L  # noqa: E402
from lrpnumpy import datasets, train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
#: Where the package reads its shipped models from (package data, see setup.cfg's package_data).
OUT = os.path.join(HERE, "..", "lrpnumpy", "data")


def mlp(rng):
    """The LRP tutorial's MLP: 784-300-100-10, ReLU."""
    return L.Sequential(L.Flatten(), L.Linear(784, 300, rng=rng), L.ReLU(), L.Linear(300, 100, rng=rng), L.ReLU(),
                        L.Linear(100, 10, rng=rng))


def cnn_sumpool(rng):
    """LeNet-style, with sum pooling (the LRP Toolbox's choice): conv5-16, sum2, conv5-32, sum2, 800-100-10."""
    return L.Sequential(L.Conv2d(1, 16, 5, padding=2, rng=rng), L.ReLU(), L.SumPool2d(2),
                        L.Conv2d(16, 32, 5, rng=rng), L.ReLU(), L.SumPool2d(2), L.Flatten(),
                        L.Linear(32 * 5 * 5, 100, rng=rng), L.ReLU(), L.Linear(100, 10, rng=rng))


def cnn_maxpool(rng):
    """The same with max pooling."""
    return L.Sequential(L.Conv2d(1, 16, 5, padding=2, rng=rng), L.ReLU(), L.MaxPool2d(2),
                        L.Conv2d(16, 32, 5, rng=rng), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                        L.Linear(32 * 5 * 5, 100, rng=rng), L.ReLU(), L.Linear(100, 10, rng=rng))


#: name -> (architecture, Adam learning rate); the rate decays by 0.8 after every epoch.
MODELS = {"fashion_mlp": (mlp, 1e-3), "fashion_cnn_sumpool": (cnn_sumpool, 5e-4), "fashion_cnn_maxpool": (cnn_maxpool, 1e-3)}
EPOCHS = {"fashion_mlp": 12, "fashion_cnn_sumpool": 10, "fashion_cnn_maxpool": 8}


def make(name, epochs, folder=None, out=OUT, seed=0):
    build, lr = MODELS[name]
    train_set = datasets.fashion_mnist("train", folder, dtype=np.float32)
    test_set = datasets.fashion_mnist("test", folder, dtype=np.float32)
    net = build(np.random.default_rng(seed)).astype(np.float32)
    t = time.perf_counter()
    history = train.fit(net, train_set.images, train_set.labels, epochs=epochs, batch_size=64,
                        optimizer=train.Adam(lr), validation=(test_set.images, test_set.labels), seed=seed,
                        lr_decay=0.8)
    acc = history.accuracy[-1]
    net.input_shape = (1, 28, 28)
    net.meta = {"classes": list(datasets.FASHION_MNIST_CLASSES), "input_range": [0.0, 1.0],
                "dataset": "Fashion-MNIST", "test_accuracy": acc, "epochs": epochs, "seed": seed, "lr": lr,
                "lr_decay": 0.8,
                "trained_by": "data/make_models.py"}
    L.io.save(net, os.path.join(out, f"{name}.npz"))
    print(f"{name}: test accuracy {acc:.4f} after {epochs} epochs ({time.perf_counter() - t:.0f} s); "
          f"per epoch {[round(a, 4) for a in history.accuracy]}", flush=True)
    return acc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion-mnist", help="folder with the IDX files (default: Debian's package)")
    p.add_argument("--epochs", type=int, help="default: 12 for the MLP, 10 and 8 for the CNNs")
    p.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    args = p.parse_args()
    for name in args.models:
        make(name, args.epochs or EPOCHS[name], args.fashion_mnist)


if __name__ == "__main__":
    main()
