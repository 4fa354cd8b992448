"""SpRAy at the size of a Fashion-MNIST training class: 6,000 heatmaps of 28 x 28, timed per stage.

    python benchmarks/spray_speed.py [--model fashion_clever_hans] [--klass 6] [--images 6000]
                                     [--workers 2] [--embedding tsne] [--marked] [--json OUT]

The heatmaps: the first ``--images`` training images of class ``--klass`` (Debian's
dataset-fashion-mnist; the shipped 1,000-image sample repeated with a little noise when it is not
installed), explained for that class with EpsilonPlus by ``lrpnumpy.parallel.explain_dataset``,
serially and on a local Dask cluster of ``--workers`` processes (the two results are first asserted
equal, bit for bit).  Then ``spray.analyze`` (kNN graph with 10 neighbours, 32 eigenpairs,
k-means, t-SNE), with the seconds of each stage; the eigenvalues are first checked against a
second solve with ARPACK on the whole graph (scipy's shift-free ``eigsh``) to 1e-8.  With
``--marked`` the images are the Clever Hans model's own training images of the class, half of them
marked as ``data/make_clever_hans.py`` marked them, and the adjusted Rand index of the clusters
(two) against the marked half is reported too.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lrpnumpy as L  # noqa: E402
from lrpnumpy import datasets, parallel, spray  # noqa: E402


def heatmap_inputs(klass, n, marked=False):
    try:
        d = datasets.fashion_mnist("train", dtype=np.float32)
        images, truth = d.images, np.zeros(len(d.images), dtype=bool)
        if marked:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
            from make_clever_hans import marked_training_set
            images, chosen = marked_training_set(d, klass)
            truth[chosen] = True
        x, truth = images[d.labels == klass][:n], truth[d.labels == klass][:n]
        source = "Fashion-MNIST training images" + (", half marked as in training" if marked else "")
    except L.errors.DatasetError:
        s = datasets.sample(np.float32)
        base = s.images[s.labels == klass]
        reps = -(-n // len(base))
        noise = np.random.default_rng(0).uniform(-0.02, 0.02, (reps * len(base),) + base.shape[1:])
        x = np.clip(np.tile(base, (reps, 1, 1, 1)) + noise.astype(np.float32), 0, 1)[:n]
        source = "the shipped sample, repeated with noise"
        truth = None
    return x, source, truth


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion_clever_hans")
    p.add_argument("--klass", type=int, default=6)
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--embedding", default="tsne", choices=["tsne", "umap", "none"])
    p.add_argument("--marked", action="store_true", help="half of the images marked (the Clever Hans training set)")
    p.add_argument("--json")
    args = p.parse_args()
    net = L.zoo.trained(args.model, dtype=np.float32)
    x, source, truth = heatmap_inputs(args.klass, args.images, args.marked)
    composite = L.composites.get("epsilon_plus")
    out = {"model": args.model, "class": args.klass, "images": len(x), "source": source}

    t = time.perf_counter()
    serial = parallel.explain_dataset(net, x, target=args.klass, composite=composite, batch_size=500,
                                      progress=False)
    out["heatmaps_serial_s"] = time.perf_counter() - t
    if args.workers:
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            parallel.explain_dataset(net, x[:500], target=args.klass, composite=composite, batch_size=500,
                                     scheduler=client, progress=False)  # warm the workers
            t = time.perf_counter()
            distributed = parallel.explain_dataset(net, x, target=args.klass, composite=composite, batch_size=500,
                                                   scheduler=client, progress=False)
            out[f"heatmaps_{args.workers}_workers_s"] = time.perf_counter() - t
        assert np.array_equal(serial, distributed), "the workers' heatmaps differ from the serial ones"

    t = time.perf_counter()
    res = spray.analyze(serial, embedding=None if args.embedding == "none" else args.embedding)
    out["spray_total_s"] = time.perf_counter() - t
    out["stages_s"] = res.times
    out["proposed_clusters"] = res.proposed_clusters
    out["sizes"] = res.sizes.tolist()
    out["components"] = int(len(np.unique(res.components)))
    out["eigenvalues"] = res.eigenvalues[:8].tolist()
    if args.marked and truth is not None:
        from sklearn.metrics import adjusted_rand_score
        two = spray.analyze(serial, n_clusters=2, embedding=None)
        out["marked"] = int(truth.sum())
        out["ari_two_clusters_vs_marked"] = adjusted_rand_score(truth, two.labels)

    # the eigenvalues again, by ARPACK on the whole graph's I - L (no components, no dense path)
    from scipy.sparse import identity
    from scipy.sparse.linalg import eigsh
    lap = spray.laplacian(spray.knn_affinity(res.features, 10))
    mu = eigsh(identity(lap.shape[0]) - lap, k=32, which="LA", tol=1e-12)[0]
    if out["components"] == 1:
        assert np.allclose(np.sort(1 - mu), res.eigenvalues, atol=1e-8), "the two solves disagree"
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
