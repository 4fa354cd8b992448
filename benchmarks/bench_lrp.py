"""Time forward, gradient and LRP on the reference architectures; print a table (and JSON).

    python benchmarks/bench_lrp.py --model lenet5 vgg16 toolbox_lenet --batch 1 16 64 \\
        --dtype float32 float64 --composite epsilon_plus --json OUT

First asserts that the numba and NumPy kernels give the same relevance (1e-12 relative,
float64), then measures the matmul rate, the JIT compile time and a fresh process's first
explanation, and then each (model, dtype, batch) row in its own process, so that its peak
resident memory is its own.  Times are medians; GFLOP/s counts the multiply-adds of the
passes actually run (2 FLOP each).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import count_macs, matmul_rate, median_time, peak_rss_mb  # noqa: E402

import lrpnumpy as L  # noqa: E402
from lrpnumpy import composites, kernels, zoo  # noqa: E402


def build_composite(name, x):
    return composites.get(name, data=x)


def check_backends(model, composite, seed=0):
    """Assert that both kernel backends explain the same (float64, batch 2); return the max rel diff."""
    net = zoo.MODELS[model](seed=seed)
    x = np.random.default_rng(seed).random((2,) + net.input_shape)
    comp = build_composite(composite, x)
    out = {}
    for backend in ("numpy", "numba"):
        previous = kernels.set_backend(backend)
        try:
            out[backend] = L.explain(net, x, composite=comp).relevance
        finally:
            kernels.set_backend(previous)
    rel = float(np.abs(out["numba"] - out["numpy"]).max() / np.abs(out["numpy"]).max())
    assert rel <= 1e-12, f"{model}: numba and numpy kernels disagree ({rel:.3e} relative)"
    return rel


def fresh_process(model, composite, cache_dir):
    """Seconds for a new Python process to import lrpnumpy and explain one input (batch 1)."""
    code = (f"import time; t0 = time.perf_counter()\n"
            f"import numpy as np, lrpnumpy as L\nfrom lrpnumpy import zoo, composites\n"
            f"net = zoo.{model}(dtype=np.float32)\n"
            f"x = np.random.default_rng(0).random((1,) + net.input_shape).astype(np.float32)\n"
            f"L.explain(net, x, composite=composites.get({composite!r}, bounds=(0.0, 1.0)))\n"
            f"print(time.perf_counter() - t0)")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def run_row(model, batch, dtype, composite, repeat):
    """Measure one row in this process; returns a dict."""
    dt = np.dtype(dtype)
    net = zoo.MODELS[model](dtype=dt).freeze()  # frozen: rules keep W+, W + gamma W+, ... between calls
    x = np.random.default_rng(0).random((batch,) + net.input_shape).astype(dt)
    comp = build_composite(composite, x)
    t = time.perf_counter()
    L.explain(net, x, composite=comp)  # warm-up: loads the JIT cache, touches memory
    first = time.perf_counter() - t
    explain_rss = peak_rss_mb()  # before anything else runs
    onehot = np.zeros((batch, net.forward(x).shape[1]), dt)
    onehot[:, 0] = 1
    big = model == "vgg16"
    t_fwd = median_time(lambda: net.forward(x), repeat, 0 if big else 0.5)
    t_grad = median_time(lambda: net.backward(onehot, net.forward_trace(x)[1]), repeat, 0 if big else 0.5)
    t_exp = median_time(lambda: L.explain(net, x, composite=comp), repeat, 0 if big else 0.5)
    with count_macs() as counts:
        L.explain(net, x, composite=comp)
    tracemalloc.start()
    L.explain(net, x, composite=comp)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    macs = counts["conv"] + counts["linear"]
    return dict(model=model, batch=batch, dtype=dtype, composite=composite, backend=kernels.BACKEND,
                forward_ms=1e3 * t_fwd, gradient_ms=1e3 * t_grad, explain_ms=1e3 * t_exp,
                first_explain_ms=1e3 * first, images_per_s=batch / t_exp,
                explain_gmacs=macs / 1e9, explain_gflops=2 * macs / t_exp / 1e9,
                conv_gflops=2 * counts["conv"] / counts["conv_seconds"] / 1e9 if counts["conv_seconds"] else None,
                peak_rss_mb=explain_rss,
                peak_numpy_mb=traced_peak / 2 ** 20)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["lenet5", "toolbox_lenet"], choices=sorted(zoo.MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    p.add_argument("--composite", default="epsilon_plus", choices=sorted(composites.REGISTRY))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--row", nargs=4, metavar=("MODEL", "BATCH", "DTYPE", "COMPOSITE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        model, batch, dtype, composite = args.row
        print(json.dumps(run_row(model, int(batch), dtype, composite, args.repeat)))
        return

    print(f"kernels: {kernels.BACKEND}; numpy {np.__version__}")
    agree = {m: check_backends(m, args.composite) for m in args.model}
    print("backends agree (max relative difference, float64): "
          + ", ".join(f"{m} {v:.1e}" for m, v in agree.items()))
    rates = {d: matmul_rate(np.dtype(d)) for d in ("float32", "float64")}
    print(f"numpy.matmul 2048x2048: {rates['float32']:.1f} GFLOP/s float32, {rates['float64']:.1f} GFLOP/s float64")
    with tempfile.TemporaryDirectory() as cache:
        cold = fresh_process(args.model[0], args.composite, cache)
        warm = fresh_process(args.model[0], args.composite, cache)
    print(f"fresh process, import + first explain of one {args.model[0]} input: {cold:.2f} s with an empty numba "
          f"cache (JIT compile: {cold - warm:.2f} s), {warm:.2f} s with a warm cache")

    rows = []
    head = (f"{'model':<14}{'dtype':<8}{'batch':>6}{'fwd ms':>10}{'grad ms':>10}{'explain ms':>12}{'img/s':>10}"
            f"{'GFLOP/s':>9}{'conv GF/s':>10}{'% matmul':>9}{'peak RSS MB':>12}")
    print(head + "\n" + "-" * len(head))
    for model in args.model:
        for dtype in args.dtype:
            for batch in args.batch:
                cmd = [sys.executable, __file__, "--row", model, str(batch), dtype, args.composite,
                       "--repeat", str(args.repeat)]
                row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                conv = row["conv_gflops"]
                row["conv_share_of_matmul"] = conv / rates[dtype] if conv else None
                rows.append(row)
                print(f"{model:<14}{dtype:<8}{batch:>6}{row['forward_ms']:>10.2f}{row['gradient_ms']:>10.2f}"
                      f"{row['explain_ms']:>12.2f}{row['images_per_s']:>10.1f}{row['explain_gflops']:>9.1f}"
                      f"{conv or 0:>10.1f}{100 * (row['conv_share_of_matmul'] or 0):>8.0f}%"
                      f"{row['peak_rss_mb']:>12.0f}", flush=True)
    result = dict(backends_agree=agree, matmul_gflops=rates, fresh_process_cold_s=cold, fresh_process_warm_s=warm,
                  jit_compile_s=cold - warm, composite=args.composite, rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
