"""lrpnumpy against Zennit (PyTorch CPU, 2 threads) on the same model, weights and inputs.

    python benchmarks/compare_zennit.py --model lenet5 vgg16 toolbox_lenet resnet50 --batch 1 64 \\
        --composite epsilon_plus [--json OUT]

For each model it first checks that the relevance maps agree: float64, 1e-10 relative (the
largest absolute difference over the largest reference value); float32, 1e-2 (vgg16's 16
layers of float32 rounding reach 4e-3 with torch 2.14.1; a wrong network differs by O(1)).  Then it times
forward + explain of both in this process (float32, medians of runs taken in turn: lrpnumpy,
Zennit, lrpnumpy, ...) and prints the ratio of lrpnumpy's time to Zennit's, and the peak resident
memory of three runs of each side on its own: the peak is reset before each side runs, so it
includes what the process already held (the network, torch, its copy of the network), printed as
"held"; the difference is what the explanations add.
Needs the 'reference' extra (torch, zennit); without it the script says so and exits.

Other torch builds: Zennit imports torchvision when it is imported, only for the classes its
ResNet canonizers recognise, and no torchvision on PyPI loads with the CPU build of torch 2.13.0.
When torchvision fails to load, the script puts placeholders for those two classes in its place
(printed; nothing here uses ResNet canonizers), so Zennit runs on any torch:

    python -m venv --system-site-packages /tmp/t213 && /tmp/t213/bin/pip install torch==2.13.0
    /tmp/t213/bin/python benchmarks/compare_zennit.py ...
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved_medians, peak_rss_mb, reset_peak_rss, rss_mb, write_json  # noqa: E402

import lrpnumpy as L  # noqa: E402
from lrpnumpy import composites, verify, zoo  # noqa: E402


def torchvision_or_placeholder():
    """Import torchvision; if it cannot load with this torch, register placeholder modules holding
    the two classes ``zennit.torchvision`` imports, and say so."""
    import types
    try:
        import torchvision  # noqa: F401
        return "torchvision " + torchvision.__version__
    except (ImportError, RuntimeError, OSError) as exc:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (), {})
        resnet.BasicBlock = type("BasicBlock", (), {})
        models = types.ModuleType("torchvision.models")
        models.resnet = resnet
        tv = types.ModuleType("torchvision")
        tv.models = models
        sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
        return f"torchvision placeholders (torchvision failed to load: {str(exc).splitlines()[0][:60]})"


def setup(model, batch, dtype, composite, seed=0):
    net = zoo.MODELS[model](seed=seed, dtype=dtype).freeze()  # rules keep their modified weights
    x = np.random.default_rng(seed).random((batch,) + net.input_shape).astype(dtype)
    return net, x, composites.get(composite, bounds=(0.0, 1.0)), dict(low=0.0, high=1.0)


def zennit_runner(net, x, composite, kwargs):
    import torch
    from zennit.attribution import Gradient
    tnet = verify.to_torch(net)
    tnet = tnet.float() if x.dtype == np.float32 else tnet
    zc = verify._zennit_composite(composite, kwargs.get("low", 0.0), kwargs.get("high", 1.0))
    xt = torch.from_numpy(x)
    output = net.forward(x)
    target, classes = output.argmax(1), output.shape[1]
    onehot = torch.from_numpy(np.eye(classes, dtype=x.dtype)[target])

    def run():
        with Gradient(model=tnet, composite=zc) as attributor:
            _, rel = attributor(xt.clone().requires_grad_(True), lambda out: out * onehot.reshape(out.shape))
        return rel.detach().numpy()
    return run


def check(model, composite, batch=2):
    rows = {}
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-2)):
        net, x, comp, kwargs = setup(model, batch, dtype, composite)
        ours = L.explain(net, x, composite=comp).relevance
        theirs = zennit_runner(net, x, composite, kwargs)()
        rel = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        assert rel <= tol, f"{model} {np.dtype(dtype).name}: relevance differs from Zennit by {rel:.3e} > {tol:g}"
        rows[np.dtype(dtype).name] = rel
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["lenet5", "toolbox_lenet"], choices=sorted(zoo.MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    p.add_argument("--composite", default="epsilon_plus", choices=list(verify.ZENNIT_COMPOSITES))
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json")
    args = p.parse_args()
    vision = torchvision_or_placeholder()
    if not verify.available("zennit"):
        print("compare_zennit: torch/zennit are not installed (pip install -e '.[reference]'); nothing to compare")
        return 0
    import torch
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {vision}; lrpnumpy kernels: "
          f"{L.kernels.BACKEND}")
    results = []
    for model in args.model:
        agree = check(model, args.composite)
        print(f"{model}: relevance agrees with Zennit, max relative difference float64 {agree['float64']:.1e}, "
              f"float32 {agree['float32']:.1e}")
        for batch in args.batch:
            net, x, comp, kwargs = setup(model, batch, np.float32, args.composite)
            zrun = zennit_runner(net, x, args.composite, kwargs)
            L.explain(net, x, composite=comp)  # warm-up: the frozen net's derived weights, the JIT cache
            zrun()
            min_time = 0.5 if model in ("lenet5", "toolbox_lenet") else 0
            reset_peak_rss()  # peak memory: each side on its own for a few runs
            held_mb = rss_mb()
            for _ in range(3):
                L.explain(net, x, composite=comp)
            ours_mb = peak_rss_mb()
            reset_peak_rss()
            for _ in range(3):
                zrun()
            theirs_mb = peak_rss_mb()
            ours, theirs = interleaved_medians([lambda: L.explain(net, x, composite=comp), zrun], args.repeat,
                                               min_time)
            row = dict(model=model, batch=batch, composite=args.composite, lrpnumpy_ms=1e3 * ours,
                       zennit_ms=1e3 * theirs, lrpnumpy_img_s=batch / ours, zennit_img_s=batch / theirs,
                       ratio=ours / theirs, agree=agree, held_mb=held_mb, lrpnumpy_peak_mb=ours_mb,
                       zennit_peak_mb=theirs_mb)
            results.append(row)
            print(f"  batch {batch:>3}: lrpnumpy {1e3 * ours:9.2f} ms ({batch / ours:8.1f} img/s, peak "
                  f"{ours_mb:.0f} MB)   zennit {1e3 * theirs:9.2f} ms ({batch / theirs:8.1f} img/s, peak "
                  f"{theirs_mb:.0f} MB)   time ratio {ours / theirs:.2f}   (held before: {held_mb:.0f} MB)",
                  flush=True)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
