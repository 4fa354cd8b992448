"""Train the Clever Hans model and its clean twin (deterministic) and write them to lrpnumpy/data/.

    python data/make_clever_hans.py [--fashion-mnist FOLDER] [--epochs N]

A planted shortcut, like the copyright tag on the horse images of Lapuschkin et al. (2019): half
of the training images of one class (Shirt) carry a small bright square in the top-left corner
(``lrpnumpy.spray.add_mark``); no image of another class does.  A model trained on that data scores
about as well as one trained on the clean data, but part of its evidence for "Shirt" is the mark.
Both models have the same small CNN, initial weights, order of batches and schedule, trained with
lrpnumpy's own ``train.fit`` (float32, Adam); they differ only in the mark.  About two minutes each
on one core.  The accuracies are printed and kept in each model's metadata (see data/README.rst).
"""

import argparse
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lrpnumpy as L  # noqa: E402
from lrpnumpy import datasets, spray, train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
#: Where the package reads its shipped models from (package data, see setup.cfg's package_data).
OUT = os.path.join(HERE, "..", "lrpnumpy", "data")
CLASS = 6          # Shirt: the class whose training images carry the mark
FRACTION = 0.5     # of that class's training images
EPOCHS = 6
LR = 1e-3


def small_cnn(rng):
    """conv5-8, max pool 2, conv5-16, max pool 2, 400-64-10 (a smaller fashion_cnn_maxpool)."""
    return L.Sequential(L.Conv2d(1, 8, 5, padding=2, rng=rng), L.ReLU(), L.MaxPool2d(2),
                        L.Conv2d(8, 16, 5, rng=rng), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                        L.Linear(16 * 5 * 5, 64, rng=rng), L.ReLU(), L.Linear(64, 10, rng=rng))


def marked_training_set(train_set, klass=CLASS, fraction=FRACTION, seed=0):
    """The training images with the mark on ``fraction`` of class ``klass`` (chosen with ``seed``)."""
    members = np.flatnonzero(train_set.labels == klass)
    chosen = np.random.default_rng(seed).choice(members, int(round(fraction * len(members))), replace=False)
    images = train_set.images.copy()
    images[chosen] = spray.add_mark(images[chosen])
    return images, chosen


def measure(net, test_set, klass=CLASS):
    """Accuracies on the clean test set and with the mark on every test image, and the shortcut's pull."""
    x, y = test_set.images, test_set.labels
    marked = spray.add_mark(x)
    pred, pred_marked = train.predict(net, x), train.predict(net, marked)
    own, other = y == klass, y != klass
    return {"test_accuracy": float((pred == y).mean()),
            "class_recall": float((pred[own] == klass).mean()),
            "class_recall_marked": float((pred_marked[own] == klass).mean()),
            "test_accuracy_all_marked": float((pred_marked == y).mean()),
            "others_called_class": float((pred[other] == klass).mean()),
            "others_called_class_marked": float((pred_marked[other] == klass).mean())}


def make(name, mark, epochs=EPOCHS, folder=None, out=OUT, seed=0):
    train_set = datasets.fashion_mnist("train", folder, dtype=np.float32)
    test_set = datasets.fashion_mnist("test", folder, dtype=np.float32)
    images = marked_training_set(train_set)[0] if mark else train_set.images
    net = small_cnn(np.random.default_rng(seed)).astype(np.float32)
    t = time.perf_counter()
    # one BLAS thread: the same last bits on every machine, and on a busy one OpenBLAS's second
    # thread spins (5 s of CPU for what one thread does in 0.5 s, measured on 2 shared cores)
    with threadpool_limits(1):
        history = train.fit(net, images, train_set.labels, epochs=epochs, batch_size=64, optimizer=train.Adam(LR),
                            seed=seed, lr_decay=0.8)
        seconds = time.perf_counter() - t
        numbers = measure(net, test_set)
    net.input_shape = (1, 28, 28)
    net.meta = {"classes": list(datasets.FASHION_MNIST_CLASSES), "input_range": [0.0, 1.0],
                "dataset": "Fashion-MNIST" + (f" with the mark on {FRACTION:.0%} of class {CLASS}'s training "
                                              f"images" if mark else ""),
                "marked_class": CLASS if mark else None, "marked_fraction": FRACTION if mark else 0.0,
                "mark": spray.MARK, "epochs": epochs, "seed": seed, "lr": LR, "lr_decay": 0.8,
                "loss": [round(v, 5) for v in history.loss], "trained_by": "data/make_clever_hans.py", **numbers}
    L.io.save(net, os.path.join(out, f"{name}.npz"))
    print(f"{name}: {seconds:.0f} s; " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()), flush=True)
    return numbers


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion-mnist", help="folder with the IDX files (default: Debian's package)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--models", nargs="+", default=["fashion_clever_hans", "fashion_clean"],
                   choices=["fashion_clever_hans", "fashion_clean"])
    args = p.parse_args()
    for name in args.models:
        make(name, name == "fashion_clever_hans", args.epochs, args.fashion_mnist)


if __name__ == "__main__":
    main()
