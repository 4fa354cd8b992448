"""The throughput model of ``benchmarks/scale_plan.py`` on fixed inputs (its formulas, by hand), and a smoke
run of the script (measurements, the bitwise check of real tasks, the simulated run)."""

import importlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from lrpnumpy import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


@pytest.fixture
def sp(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    monkeypatch.delitem(sys.modules, "scale_plan", raising=False)
    return importlib.import_module("scale_plan")


def test_chunk_size_is_the_smallest_power_of_two_under_the_overhead_bound(sp):
    # 20 ms of overhead over 1 ms per input: 200 inputs would make it exactly 10 %; the next power of two
    assert sp.chunk_size(1e-3, 0.02, images=10 ** 6, workers=1) == 256
    assert 0.02 / (256 * 1e-3) < 0.1 <= 0.02 / (128 * 1e-3)
    assert sp.chunk_size(5.0, 0.02, images=50_000, workers=200) == 1  # one input already dwarfs the overhead
    assert sp.chunk_size(1e-3, 0.02, images=1000, workers=100) == 5  # every worker gets two chunks
    assert sp.chunk_size(1e-7, 0.02, images=10 ** 9, workers=1) == parallel.MAX_BATCH


def test_chunk_size_agrees_with_choose_batch_size(sp, monkeypatch):
    """The model's chunk size is the one lrpnumpy picks for the same measured cost (a clock that says
    each timed call of 16 inputs took 16 x 0.4 ms)."""
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * 16 * 4e-4)
    data = np.zeros((100_000, 2))
    got = parallel.choose_batch_size(lambda model, x, t: x, None, data, overhead=0.03)
    assert got == sp.chunk_size(4e-4, 0.03, images=100_000, workers=1) == 1024


def test_plan_formulas(sp):
    costs = {"a": 1.0, "b": 0.5}
    m = sp.plan(costs, overhead=0.02, rate=1000, images=50_000, machines=100, cores=2, task_bytes_in=300,
                task_bytes_out=70, input_bytes=1000, result_bytes=3000, model_bytes=int(1.25e9),
                storage_bandwidth=1e9, network_bandwidth=1.25e9)
    assert m["workers"] == 200 and m["batch"] == {"a": 1, "b": 1} and m["tasks"] == 100_000
    compute = (50_000 * 1.5 + 100_000 * 0.02) / 200 + 1.5  # work + overhead over the workers, last tasks
    assert m["seconds"]["compute"] == pytest.approx(compute)
    assert m["seconds"]["scheduler"] == pytest.approx(100.0)
    assert m["seconds"]["storage"] == pytest.approx(50_000 * 2 * 4000 / 1e9)
    assert m["startup"] == pytest.approx(math.ceil(math.log2(201)) * 1.0)  # 8 doubling rounds of 1 s
    assert m["limit"] == "compute" and m["wall"] == pytest.approx(compute + 8)
    assert m["efficiency"] == pytest.approx(375 / (compute + 8))
    assert m["scheduler_bytes"] == 100_000 * 370 and m["broadcast_bytes"] == int(1.25e9) * 200
    assert m["tasks_per_s_needed"] == pytest.approx(100_000 / compute)
    assert m["overhead_share"]["b"] == pytest.approx(0.02 / 0.52)
    # work that runs 1.2x slower in a worker process than here: the work and the last tasks stretch, the ideal not
    slow = sp.plan(costs, overhead=0.02, rate=1000, images=50_000, machines=100, cores=2, worker_factor=1.2)
    assert slow["seconds"]["compute"] == pytest.approx((1.2 * 75_000 + 2_000) / 200 + 1.2 * 1.5)
    assert slow["ideal"] == pytest.approx(375) and slow["efficiency"] == pytest.approx(375 / slow["wall"])


def test_plan_switches_to_the_scheduler_and_to_storage(sp):
    costs = {"a": 1.0, "b": 0.5}
    slow = sp.plan(costs, overhead=0.02, rate=100, images=50_000, machines=100, cores=2)
    assert slow["limit"] == "scheduler" and slow["wall"] == pytest.approx(1000.0)
    assert slow["scheduler_load"] > 1 and slow["efficiency"] == pytest.approx(0.375)
    io = sp.plan(costs, overhead=0.02, rate=1000, images=50_000, machines=100, cores=2, input_bytes=10 ** 7,
                 storage_bandwidth=1e9)
    assert io["limit"] == "storage" and io["wall"] == pytest.approx(1000.0)
    # chunks sized from the overhead: cheap inputs make long chunks and few tasks, meeting the 10 % bound
    cheap = sp.plan({"c": 1e-3}, overhead=0.02, rate=1000, images=50_000, machines=1, cores=2)
    assert cheap["batch"] == {"c": 256} and cheap["tasks"] == math.ceil(50_000 / 256)
    assert cheap["overhead_share"]["c"] < 0.1


def test_smoke_run(tmp_path, sp):
    pytest.importorskip("distributed")
    out = tmp_path / "plan.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, os.path.join(BENCH, "scale_plan.py"), "--quick", "--json", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(out.read_text())
    assert set(r["costs"]["s_per_input"]) == {"LRP epsilon_plus_flat", "LRP epsilon_gamma_box",
                                              "gradient_x_input", "integrated_gradients", "smoothgrad"}
    assert r["simulation"]["tasks"] == min(300, r["plan"]["tasks"]) and r["rate"]["tasks_per_s"] > 0
    assert r["bytes"]["back"] < 200 and r["bytes"]["to_worker"] < 1000  # a range and a path, not arrays
    assert "deviation" in r["simulation"] and "equal bit for bit" in run.stdout
    again = sp.plan(r["costs"]["s_per_input"], max(r["overhead"]["overhead_s"], 1e-4), r["rate"]["tasks_per_s"],
                    images=50_000, machines=100, cores=r["args"]["cores"])
    assert again["tasks"] == r["plan"]["tasks"] and again["batch"] == r["plan"]["batch"]
