"""Data-set scale on this machine: explanations per second with 1 and 2 Dask workers.

    python benchmarks/scale.py [--model lenet5] [--images 4096] [--batch-size 128] [--json OUT]

lenet5 (float32, EpsilonPlus) over ``--images`` random inputs in chunks of ``--batch-size``: serially
in this process (one BLAS thread per chunk, as every mode runs chunks), on a local Dask cluster of 1
and of 2 worker processes (one thread each), and on Dask's threaded scheduler with 2 threads.  Every
run's relevance is first asserted equal, bit for bit, to the serial run's; then each is timed
(best of ``--repeat``; the cluster is started before timing).  It prints images/s and the speed-up
from 1 to 2 workers, and the per-chunk cost that the README's plan for larger jobs uses.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import lrpnumpy as L
from lrpnumpy import parallel, zoo


def timed(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet5", choices=sorted(zoo.MODELS))
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        print("scale: dask/distributed are not installed (pip install -e '.[dask]'); nothing to measure")
        return 0
    dask.config.set({"distributed.worker.daemon": False})
    net = zoo.MODELS[args.model](seed=0, dtype=np.float32).freeze()
    x = np.random.default_rng(0).random((args.images,) + net.input_shape).astype(np.float32)
    kw = dict(composite=L.EpsilonPlus(), batch_size=args.batch_size, progress=False)
    rows = []
    t_serial, reference = timed(lambda: parallel.explain_dataset(net, x, **kw), args.repeat)
    rows.append(("serial (this process, 1 BLAS thread per chunk)", t_serial))
    t_threads, out = timed(lambda: parallel.explain_dataset(net, x, scheduler="threads", **kw), args.repeat)
    assert np.array_equal(out, reference), "the threaded scheduler's result differs from the serial one"
    rows.append(("Dask threads, 2", t_threads))
    cluster_times = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
            parallel.explain_dataset(net, x[:args.batch_size * workers], scheduler=client, **kw)  # warm up
            t, out = timed(lambda: parallel.explain_dataset(net, x, scheduler=client, **kw), args.repeat)
            assert np.array_equal(out, reference), f"{workers} workers: the result differs from the serial one"
            cluster_times[workers] = t
            rows.append((f"Dask cluster, {workers} worker process{'es' if workers > 1 else ''}", t))
    print(f"{args.model} float32, {args.images} inputs in chunks of {args.batch_size}, EpsilonPlus; results equal "
          f"bit for bit in every mode")
    for name, t in rows:
        print(f"  {name:<48} {t:7.2f} s   {args.images / t:8.0f} images/s")
    speedup = cluster_times[1] / cluster_times[2]
    chunk = cluster_times[1] / (args.images / args.batch_size)
    print(f"  speed-up from 1 to 2 workers: {speedup:.2f}x; one chunk of {args.batch_size} on one worker: "
          f"{1e3 * chunk:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [{"mode": n, "seconds": t, "images_per_s": args.images / t} for n, t in rows],
                       "speedup_1_to_2_workers": speedup, "chunk_seconds": chunk}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
