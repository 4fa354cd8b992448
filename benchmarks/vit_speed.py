"""AttnLRP on vision transformers: lrpnumpy against lxt's efficient mode (torch CPU), side by side.

    python benchmarks/vit_speed.py [--threads 2] [--repeats 3] [--big-layers 12] [--big-batch16]

Models: the shipped ViT (``fashion_vit``: 28 x 28 x 1, patches 7 x 7, width 64, 4 heads, 2 pre-norm
blocks) and a ViT-B/16-sized one with random weights (224 x 224 x 3, patches 16 x 16, width 768, 12 heads,
MLP 3072, ``--big-layers`` blocks, 1,000 classes).  Each is built in torch with the same weights and
explained with lxt 2.1's efficient AttnLRP (gradient x input with its patches: the std held constant in
LayerNorm, the identity rule on GELU, the query's and key's gradients divided by 4 and the value's by 2
around the attention, every epsilon 0; the attention itself is ``scaled_dot_product_attention``).
Before timing, each model's relevance is checked against lrpnumpy's ``attnlrp`` composite (the shipped ViT
in float64 to 1e-8 with epsilon 1e-12; the timed float32 runs to float32 tolerance).  Times are the
minimum over ``--repeats`` rounds (10 times as many for the shipped ViT; lrpnumpy and lxt in turns) of forward + relevance for the predicted class, float32, with torch and
NumPy's BLAS limited to ``--threads`` threads.  The peak memory of one ViT-B/16-sized explanation (batch 1)
is measured in a child process for each library, the first explanation after building the model: the peak resident size
(``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident size before it.

``--products``: for the ViT-B/16-sized model at each timed batch, the token products alone, as one
explanation makes them (every ``Linear``'s forward ``x W^T`` and step 3 ``s W``, recorded from a real
explanation and replayed on its own operands): one product per sample, as lrpnumpy computes them for
batch invariance, and one product over the whole batch, as torch does; each replayed result is first
checked bitwise against the recorded one, the whole-batch one to float32 tolerance.  Timed in turns with
lxt's whole explanation: the part of lrpnumpy's time no other work can remove.
"""

import argparse
import importlib
import os
import subprocess
import sys
import time
import types

import numpy as np

import lrpnumpy as L
from lrpnumpy import composites


def load_lxt():
    """lxt.efficient's rules (torch only), without the package's __init__ (which imports Hugging Face
    transformers for its LLM patches)."""
    import lxt
    stub = types.ModuleType("lxt.efficient")
    stub.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
    sys.modules.setdefault("lxt.efficient", stub)
    return importlib.import_module("lxt.efficient.rules")


