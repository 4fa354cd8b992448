"""Forward-only throughput (what perturbation-based evaluation spends its time on), lrpnumpy
against PyTorch on the same network, side by side.

    python benchmarks/forward_speed.py [--model lenet5 fashion_cnn_maxpool ...] [--batch 256] [--repeat 30]

float32, the same weights and inputs (``verify.to_torch``), torch with 2 threads under
``torch.no_grad()``.  The outputs are first asserted to agree (1e-5 relative), then both sides are
timed in turn (median of ``--repeat`` runs each, alternating) and the images per second and the time ratio (lrpnumpy / torch)
are printed, with lrpnumpy's time per layer.  Needs torch (the 'reference' extra).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved_medians, load_model, median_time, reference_modules, write_json  # noqa: E402

import lrpnumpy as L  # noqa: E402
from lrpnumpy import datasets, verify  # noqa: E402

MODELS = ["lenet5", "toolbox_lenet", "fashion_cnn_maxpool", "fashion_cnn_sumpool", "fashion_mlp"]


def per_layer(net, x, repeat):
    """[(layer, seconds), ...]: each layer's forward on its own input, median of ``repeat`` runs."""
    rows, a = [], x
    for layer in net:
        rows.append((layer, median_time(lambda: layer.forward(a), repeat)))
        a = layer.forward(a)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=MODELS)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--json")
    args = p.parse_args()
    modules = reference_modules("forward_speed", "torch")
    if modules is None:
        return 0
    torch, = modules
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, 2 threads; lrpnumpy kernels: {L.kernels.BACKEND}; batch {args.batch}, float32")
    images = datasets.sample(np.float32).images
    results = []
    for model in args.model:
        net = load_model(model).freeze()
        shape = net.input_shape
        x = images[:args.batch] if images.shape[1:] == tuple(shape) else \
            np.random.default_rng(0).random((args.batch,) + tuple(shape), dtype=np.float32)
        tnet = verify.to_torch(net).float().eval()
        xt = torch.from_numpy(x)
        with torch.no_grad():
            theirs = tnet(xt).numpy()
            ours = net.forward(x)
            diff = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            assert diff <= 1e-5, f"{model}: outputs differ by {diff:.2e}"
            t_ours, t_torch = interleaved_medians([lambda: net.forward(x), lambda: tnet(xt)], args.repeat)
        layers = per_layer(net, x, args.repeat)
        row = dict(model=model, batch=args.batch, lrpnumpy_s=t_ours, torch_s=t_torch, ratio=t_ours / t_torch,
                   lrpnumpy_img_s=args.batch / t_ours, torch_img_s=args.batch / t_torch, max_rel_diff=diff,
                   layers=[(repr(layer), t) for layer, t in layers])
        results.append(row)
        print(f"{model:>20}: lrpnumpy {t_ours * 1e3:7.2f} ms ({args.batch / t_ours:8.0f} img/s)   torch "
              f"{t_torch * 1e3:7.2f} ms ({args.batch / t_torch:8.0f} img/s)   time ratio {t_ours / t_torch:.2f}   "
              f"(outputs agree to {diff:.1e})", flush=True)
        for layer, t in layers:
            if t >= 1e-4:
                print(f"{'':>24}{t * 1e3:7.2f} ms  {layer!r}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
