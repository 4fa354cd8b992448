"""Pixel flipping: lrpnumpy against Quantus on the same job, side by side.

    python benchmarks/evaluate_speed.py [--model lenet5 fashion_cnn_maxpool] [--repeat 3] [--json OUT]

Two jobs per model (float32, the same torch model through ``verify.to_torch``, the same inputs
and LRP attributions): 256 images with 16 pixels removed per step (49 steps), and 64 images with one
pixel per step (784 steps).  Quantus 0.6's ``PixelFlipping`` (softmax on, its "black" baseline:
each image's minimum) against ``lrpnumpy.evaluate.pixel_flipping(output="probability", fill=the
same minimum)``; the attributions get noise of 1e-7 of their largest value, so that no two pixels tie
(ties have no defined order).  The script first asserts that the curves agree (1e-5 relative: float32 rounding over 784 steps), then
times both in turn (medians of alternating runs) and prints the ratio of lrpnumpy's time to Quantus's.  Needs the 'reference'
extra (torch, quantus); without it the script says so and exits.
"""

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved_medians, load_model, reference_modules, write_json  # noqa: E402

import lrpnumpy as L  # noqa: E402
from lrpnumpy import datasets, evaluate, verify  # noqa: E402

JOBS = [(256, 16), (64, 1)]  # (images, pixels per step)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["lenet5", "fashion_cnn_maxpool"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    modules = reference_modules("evaluate_speed", "torch", "quantus")
    if modules is None:
        return 0
    torch, quantus = modules
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, quantus {quantus.__version__}, 2 threads; lrpnumpy kernels: {L.kernels.BACKEND}")
    images = datasets.sample(np.float32).images
    results = []
    for model in args.model:
        net = load_model(model).freeze()
        tnet = verify.to_torch(net).float().eval()
        for n, per_step in JOBS:
            x = images[:n]
            y = net.forward(x).argmax(1)
            R = L.explain(net, x, y, composite=L.EpsilonPlus()).relevance
            # background pixels (x = 0) tie at zero relevance, and ties have no defined order (Quantus's
            # quicksort and lrpnumpy's stable sort break them differently): tiny noise breaks them for both
            R = R + (1e-7 * np.abs(R).max() * np.random.default_rng(0).random(R.shape)).astype(R.dtype)
            black = np.broadcast_to(x.min(axis=(1, 2, 3), keepdims=True), x.shape).copy()
            metric = quantus.PixelFlipping(features_in_step=per_step, disable_warnings=True)

            def theirs():
                return np.array(metric(model=tnet, x_batch=x, y_batch=y, a_batch=R, device="cpu", softmax=True,
                                       batch_size=n))

            def ours():
                return evaluate.pixel_flipping(net, x, R, y, features_per_step=per_step, output="probability",
                                               fill=black, progress=False).curves[:, 1:]
            a, b = ours(), theirs()
            diff = float(np.abs(a - b).max() / np.abs(b).max())
            assert a.shape == b.shape and diff <= 1e-5, f"{model} {n}x{per_step}: curves differ by {diff:.2e}"
            t_ours, t_theirs = interleaved_medians([ours, theirs], args.repeat)
            row = dict(model=model, images=n, pixels_per_step=per_step, steps=a.shape[1], lrpnumpy_s=t_ours,
                       quantus_s=t_theirs, ratio=t_ours / t_theirs, max_rel_diff=diff)
            results.append(row)
            print(f"{model:>20}  {n:>4} images x {a.shape[1]:>3} steps: lrpnumpy {t_ours:7.3f} s   quantus "
                  f"{t_theirs:7.3f} s   time ratio {t_ours / t_theirs:.2f}   (curves agree to {diff:.1e})",
                  flush=True)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
