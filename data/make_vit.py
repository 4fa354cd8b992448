"""Train the shipped Fashion-MNIST vision transformer (``fashion_vit``) with lrpnumpy's own train, deterministic.

    python data/make_vit.py [--fashion-mnist FOLDER] [--epochs N] [--out FOLDER] [--checkpoints FOLDER]
                            [--patch-size P] [--depth D]

Patches of 7 x 7 (16 tokens and a class token), width 64, 4 heads, 2 pre-norm encoder blocks with
an MLP of 128 (GELU), a final LayerNorm and a linear head on the class token.  Adam (lr 1e-3,
multiplied by 0.85 after every epoch), batch 128, float32, seeded, one BLAS thread.  After every
epoch the test accuracy is printed (and the model written to ``CHECKPOINTS/fashion_vit_epochK.npz``
with ``--checkpoints``) and the model after the latest epoch to ``OUT/fashion_vit.npz`` (default
``lrpnumpy/data/``): the test data choose nothing.  About 2 minutes per epoch on one core (one BLAS thread).
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
LR, LR_DECAY, BATCH = 1e-3, 0.85, 128


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


def augmented(images, rng, shift=2):
    """A copy of ``images`` (N, 1, 28, 28), each flipped left-right with probability 1/2 and moved by up to
    ``shift`` pixels in each direction (zero-padded): the training set of one epoch."""
    n, _, h, w = images.shape
    flipped = np.where((rng.random(n) < 0.5)[:, None, None, None], images[..., ::-1], images)
    padded = np.pad(flipped, ((0, 0), (0, 0), (shift, shift), (shift, shift)))
    rows = rng.integers(0, 2 * shift + 1, n)[:, None] + np.arange(h)
    cols = rng.integers(0, 2 * shift + 1, n)[:, None] + np.arange(w)
    return np.ascontiguousarray(padded[np.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion-mnist", help="folder with the IDX files (default: Debian's package)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default=OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoints", help="also write every epoch's model to this folder")
    p.add_argument("--patch-size", type=int, default=CONFIG["patch_size"])
    p.add_argument("--depth", type=int, default=CONFIG["depth"], help="encoder blocks")
    p.add_argument("--lr-decay", type=float, default=LR_DECAY, help="the learning rate's factor after every epoch")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as they are (default: flipped and shifted at random, see augmented())")
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
    optimizer, accuracies = train.Adam(LR), []
    t = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        images = augmented(train_set.images, np.random.default_rng([args.seed, epoch])) if args.augment \
            else train_set.images
        history = train.fit(net, images, train_set.labels, epochs=1, batch_size=BATCH, optimizer=optimizer,
                            seed=args.seed + epoch, lr_decay=args.lr_decay, progress=False)
        acc = train.accuracy(net, test_set.images, test_set.labels)
        accuracies.append(round(acc, 4))
        net.meta = {"classes": list(datasets.FASHION_MNIST_CLASSES), "input_range": [0.0, 1.0],
                    "dataset": "Fashion-MNIST", "test_accuracy": acc, "epochs": epoch, "seed": args.seed, "lr": LR,
                    "lr_decay": args.lr_decay, "batch_size": BATCH, "augment": args.augment, "architecture": config,
                    "composite": "attnlrp", "trained_by": "data/make_vit.py"}
        if args.checkpoints:
            L.io.save(net, os.path.join(args.checkpoints, f"fashion_vit_epoch{epoch}.npz"))
        L.io.save(net, os.path.join(args.out, "fashion_vit.npz"))  # the latest epoch (no choice made on test data)
        print(f"epoch {epoch}: loss {history.loss[-1]:.4f}, test accuracy {acc:.4f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"fashion_vit: test accuracy {accuracies[-1]:.4f} after {args.epochs} epochs; per epoch {accuracies}",
          flush=True)


if __name__ == "__main__":
    main()