def lrpnumpy_vit(image, channels, patch, width, heads, depth, mlp, classes, rng=0, dtype=np.float32):
    tokens = (image // patch) ** 2 + 1
    blocks = [L.TransformerEncoderLayer(width, heads, mlp, rng=rng + 3 + i, dtype=dtype) for i in range(depth)]
    net = L.Sequential(L.PatchEmbedding(channels, width, patch, rng=rng, dtype=dtype),
                       L.ClassToken(width, rng=rng + 1, dtype=dtype),
                       L.PositionEmbedding(tokens, width, rng=rng + 2, dtype=dtype), *blocks,
                       L.LayerNorm(width), L.SelectToken(0), L.Linear(width, classes, rng=rng + 99, dtype=dtype))
    r = np.random.default_rng(rng)
    for block in blocks:  # nonzero biases and layer-norm affines, so that every term is exercised
        for name in ("norm1", "norm2"):
            norm = getattr(block, name)
            norm.weight = (1 + 0.1 * r.standard_normal(width)).astype(dtype)
            norm.bias = (0.1 * r.standard_normal(width)).astype(dtype)
        block.self_attn.in_proj_bias = (0.1 * r.standard_normal(3 * width)).astype(dtype)
        block.linear1.bias = (0.1 * r.standard_normal(mlp)).astype(dtype)
    return net.astype(dtype)


def torch_vit(net, dtype):
    """The same network as a torch function with lxt's efficient AttnLRP patches; weights copied."""
    import torch
    import torch.nn.functional as F
    rules = load_lxt()

    def t(a):
        return torch.tensor(np.asarray(a), dtype=dtype)
    embed, cls, pos, *blocks, norm, select, head = list(net)
    conv_w, conv_b = t(embed.proj.weight), t(embed.proj.bias)
    cls_t, pos_t = t(cls.cls_token), t(pos.pos_embedding)
    params = []
    for b in blocks:
        a = b.self_attn
        params.append(dict(
            n1=(t(b.norm1.weight), t(b.norm1.bias), b.norm1.eps), n2=(t(b.norm2.weight), t(b.norm2.bias), b.norm2.eps),
            w_in=t(a.in_proj_weight), b_in=t(a.in_proj_bias), w_out=t(a.out_proj_weight), b_out=t(a.out_proj_bias),
            w1=t(b.linear1.weight), b1=t(b.linear1.bias), w2=t(b.linear2.weight), b2=t(b.linear2.bias), heads=a.num_heads))
    final = (t(norm.weight), t(norm.bias), norm.eps)
    head_w, head_b = t(head.weight), t(head.bias)

    def layer_norm(x, p):  # lxt.efficient.patches.layer_norm_forward: the std held constant
        w, b, eps = p
        mean = x.mean(dim=-1, keepdim=True)
        std = (((x - mean) ** 2).mean(dim=-1, keepdim=True) + eps).sqrt()
        return (x - mean) / rules.stop_gradient(std) * w + b

    def forward(x):
        h = F.conv2d(x, conv_w, conv_b, stride=conv_w.shape[-1]).flatten(2).transpose(1, 2)
        h = torch.cat([cls_t.expand(h.shape[0], -1, -1), h], dim=1) + pos_t
        for p in params:
            n, T, E = h.shape
            H = p["heads"]
            q, k, v = F.linear(layer_norm(h, p["n1"]), p["w_in"], p["b_in"]).chunk(3, dim=-1)
            q, k, v = (u.view(n, T, H, E // H).transpose(1, 2) for u in (q, k, v))
            # lxt.efficient.patches.wrap_attention_forward: the uniform rule on both matmuls
            q, k, v = rules.divide_gradient(q, 4), rules.divide_gradient(k, 4), rules.divide_gradient(v, 2)
            ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, T, E)
            h = h + F.linear(ctx, p["w_out"], p["b_out"])
            f = rules.identity_rule_implicit(F.gelu, F.linear(layer_norm(h, p["n2"]), p["w1"], p["b1"]))
            h = h + F.linear(f, p["w2"], p["b2"])
        return F.linear(layer_norm(h, final)[:, 0], head_w, head_b)
    return forward


def lxt_relevance(forward, x, torch):
    xt = torch.tensor(x, requires_grad=True)
    y = forward(xt)
    target = y.argmax(1)
    y.backward(torch.nn.functional.one_hot(target, y.shape[1]).to(y.dtype))
    return (xt * xt.grad).detach().numpy(), y.detach().numpy()


def best(fns, repeats):
    """The minimum time of each function over ``repeats`` rounds, the functions run in turns (so that
    load from other processes falls on both)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [min(t) for t in times]


def token_products(net, x, composite):
    """The (input, weight, output) of every token product ``lrpnumpy.layers.linear._matmul`` makes in one
    explanation of ``x``: the forward ``x W^T`` and step 3's ``s W`` of each Linear (projections included)."""
    from lrpnumpy.layers import linear
    calls, real = [], linear._matmul

    def record(a, w):
        out = real(a, w)
        calls.append((a.copy(), w, out.copy()))  # copies: the callers go on to change both in place
        return out
    linear._matmul = record
    try:
        L.explain(net, x, composite=composite)
    finally:
        linear._matmul = real
    return calls


def products_floor(net, x, composite, fwd, torch, repeats):
    """Seconds of the recorded token products one sample at a time and whole-batch, and of lxt's whole
    explanation, timed in turns; the replays first checked against the recorded products."""
    from lrpnumpy.layers.linear import _matmul
    calls = [(a, w, out) for a, w, out in token_products(net, x, composite) if a.ndim == 3]
    for a, w, out in calls:
        assert np.array_equal(_matmul(a, w), out)  # the replay is what explain computed, bit for bit
        whole = np.matmul(a.reshape(-1, a.shape[-1]), w).reshape(out.shape)
        np.testing.assert_allclose(whole, out, rtol=1e-4, atol=1e-4 * np.abs(out).max())

    def per_sample():
        for a, w, _ in calls:
            _matmul(a, w)

    def whole_batch():
        for a, w, _ in calls:
            np.matmul(a.reshape(-1, a.shape[-1]), w)
    return len(calls), best([per_sample, whole_batch, lambda: lxt_relevance(fwd, x, torch)], repeats)


BIG = dict(image=224, channels=3, patch=16, width=768, heads=12, mlp=3072, classes=1000)


def peak_child(which, depth, threads):
    """Peak memory (MB) of one ViT-B/16-sized explanation at batch 1, in a fresh process."""
    code = f"""
import resource, sys, numpy as np
sys.argv = ['x']
import threadpoolctl, torch
torch.set_num_threads({threads}); threadpoolctl.threadpool_limits({threads})
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import vit_speed as V, lrpnumpy as L
from lrpnumpy import composites
net = V.lrpnumpy_vit(depth={depth}, **V.BIG).freeze()
x = np.random.default_rng(1).random((1, 3, 224, 224)).astype(np.float32)
fwd = V.torch_vit(net, torch.float32) if {which!r} == 'lxt' else None
import gc; gc.collect()
def status(key):  # kB
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key + ':'))
base = status('VmRSS')
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM, the peak resident size, to the current one (Linux >= 4.0)
if fwd is not None:
    V.lxt_relevance(fwd, x, torch)
else:
    L.explain(net, x, composite=composites.get('attnlrp', epsilon=1e-12))
peak = status('VmHWM')
print((peak - base) / 1024, peak / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra, total = map(float, out.stdout.split())
    return extra, total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--big-layers", type=int, default=12)
    p.add_argument("--big-batch16", action="store_true", help="also time the big model at batch 16")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true", help="only the peak memory of the big model")
    p.add_argument("--products", action="store_true",
                   help="also time the big model's token products alone, per sample and whole-batch, against lxt")
    p.add_argument("--tune-malloc", action="store_true",
                   help="lrpnumpy.parallel.tune_malloc() first (glibc keeps freed memory for the next large array; "
                        "both libraries run in this process)")
    args = p.parse_args()
    if args.tune_malloc:
        from lrpnumpy import parallel
        print(f"malloc tuned: {parallel.tune_malloc()}")
    import threadpoolctl
    import torch
    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)
    if args.memory_only:
        return memory(args)
    attnlrp = composites.get("attnlrp", epsilon=1e-12)  # lxt's efficient mode has no epsilon; the time is the same

    # 1. the same relevance: the shipped ViT in float64, epsilon 1e-12 (lxt's efficient mode has none)
    small64 = L.zoo.trained("fashion_vit", dtype=np.float64)
    x64 = L.datasets.sample(np.float64).images[:8]
    theirs, y = lxt_relevance(torch_vit(small64, torch.float64), x64, torch)
    np.testing.assert_allclose(y, small64.forward(x64), rtol=1e-10, atol=1e-10)
    ours = L.explain(small64, x64, composite=composites.get("attnlrp", epsilon=1e-12)).relevance
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8)
    print(f"shipped ViT, float64, 8 images: lrpnumpy == lxt to 1e-8 (max |difference| "
          f"{np.abs(ours - theirs).max():.1e}, max |R| {np.abs(theirs).max():.2f})")

    rows, floors = [], []
    models = [("shipped ViT (2 blocks, width 64, 17 tokens)", L.zoo.trained("fashion_vit", dtype=np.float32),
               (1, 28, 28), [1, 16]),
              (f"ViT-B/16-sized ({args.big_layers} blocks, width 768, 197 tokens)",
               lrpnumpy_vit(depth=args.big_layers, **BIG), (3, 224, 224), [1, 16] if args.big_batch16 else [1])]
    for name, net, shape, batches in models:
        net.freeze()
        fwd = torch_vit(net, torch.float32)
        for batch in batches:
            x = np.random.default_rng(batch).random((batch,) + shape).astype(np.float32)
            theirs, _ = lxt_relevance(fwd, x, torch)
            ours = L.explain(net, x, composite=attnlrp).relevance
            scale = np.abs(theirs).max()
            err = np.abs(ours - theirs).max() / scale
            assert ours.dtype == np.float32 and err < 2e-3, err  # float32 through 12 blocks, epsilon 1e-12: relative to max |R|
            t_ours, t_lxt = best([lambda: L.explain(net, x, composite=attnlrp), lambda: lxt_relevance(fwd, x, torch)],
                                 args.repeats * (10 if x.size < 10 ** 5 else 1))  # the small model: 10x more rounds
            rows.append((name, batch, t_ours, t_lxt, err))
            print(f"{name}, batch {batch}: lrpnumpy {t_ours * 1e3:.1f} ms, lxt {t_lxt * 1e3:.1f} ms "
                  f"(ratio {t_ours / t_lxt:.2f}; max |difference| / max |R| {err:.1e})", flush=True)
            if args.products and x.size >= 10 ** 5:
                count, (t_each, t_whole, t_lxt2) = products_floor(net, x, attnlrp, fwd, torch, args.repeats)
                floors.append((batch, count, t_each, t_whole, t_lxt2))
                print(f"  its {count} token products alone: one per sample {t_each * 1e3:.1f} ms, whole batch "
                      f"{t_whole * 1e3:.1f} ms (per sample / whole {t_each / t_whole:.2f}); lxt's explanation "
                      f"{t_lxt2 * 1e3:.1f} ms (products per sample / lxt {t_each / t_lxt2:.2f})", flush=True)
    print(f"\nAttnLRP, float32, {args.threads} threads, min of {args.repeats} rounds ({10 * args.repeats} for the shipped ViT)\n")
    print(f"{'model':<52} {'batch':>5} {'lrpnumpy ms':>12} {'lxt ms':>9} {'ratio':>6}")
    for name, batch, a, b, _ in rows:
        print(f"{name:<52} {batch:>5} {a * 1e3:>12.1f} {b * 1e3:>9.1f} {a / b:>6.2f}")
    if floors:
        print("\nThe big model's token products alone (ms) against lxt's whole explanation\n")
        print(f"{'batch':>5} {'products':>8} {'per sample':>11} {'whole batch':>12} {'lxt':>9} {'per sample / lxt':>17}")
        for batch, count, each, whole, lxt in floors:
            print(f"{batch:>5} {count:>8} {each * 1e3:>11.1f} {whole * 1e3:>12.1f} {lxt * 1e3:>9.1f} {each / lxt:>17.2f}")
    return 0 if args.no_memory else memory(args)


def memory(args):
    for which in ("lrpnumpy", "lxt"):
        extra, total = peak_child(which, args.big_layers, args.threads)
        print(f"peak memory, ViT-B/16-sized ({args.big_layers} blocks), batch 1, {which}: "
              f"{extra:.0f} MB above the built model ({total:.0f} MB peak resident)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
