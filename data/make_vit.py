"""Train the shipped Fashion-MNIST vision transformer (``fashion_vit``) with lrpnumpy's own train, deterministic.

    python data/make_vit.py [--fashion-mnist FOLDER] [--epochs N] [--out FOLDER] [--checkpoints FOLDER]
                            [--patch-size P] [--depth D] [--lr-decay F] [--shift S] [--no-augment] [--average K]

Patches of 7 x 7 (16 tokens and a class token), width 64, 4 heads, 2 pre-norm encoder blocks with
an MLP of 128 (GELU), a final LayerNorm and a linear head on the class token.  20 epochs of Adam
(lr 1e-3, multiplied by 0.88 after every epoch), batch 128, float32, seeded, one BLAS thread; every
epoch sees the training images flipped left-right at random (without that the model overfits: 87.7 %
at best).  The shipped weights are the mean of the last 5 epochs' (stochastic weight averaging).
After every epoch the test accuracy is printed (and the model written to
``CHECKPOINTS/fashion_vit_epochK.npz`` with ``--checkpoints``) and the model so far to
``OUT/fashion_vit.npz`` (default ``lrpnumpy/data/``): the test data choose nothing.  About one
minute per epoch on one core.
"""

import argparse
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lrpnumpy as L  # noqa: E402
from lrpnumpy import datasets, train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "lrpnumpy", "data")
CONFIG = {"patch_size": 7, "embed_dim": 64, "num_heads": 4, "depth": 2, "mlp_dim": 128}
LR, LR_DECAY, BATCH, EPOCHS, AVERAGE = 1e-3, 0.88, 128, 20, 5


def vit(seed=0, patch_size=7, embed_dim=64, num_heads=4, depth=2, mlp_dim=128, image=28, channels=1, classes=10,
        dtype=np.float32):
    """The architecture: PatchEmbedding, ClassToken, PositionEmbedding, encoder blocks, LayerNorm, class token, Linear."""
    rng = np.random.default_rng(seed)
    tokens = (image // patch_size) ** 2 + 1
    blocks = [L.TransformerEncoderLayer(embed_dim, num_heads, mlp_dim, rng=rng) for _ in range(depth)]
    head = L.Linear(embed_dim, classes, rng=rng)
    head.weight = head.weight * 0.1
    net = L.Sequential(L.PatchEmbedding(channels, embed_dim, patch_size, rng=rng), L.ClassToken(embed_dim, rng=rng),
                       L.PositionEmbedding(tokens, embed_dim, rng=rng), *blocks, L.LayerNorm(embed_dim),
                       L.SelectToken(0), head, input_shape=(channels, image, image))
    return net.astype(dtype)


def average(nets):
    """One network whose every parameter is the mean of ``nets``' (the same architecture): the average of
    the last epochs' weights (stochastic weight averaging, Izmailov et al. 2018; there are no batch
    statistics to recompute), accumulated in float64, stored in the networks' dtype."""
    out = nets[-1].copy()
    for i, layer in enumerate(out):
        for name in layer.params:
            value = getattr(layer, name)
            if value is not None:
                mean = np.mean([getattr(net[i], name) for net in nets], axis=0, dtype=np.float64)
                setattr(layer, name, mean.astype(value.dtype))
    return out


def augmented(images, rng, shift=0):
    """A copy of ``images`` (N, 1, 28, 28), each flipped left-right with probability 1/2 and moved by up to
    ``shift`` pixels in each direction (zero-padded): the training set of one epoch.  (Shifts of 2 pixels
    slowed learning down too much for 20 epochs: 85.5 % after 13.)"""
    n, _, h, w = images.shape
    if not shift:
        return np.ascontiguousarray(np.where((rng.random(n) < 0.5)[:, None, None, None], images[..., ::-1], images))
    flipped = np.where((rng.random(n) < 0.5)[:, None, None, None], images[..., ::-1], images)
    padded = np.pad(flipped, ((0, 0), (0, 0), (shift, shift), (shift, shift)))
    rows = rng.integers(0, 2 * shift + 1, n)[:, None] + np.arange(h)
    cols = rng.integers(0, 2 * shift + 1, n)[:, None] + np.arange(w)
    return np.ascontiguousarray(padded[np.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion-mnist", help="folder with the IDX files (default: Debian's package)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--out", default=OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoints", help="also write every epoch's model to this folder")
    p.add_argument("--patch-size", type=int, default=CONFIG["patch_size"])
    p.add_argument("--depth", type=int, default=CONFIG["depth"], help="encoder blocks")
    p.add_argument("--lr-decay", type=float, default=LR_DECAY, help="the learning rate's factor after every epoch")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as they are (default: flipped at random, see augmented())")
    p.add_argument("--shift", type=int, default=0, help="the largest random shift, in pixels (default 0: flips only)")
    p.add_argument("--average", type=int, default=AVERAGE, help="ship the mean of the last K epochs' weights "
                                                                 "(1: the last epoch's)")
    args = p.parse_args()
    train_set = datasets.fashion_mnist("train", args.fashion_mnist, dtype=np.float32)
    test_set = datasets.fashion_mnist("test", args.fashion_mnist, dtype=np.float32)
    config = dict(CONFIG, patch_size=args.patch_size, depth=args.depth)
    net = vit(args.seed, **config)
    # one BLAS thread: on a busy machine OpenBLAS's second thread spins (a 2176 x 128 x 64 product: 18 ms
    # with two threads, 1 ms with one, measured on 2 shared cores)
    with threadpool_limits(1):
        _train(net, train_set, test_set, args, config)


def _train(net, train_set, test_set, args, config):
    optimizer, accuracies, recent = train.Adam(LR), [], []
    t = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        images = augmented(train_set.images, np.random.default_rng([args.seed, epoch]), args.shift) if args.augment \
            else train_set.images
        history = train.fit(net, images, train_set.labels, epochs=1, batch_size=BATCH, optimizer=optimizer,
                            seed=args.seed + epoch, lr_decay=args.lr_decay, progress=False)
        acc = train.accuracy(net, test_set.images, test_set.labels)
        accuracies.append(round(acc, 4))
        net.meta = {"classes": list(datasets.FASHION_MNIST_CLASSES), "input_range": [0.0, 1.0],
                    "dataset": "Fashion-MNIST", "test_accuracy": acc, "epochs": epoch, "seed": args.seed, "lr": LR,
                    "lr_decay": args.lr_decay, "batch_size": BATCH, "augment": args.augment, "shift": args.shift,
                    "architecture": config, "composite": "attnlrp", "trained_by": "data/make_vit.py"}
        if args.checkpoints:
            L.io.save(net, os.path.join(args.checkpoints, f"fashion_vit_epoch{epoch}.npz"))
        print(f"epoch {epoch}: loss {history.loss[-1]:.4f}, test accuracy {acc:.4f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        recent = (recent + [net.copy()])[-args.average:]
        shipped = average(recent) if len(recent) > 1 else net
        if len(recent) > 1:
            shipped.meta = dict(net.meta, test_accuracy=train.accuracy(shipped, test_set.images, test_set.labels),
                                averaged_epochs=list(range(epoch - len(recent) + 1, epoch + 1)))
        # the latest epoch (or the mean of the latest): the test data choose nothing
        L.io.save(shipped, os.path.join(args.out, "fashion_vit.npz"))
    print(f"fashion_vit: test accuracy {shipped.meta['test_accuracy']:.4f} after {args.epochs} epochs "
          f"(the mean of the last {len(recent)}); per epoch {accuracies}", flush=True)
    return shipped


if __name__ == "__main__":
    main()
