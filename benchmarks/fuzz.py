"""Run the adversarial harness (tests/adversarial.py) on many cases and print the counts.

    python benchmarks/fuzz.py --examples 5000 [--seed 0] [--json OUT]
    python benchmarks/fuzz.py --files 200 [--max-seconds 2] [--max-mb 16]   (hostile model files)

Each case is a random small network (every layer kind, degenerate geometry included), a hostile
input (zeros, denormals, huge and mixed magnitudes, -0, Fortran order, strided, read-only, and
sometimes the wrong rank, dtype or type) and a random rule, composite or gradient method, run on
both kernel backends.  Counts: cases by outcome (explained, or the lrpnumpy error raised), by
method and by input kind, and the violations found (foreign exceptions, non-finite results from
finite input, disagreeing backends, changed inputs or weights), which must be zero.
"""

import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import adversarial as A  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


def files(args):
    """``--files N``: each hostile-file class of tests/hostile_files.py built and loaded N times (random
    variants); a violation is an exception that is not an lrpnumpy error, a wrong outcome or message, or a
    load over ``--max-seconds`` or ``--max-mb`` (the larger of traced memory and resident-set growth)."""
    import pathlib
    import tempfile
    import numpy as np
    import hostile_files as H

    def rss_mb(key):  # VmRSS now, VmHWM the peak since the last reset
        with open("/proc/self/status") as f:
            return int(f.read().split(key + ":")[1].split()[0]) / 1024

    def reset_peak():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (Linux)
            return True
        except OSError:
            return False
    counts = {k: collections.Counter() for k in ("outcome", "class", "violation")}
    examples, worst, rng = [], {"seconds": 0.0, "mb": 0.0}, np.random.default_rng(args.seed)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.files):
            for make in H.CLASSES:
                d = pathlib.Path(tmp) / f"{i}_{make.__name__}"
                d.mkdir()
                case = make(d, rng)
                base, tracked = rss_mb("VmRSS"), reset_peak()
                outcome, seconds, peak, net = H.run(case)
                mb = max(peak, rss_mb("VmHWM") - base if tracked else 0.0)
                worst["seconds"], worst["mb"] = max(worst["seconds"], seconds), max(worst["mb"], mb)
                v = H.violation(case, outcome, seconds, mb, net, args.max_seconds, args.max_mb)
                counts["class"][case.name] += 1
                counts["outcome"][outcome.split(":")[0]] += 1
                if v:
                    counts["violation"][f"{case.name}: {v[:80]}"] += 1
                    if len(examples) < 20:
                        examples.append((case.name, v, outcome[:300]))
    seconds = time.perf_counter() - t
    total = sum(counts["class"].values())
    print(f"{total} hostile files in {seconds:.0f} s; violations: {sum(counts['violation'].values())}; slowest load "
          f"{worst['seconds'] * 1000:.1f} ms, most memory {worst['mb']:.1f} MB")
    for key in ("outcome", "class", "violation"):
        print(f"  by {key}: " + (", ".join(f"{k} {v}" for k, v in counts[key].most_common()) or "none"))
    for ex in examples:
        print("  example:", ex)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: dict(v) for k, v in counts.items()} | {"files": total, "seconds": seconds} | worst, f,
                      indent=2)
    return 1 if counts["violation"] else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--files", type=int, default=0, help="run the hostile-file classes this many times instead")
    p.add_argument("--max-seconds", type=float, default=2.0, help="--files: a load slower than this is a violation")
    p.add_argument("--max-mb", type=float, default=16.0, help="--files: a load taking more memory is a violation")
    args = p.parse_args()
    if args.files:
        return files(args)
    counts = {k: collections.Counter() for k in ("outcome", "method", "input", "violation")}
    examples = []

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        net, shape = data.draw(A.networks())
        x, input_kind, moderate = data.draw(A.inputs(shape, net.dtype))
        name, run = data.draw(A.methods(x))
        moderate = moderate and net.fuzz_moderate and not any(k in name for k in ("e-320", "e-50", "e+39"))
        outcome, violations = A.check(net, x, run, moderate)
        violations = violations + A.batch_invariance(net, x, name, run, data.draw(st.integers(0, 2 ** 32 - 1)))
        counts["outcome"][outcome] += 1
        counts["method"][name.split("/")[0]] += 1
        counts["input"][input_kind.split("/")[0] + ("" if input_kind.endswith("/ok") else " (malformed)")] += 1
        for v in violations:
            counts["violation"][v.split(":")[0]] += 1
            if len(examples) < 20:
                examples.append((name, input_kind, v, repr(net)))

    import hypothesis
    t = time.perf_counter()
    import warnings
    warnings.simplefilter("ignore", RuntimeWarning)  # the harness's own casts of hostile inputs
    hypothesis.seed(args.seed)(case)()
    seconds = time.perf_counter() - t
    total = sum(counts["outcome"].values())
    print(f"{total} cases in {seconds:.0f} s; violations: {sum(counts['violation'].values())}")
    for key in ("outcome", "method", "input", "violation"):
        print(f"  by {key}: " + (", ".join(f"{k} {v}" for k, v in counts[key].most_common()) or "none"))
    for ex in examples:
        print("  example:", ex)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: dict(v) for k, v in counts.items()} | {"cases": total, "seconds": seconds}, f, indent=2)
    return 1 if counts["violation"] else 0


if __name__ == "__main__":
    sys.exit(main())
