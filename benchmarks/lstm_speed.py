"""LRP through a bidirectional LSTM: explanations per second, against torch autograd's gradient on the
same LSTM and against a per-sentence NumPy statement of Arras et al.'s LRP_for_LSTM formulas.

    python benchmarks/lstm_speed.py [--n 1000] [--tmin 20] [--tmax 50] [--dim 60] [--hidden 60 128]
                                    [--threads 1] [--reference-n 200] [--json out.json]

The model is Arras et al.'s bidirectional LSTM (``output="last"``, scores ``W [h_left; h_right]``
with no bias), random weights (torch's initialisation) of the given sizes; the input is ``--n``
embedded sentences (N(0, 1) vectors of ``--dim``) whose lengths are drawn from [tmin, tmax], padded
to tmax and run as one ragged batch (``sequence_lengths`` on lrpnumpy's side, a packed sequence on
torch's).  Each class logit is explained for a random target class.

Before timing, the results are asserted:

* lrpnumpy's gradient (``methods.gradient``, float32) equals torch autograd's (float32) to 1e-4 of
  its largest value, so both sides compute the same thing;
* lrpnumpy's LRP-all (``composites.get("lrp_all")``, epsilon 0.001) in float64 equals the
  per-sentence reference (:func:`reference_lrp_all`) in float64 to 1e-10 of its largest value, on
  the first ``--check`` sentences;
* lrpnumpy's LRP-all in float32 is close to its float64 result (1e-3 of the largest value).

Then, in turns (``common.interleaved_medians``: blocks of runs of each side, medians): lrpnumpy's
LRP-all (float32, the whole batch in one call: forward pass and relevance), torch's gradient (float32,
the whole batch: forward and backward) and lrpnumpy's gradient; the per-sentence reference is timed
on ``--reference-n`` sentences (float64, as the reference code runs) and given per sentence.  BLAS
and torch get ``--threads`` threads (threadpoolctl and ``torch.set_num_threads``): the default 1
because on a shared, loaded machine OpenBLAS's spinning threads make small products 10-300 times
slower (measured here), for both sides.  Needs torch (the 'reference' extra).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved_medians, reference_modules, write_json  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from oracles import reference_lrp_all  # noqa: E402  (the per-sentence LRP_for_LSTM formulas the tests use)

import lrpnumpy as L  # noqa: E402
from lrpnumpy import composites, methods  # noqa: E402


# ----- the run -----

def torch_model(torch, net):
    """The same bidirectional LSTM and output layer in torch (float32), and its gradient of the target logits."""
    rec, out = net[0], net[1]
    rnn = torch.nn.LSTM(rec.input_size, rec.hidden_size, batch_first=True, bidirectional=True)
    lin = torch.nn.Linear(out.in_features, out.out_features, bias=False)
    with torch.no_grad():
        for k, sfx in enumerate(("_l0", "_l0_reverse")):
            for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, p + sfx).copy_(torch.from_numpy(getattr(rec, p)[k]))
        lin.weight.copy_(torch.from_numpy(out.weight))

    def gradient(x, lengths, target):
        e = torch.from_numpy(x).requires_grad_(True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
        _, (hn, _) = rnn(packed)
        scores = lin(hn.permute(1, 0, 2).reshape(len(x), -1))
        scores[torch.arange(len(x)), target].sum().backward()
        return e.grad.numpy()
    return gradient


def run(torch, args, hidden):
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.tmin, args.tmax + 1, args.n)
    x64 = rng.normal(size=(args.n, args.tmax, args.dim))
    net64 = L.Sequential(L.LSTM(args.dim, hidden, bidirectional=True, output="last", rng=1),
                         L.Linear(2 * hidden, args.classes, bias=False, rng=2))
    net, x = net64.astype(np.float32), x64.astype(np.float32)
    target = rng.integers(0, args.classes, args.n)
    comp = composites.get("lrp_all", epsilon=0.001, bias_factor=0.0)
    torch_gradient = torch_model(torch, net)
    Lt, tt = torch.from_numpy(lengths.astype(np.int64)), torch.from_numpy(target)

    def lrp():
        with L.sequence_lengths(lengths):
            return L.explain(net, x, target=target, composite=comp).relevance

    def grad():
        with L.sequence_lengths(lengths):
            return methods.gradient(net, x, target=target).relevance

    def torch_grad():
        return torch_gradient(x, Lt, tt)

    # the checks
    ours_g, theirs_g = grad(), torch_grad()
    grad_diff = float(np.abs(ours_g - theirs_g).max() / np.abs(theirs_g).max())
    assert grad_diff <= 1e-4, f"lrpnumpy's gradient differs from torch's by {grad_diff:.2e} of its largest value"
    check = min(args.check, args.n)
    with L.sequence_lengths(lengths[:check]):
        r64 = L.explain(net64, x64[:check], target=target[:check], composite=comp).relevance
    rec = net64[0]
    P = [(rec.weight_ih[k], rec.weight_hh[k], rec.bias_ih[k], rec.bias_hh[k]) for k in (0, 1)]
    ref = np.zeros_like(r64)
    for i in range(check):
        T = lengths[i]
        ref[i, :T] = reference_lrp_all(x64[i, :T], P, net64[1].weight, target[i])[1]
    ref_diff = float(np.abs(r64 - ref).max() / np.abs(ref).max())
    assert ref_diff <= 1e-10, f"lrp_all differs from the reference formulas by {ref_diff:.2e} of its largest value"
    r32 = lrp()
    f32_diff = float(np.abs(r32[:check] - r64).max() / np.abs(r64).max())
    assert r32.dtype == np.float32 and f32_diff <= 1e-3, f"float32 LRP differs from float64 by {f32_diff:.2e}"

    # the timings
    t_lrp, t_torch, t_grad = interleaved_medians([lrp, torch_grad, grad], repeat=args.repeat, rounds=args.rounds,
                                                 settle=0.0)
    m = min(args.reference_n, args.n)
    start = time.perf_counter()
    for i in range(m):
        T = lengths[i]
        reference_lrp_all(x64[i, :T], P, net64[1].weight, target[i])
    t_ref = (time.perf_counter() - start) / m * args.n  # for all n sentences
    row = dict(n=args.n, tmin=args.tmin, tmax=args.tmax, dim=args.dim, hidden=hidden, threads=args.threads,
               lrp_s=t_lrp, torch_grad_s=t_torch, lrpnumpy_grad_s=t_grad, reference_s=t_ref, reference_timed_on=m,
               lrp_per_s=args.n / t_lrp, torch_grad_per_s=args.n / t_torch, lrpnumpy_grad_per_s=args.n / t_grad,
               reference_per_s=args.n / t_ref, lrp_over_torch=t_lrp / t_torch, torch_over_lrp=t_torch / t_lrp,
               reference_over_lrp=t_ref / t_lrp, grad_max_rel_diff=grad_diff, reference_max_rel_diff=ref_diff,
               float32_max_rel_diff=f32_diff)
    print(f"H = {hidden:>3}: checks: gradient = torch's to {grad_diff:.1e}; lrp_all (float64) = reference to "
          f"{ref_diff:.1e} ({check} sentences); float32 LRP within {f32_diff:.1e} of float64")
    print(f"         lrpnumpy LRP-all      {t_lrp:7.2f} s  {args.n / t_lrp:8.1f} explanations/s")
    print(f"         torch gradient        {t_torch:7.2f} s  {args.n / t_torch:8.1f} explanations/s")
    print(f"         lrpnumpy gradient     {t_grad:7.2f} s  {args.n / t_grad:8.1f} explanations/s")
    print(f"         reference LRP-all     {t_ref:7.2f} s  {args.n / t_ref:8.1f} explanations/s "
          f"(per sentence, float64; timed on {m})")
    print(f"         LRP time / torch gradient time {t_lrp / t_torch:.2f}  (torch / LRP {t_torch / t_lrp:.2f});  "
          f"reference / LRP {t_ref / t_lrp:.1f}", flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="sentences")
    p.add_argument("--tmin", type=int, default=20)
    p.add_argument("--tmax", type=int, default=50)
    p.add_argument("--dim", type=int, default=60, help="embedding size (Arras et al.: 60)")
    p.add_argument("--hidden", type=int, nargs="+", default=[60, 128], help="hidden sizes (Arras et al.: 60)")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check", type=int, default=50, help="sentences the reference is checked on")
    p.add_argument("--reference-n", type=int, default=200, help="sentences the reference is timed on")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    modules = reference_modules("lstm_speed", "torch")
    if modules is None:
        return 0
    torch, = modules
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    print(f"torch {torch.__version__}, {args.threads} thread(s) for torch and BLAS; {args.n} sentences of "
          f"{args.tmin}-{args.tmax} tokens, embedding {args.dim}, bidirectional LSTM, float32, one batch")
    results = []
    with (threadpool_limits(limits=args.threads) if threadpool_limits else _nothing()):
        for hidden in args.hidden:
            results.append(run(torch, args, hidden))
    write_json(args.json, results)
    return 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
