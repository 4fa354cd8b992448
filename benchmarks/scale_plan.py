"""A plan past one machine, from measurements: ILSVRC2012-val x VGG-16 x 5 methods on many machines.

    python benchmarks/scale_plan.py [--machines 100] [--cores C] [--images 50000] [--steps 20]
                                    [--sim-tasks 4000] [--sim-seconds 40] [--json OUT] [--quick]

Measured here, on a ``distributed.LocalCluster`` of single-threaded worker processes
(``parallel.cluster_options()``):

(a) the per-task overhead of lrpnumpy's real data-set tasks: ``parallel.explain_dataset`` of lenet5
    (float32, ``--overhead-images`` inputs in a ``.npy`` file read by the workers through
    ``sources.NpySource``, chunks of ``--overhead-batch``, the workers writing the chunks to a folder)
    on a 1-worker cluster, against the same run serially in this process (one BLAS thread in both):
    ``(cluster - serial) / tasks``.  The cluster's result is asserted equal to the serial one, bit for
    bit, before anything is timed.
(b) the scheduler's task rate: tasks/s for tiny tasks on a cluster of one worker per core, at the
    plan's task count (capped by ``--rate-tasks``).
(c) bytes per task, each way: the pickled arguments of the task ``explain_dataset`` submits (the
    function by reference, the keys of the scattered job, model and source, the target, the chunk's
    path and range) and of what it returns with ``out`` (a shape and a dtype); beside them, what goes
    to every worker once (the pickled model and source) and the array a task would return without
    ``out``.
(d) the per-input cost of VGG-16 (``zoo.vgg16``, random weights, float32, 3 x 224 x 224) on one core,
    for five methods: LRP with ``EpsilonPlusFlat`` and with ``EpsilonGammaBox``, gradient x input,
    integrated gradients and SmoothGrad (``--steps`` each; measured at ``--measure-steps`` and
    extended by one gradient x input pass per further step); and the same job timed inside a worker
    process and here, in turn (the worker factor: work on a worker runs slower, never faster, than here).

``LRPNUMPY_THREADS=1`` is set for this process and inherited by the workers (lrpnumpy's kernels
otherwise share a batch among every core of each process).

Then the throughput model (:func:`plan`, pure arithmetic: chunk size, task count, scheduler load,
bytes through the scheduler and storage, wall time, efficiency and what limits it) for
``--images`` inputs x 5 methods on ``--machines`` machines of ``--cores`` cores, and:

(e) a simulated run: ``--sim-tasks`` tasks (default: the plan's count, capped at 4,000) submitted as
    ``explain_dataset`` submits them (the same function signature and arguments: scattered job,
    model and source, target, chunk path, range), each a stand-in that sleeps a scaled-down task
    duration and returns the shape and dtype a writing task returns.  Every task is checked to have
    completed with its own chunk's answer; the measured wall time and per-task overhead are printed
    beside the model's prediction for that run (:func:`plan` on this machine's workers), with the
    deviation.

``--quick``: lenet5 instead of VGG-16 for (d) and small counts everywhere (a smoke run of seconds).
"""

import argparse
import contextlib
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import time

import numpy as np

# one thread per process everywhere, this one and the workers (which inherit it): lrpnumpy's kernels
# otherwise share a batch's samples among as many threads as the process has cores, so the "one core"
# costs would use them all and every worker of a machine would start that many threads
os.environ.setdefault("LRPNUMPY_THREADS", "1")

import lrpnumpy as L  # noqa: E402
from lrpnumpy import parallel, sources, zoo  # noqa: E402

# --------------------------------------------------------------------------- the model (pure arithmetic)

SHARE = 0.1  # the largest share of a task that its overhead may take


def chunk_size(cost, overhead, images, workers, share=SHARE, max_batch=parallel.MAX_BATCH):
    """Inputs per task, as ``parallel.choose_batch_size`` picks them from a measured cost: the smallest
    power of two whose work (``batch * cost`` seconds) is at least ``overhead / share``, at most
    ``max_batch``, and small enough that every worker gets two chunks or more."""
    batch = 1 << max(0, math.ceil(math.log2(max(overhead / (share * cost), 1))))
    batch = min(batch, max(1, -(-images // (2 * workers))))
    return int(max(1, min(batch, max_batch, images)))


def plan(costs, overhead, rate, images=50_000, machines=100, cores=2, share=SHARE, batch=None,
         task_bytes_in=0, task_bytes_out=0, input_bytes=0, result_bytes=0, model_bytes=0,
         storage_bandwidth=1e9, network_bandwidth=1.25e9, worker_factor=1.0):
    """The throughput model of a data-set run on ``machines`` x ``cores`` single-threaded workers.

    Parameters
    ----------
    costs : dict of str to float
        Seconds per input on one core, per method (each method is one run over the data set).
    overhead : float
        Seconds of per-task overhead on a worker (scheduling, transfer, bookkeeping).
    rate : float
        Tasks per second the scheduler sustains.
    batch : int, optional
        Inputs per task for every method (default: :func:`chunk_size` per method).
    task_bytes_in, task_bytes_out : int
        Bytes through the scheduler per task: to the worker (the task's arguments) and back.
    input_bytes, result_bytes : int
        Bytes per input read from and written to shared storage by the workers.
    model_bytes : int
        The pickled model, sent to every worker once (Dask's broadcast: one copy from the client, then
        worker to worker, doubling the holders each round).
    storage_bandwidth, network_bandwidth : float
        Bytes/s: the shared storage's aggregate bandwidth; one machine's network link.
    worker_factor : float
        How much longer the same work takes in a worker process than in one plain process (``costs``
        are the latter's).

    Returns
    -------
    dict
        ``workers``, per-method ``batch`` and ``tasks``, total ``tasks``, the ``seconds`` each resource
        needs (``compute``: the work plus the per-task overhead spread over the workers, plus the last
        task of each run; ``scheduler``: tasks / rate; ``storage``: bytes / storage bandwidth),
        ``startup`` (the model's broadcast), ``wall`` (the largest of the three plus the startup),
        ``limit`` (which of the three), ``ideal`` (the work alone, at ``costs``, over the workers), ``efficiency``
        (ideal / wall), ``overhead_share`` per method, the scheduler's load (``tasks_per_s_needed``
        against ``rate``) and the bytes through the scheduler and the storage.
    """
    workers = machines * cores
    batches, tasks, shares = {}, {}, {}
    for name, cost in costs.items():
        b = batch or chunk_size(cost, overhead, images, workers, share)
        batches[name], tasks[name] = b, -(-images // b)
        shares[name] = overhead / (overhead + b * cost)
    total_tasks = sum(tasks.values())
    work = images * sum(costs.values())  # core-seconds
    ideal = work / workers
    tail = worker_factor * sum(batches[m] * costs[m] for m in costs)  # each run ends with one task running
    seconds = {"compute": (worker_factor * work + total_tasks * overhead) / workers + tail,
               "scheduler": total_tasks / rate,
               "storage": images * len(costs) * (input_bytes + result_bytes) / storage_bandwidth}
    startup = model_bytes * math.ceil(math.log2(workers + 1)) / network_bandwidth
    limit = max(seconds, key=seconds.get)
    wall = seconds[limit] + startup
    return {"workers": workers, "batch": batches, "tasks_per_method": tasks, "tasks": total_tasks,
            "overhead_share": shares, "seconds": seconds, "startup": startup, "wall": wall, "limit": limit,
            "ideal": ideal, "efficiency": ideal / wall,
            "tasks_per_s_needed": total_tasks / seconds["compute"], "rate": rate,
            "scheduler_load": total_tasks / seconds["compute"] / rate,
            "scheduler_bytes": total_tasks * (task_bytes_in + task_bytes_out),
            "broadcast_bytes": model_bytes * workers,
            "storage_bytes": images * len(costs) * (input_bytes + result_bytes)}


# --------------------------------------------------------------------------- measurements

def _cluster(workers):
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           silence_logs=40, **parallel.cluster_options())
    return cluster, Client(cluster)


def task_overhead(client1, images, batch, repeat, tmp):
    """(a): seconds per task of a 1-worker cluster over the serial run, lenet5 float32 from a .npy file,
    the chunks written by whoever computes them; the results asserted equal bit for bit first."""
    net = zoo.lenet5(seed=0, dtype=np.float32).freeze()
    x = np.random.default_rng(0).random((images,) + net.input_shape).astype(np.float32)
    path = os.path.join(tmp, "lenet_x.npy")
    np.save(path, x)
    data = sources.NpySource(path)
    counter = iter(range(10 ** 6))

    def run(scheduler):
        out = os.path.join(tmp, f"out{next(counter)}")
        parallel.explain_dataset(net, data, composite=L.EpsilonPlus(), batch_size=batch, scheduler=scheduler,
                                 out=out, progress=False)
        return out

    serial = parallel.load(run(None))
    on_cluster = parallel.load(run(client1))
    assert np.array_equal(on_cluster, serial), "explain_dataset on a worker differs from the serial run"
    best = {"serial": np.inf, "cluster": np.inf}
    for _ in range(repeat):  # in turn, so that a shared machine's load hits both alike
        for mode, scheduler in (("serial", None), ("cluster", client1)):
            t = time.perf_counter()
            out = run(scheduler)
            best[mode] = min(best[mode], time.perf_counter() - t)
            shutil.rmtree(out)
    tasks = -(-images // batch)
    return {"images": images, "batch": batch, "tasks": tasks, "serial_s": best["serial"],
            "cluster_s": best["cluster"], "serial_ms_per_input": 1e3 * best["serial"] / images,
            "overhead_s": (best["cluster"] - best["serial"]) / tasks}


def _tiny(i):
    return i


def task_rate(client, tasks):
    """(b): tiny tasks per second through the scheduler, all submitted at once (the scheduler's own rate;
    explain_dataset keeps only a few per worker in flight, see the simulated run)."""
    client.gather(client.map(_tiny, range(min(tasks, 100)), pure=False))  # warm
    t = time.perf_counter()
    futures = client.map(_tiny, range(tasks), pure=False)
    values = client.gather(futures)
    seconds = time.perf_counter() - t
    assert values == list(range(tasks))
    del futures
    return tasks / seconds


def _task_args(job_key, model_key, source_key, start, stop, folder):
    """The arguments ``parallel._on_client`` submits with each task (futures travel as their keys)."""
    path = os.path.join(folder, f"chunk_{start:09d}_{stop:09d}.npy")
    return (parallel._task, (job_key, model_key, source_key, None, path, False, start, stop))


def task_bytes(net, source, sample_shape, batch, folder="/shared/ilsvrc2012-val/vgg16-epsilon_plus_flat"):
    """(c): bytes per task each way, and what goes to each worker once."""
    from dask.sizeof import sizeof
    keys = [f"{kind}-{'0' * 32}" for kind in ("Job", "Sequential", "NpySource")]  # scatter's key form
    args = _task_args(*keys, 49_999, 50_000, folder)
    written = parallel._Written((batch,) + tuple(sample_shape), "<f4")
    return {"to_worker": len(pickle.dumps(args, protocol=5)), "to_worker_sizeof": sizeof(args[1]),
            "back": len(pickle.dumps(written, protocol=5)),
            "back_without_out": int(np.prod((batch,) + tuple(sample_shape))) * 4,
            "model_once": len(pickle.dumps(net, protocol=5)), "source_once": len(pickle.dumps(source, protocol=5))}


def method_jobs(steps, low=0.0, high=1.0):
    """The five methods of the plan, as the jobs explain_dataset runs (``steps``: for IG and SmoothGrad)."""
    return {"LRP epsilon_plus_flat": parallel.Job(composite=L.EpsilonPlusFlat()),
            "LRP epsilon_gamma_box": parallel.Job(composite=L.EpsilonGammaBox(low=low, high=high)),
            "gradient_x_input": parallel.Job(method="gradient_x_input"),
            "integrated_gradients": parallel.Job(method="integrated_gradients", method_kwargs={"n": steps}),
            "smoothgrad": parallel.Job(method="smoothgrad", method_kwargs={"n": steps, "rng": 0})}


def method_costs(net, inputs, measure_steps, steps):
    """(d): seconds per input on one core (one BLAS thread), each job warmed up on one input first.
    IG and SmoothGrad are timed at ``measure_steps`` and extended to ``steps`` by one gradient x input
    pass per further step (each step is one more gradient of the batch)."""
    x = np.random.default_rng(1).random((inputs,) + net.input_shape).astype(np.float32)
    measured = {}
    with parallel._limit_blas():
        for name, job in method_jobs(measure_steps).items():
            job(net, x[:1], None)
            t = time.perf_counter()
            job(net, x, None)
            measured[name] = (time.perf_counter() - t) / inputs
    costs = dict(measured)
    for name in ("integrated_gradients", "smoothgrad"):
        costs[name] = measured[name] + (steps - measure_steps) * measured["gradient_x_input"]
    return measured, costs


def _timed(job, model, x, warm):
    with parallel._limit_blas():
        if warm:
            job(model, x[:1], None)  # compiles the kernels of the process
        t = time.perf_counter()
        job(model, x, None)
        return time.perf_counter() - t


def worker_factor(client1, net, inputs, repeat, name="gradient_x_input"):
    """(d'): the same job on the same inputs timed inside a worker process and in this one, in turn
    (so that a shared machine's load hits both alike), best of ``repeat`` each."""
    x = np.random.default_rng(1).random((inputs,) + net.input_shape).astype(np.float32)
    job = method_jobs(2)[name]
    m, j = client1.scatter([net, job], broadcast=True, hash=False)
    worker = here = np.inf
    for k in range(repeat):
        worker = min(worker, client1.submit(_timed, j, m, x, k == 0, pure=False).result())
        here = min(here, _timed(job, net, x, k == 0))
    return {"method": name, "inputs": inputs, "worker_s": worker, "here_s": here, "factor": worker / here}


# --------------------------------------------------------------------------- (e) the simulated run

def stand_in(job, model, source, target, path, limit, start, stop):
    """A task with ``parallel._task``'s arguments: sleeps ``job`` seconds per input and returns what a
    task that wrote its chunk returns, with its start (the client checks each against its chunk)."""
    time.sleep(job * (stop - start))
    return start, parallel._Written((stop - start,) + tuple(model), "<f4")


def simulate(client, tasks, seconds_per_task, sample_shape, folder):
    """Submit ``tasks`` stand-ins as ``parallel._on_client`` submits chunks (``parallel._in_turn``: a few per
    worker thread in flight, the next one as one finishes); the wall time from the first submit to the
    last result, every result checked."""
    job, model, source = client.scatter([seconds_per_task, tuple(sample_shape), folder], broadcast=True,
                                        hash=False)

    def submit(i, workers):
        hint = {} if workers is None else dict(workers=workers, allow_other_workers=True)
        return client.submit(stand_in, job, model, source, None, os.path.join(folder, f"chunk_{i:09d}_{i + 1:09d}.npy"),
                             False, i, i + 1, pure=False, **hint)
    t = time.perf_counter()
    done = set()
    for i, future in parallel._in_turn(client, submit, tasks, parallel._slots(client), {}):
        start, r = future.result()
        assert start == i and r.shape == (1,) + tuple(sample_shape) and r.dtype == "<f4", f"task {i} returned {r}"
        done.add(i)
    wall = time.perf_counter() - t
    assert done == set(range(tasks)), f"{tasks - len(done)} tasks gave no result"
    return wall


# --------------------------------------------------------------------------- the report

def _fmt_s(s):
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s" if s >= 0.1 else f"{1e3 * s:.1f} ms"


def _fmt_b(b):
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--machines", type=int, default=100)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores per machine (default: this one's)")
    p.add_argument("--images", type=int, default=50_000, help="inputs of the data set (ILSVRC2012-val: 50,000)")
    p.add_argument("--steps", type=int, default=20, help="integrated gradients' and SmoothGrad's steps in the plan")
    p.add_argument("--measure-steps", type=int, default=2, help="the steps they are timed at here")
    p.add_argument("--cost-inputs", type=int, default=2, help="VGG-16 inputs per timed call")
    p.add_argument("--overhead-images", type=int, default=4096)
    p.add_argument("--overhead-batch", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rate-tasks", type=int, default=4000, help="at most this many tiny tasks for (b)")
    p.add_argument("--sim-tasks", type=int, default=4000, help="at most this many tasks in the simulated run")
    p.add_argument("--sim-seconds", type=float, default=40.0, help="the simulated run's length of work, about")
    p.add_argument("--storage-gbps", type=float, default=1.0, help="shared storage's aggregate GB/s")
    p.add_argument("--network-gbps", type=float, default=1.25, help="one machine's network GB/s (10 Gbit/s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: lenet5 for (d), small counts")
    p.add_argument("--reuse", metavar="JSON", help="take (c) and (d) from an earlier run's --json (to scale up the "
                                                  "rest without timing VGG-16 again)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    try:
        import dask
        import distributed  # noqa: F401
    except ImportError:
        print("scale_plan: dask/distributed are not installed (pip install -e '.[dask]'); nothing to measure")
        return 0
    if args.quick:
        args.overhead_images, args.overhead_batch, args.repeat = 256, 32, 1
        args.rate_tasks, args.sim_tasks, args.sim_seconds = 300, 300, 1.0
    dask.config.set({"distributed.worker.daemon": False})
    local = os.cpu_count() or 1
    report = {"machine": {"cores": local, "load_average": os.getloadavg()}, "args": vars(args),
              "kernel_threads": os.environ["LRPNUMPY_THREADS"]}
    tmp = tempfile.mkdtemp(prefix="lrpnumpy-scale-plan-")
    try:
        # (d) first, in this process alone: the costs decide the plan's chunk size and task count
        name = "lenet5" if args.quick else "vgg16"
        if args.reuse:
            with open(args.reuse) as f:
                earlier = json.load(f)
            report["costs"], report["bytes"] = earlier["costs"], earlier["bytes"]
            report["costs"]["reused_from"] = args.reuse
            costs = report["costs"]["s_per_input"]
            sample_shape = tuple(report["costs"].get("sample_shape") or zoo.MODELS[report["costs"]["model"]]().input_shape)
        else:
            t = time.perf_counter()
            net = zoo.MODELS[name](seed=0, dtype=np.float32).freeze()
            build = time.perf_counter() - t
            sample_shape = net.input_shape
            np.save(os.path.join(tmp, "one.npy"), np.zeros((1,) + sample_shape, np.float32))
            source = sources.NpySource(os.path.join(tmp, "one.npy"))
            report["bytes"] = task_bytes(net, source, sample_shape, 1)  # (c), the model as built
            measured, costs = method_costs(net, args.cost_inputs, args.measure_steps, args.steps)
            report["bytes"]["model_after_use"] = len(pickle.dumps(net, protocol=5))  # with the rules' caches
            report["costs"] = {"model": name, "build_s": build, "measured_s_per_input": measured,
                               "s_per_input": costs, "steps": args.steps, "measure_steps": args.measure_steps,
                               "sample_shape": list(sample_shape)}
        input_bytes = result_bytes = int(np.prod(sample_shape)) * 4
        with contextlib.ExitStack() as stack:
            cluster1, client1 = _cluster(1)
            stack.enter_context(cluster1)
            stack.enter_context(client1)
            if not args.reuse:
                net.clear()  # the model as built goes to the worker, not this process's cached weights
                report["costs"]["worker"] = worker_factor(client1, net, 1, args.repeat)
                del net
            report["overhead"] = task_overhead(client1, args.overhead_images, args.overhead_batch, args.repeat, tmp)
            stack.close()
        overhead = max(report["overhead"]["overhead_s"], 1e-4)
        # a worker cannot run the same one-thread work faster than this process: below 1 is the load's noise
        factor = max(1.0, report["costs"].get("worker", {}).get("factor", 1.0))
        with contextlib.ExitStack() as stack:
            cluster, client = _cluster(local)
            stack.enter_context(cluster)
            stack.enter_context(client)
            first = plan(costs, overhead, rate=1.0, images=args.images, machines=args.machines, cores=args.cores,
                         worker_factor=factor)
            rate_tasks = min(first["tasks"], args.rate_tasks)
            report["rate"] = {"tasks": rate_tasks, "workers": local, "tasks_per_s": task_rate(client, rate_tasks)}
            b = report["bytes"]
            model = plan(costs, overhead, report["rate"]["tasks_per_s"], images=args.images, machines=args.machines,
                         cores=args.cores, task_bytes_in=b["to_worker"], task_bytes_out=b["back"],
                         input_bytes=input_bytes, result_bytes=result_bytes, model_bytes=b["model_once"],
                         storage_bandwidth=args.storage_gbps * 1e9, network_bandwidth=args.network_gbps * 1e9,
                         worker_factor=factor)
            report["plan"] = model
            # (e): the plan's task count (capped), each task's duration scaled so that the run's work is
            # about --sim-seconds on this machine's workers (and never shorter than the real tasks would
            # make the scheduler's load: the plan's tasks/s per worker)
            sim_tasks = min(model["tasks"], args.sim_tasks)
            per_task = args.sim_seconds * local / sim_tasks
            sim_pred = plan({"stand-in": per_task}, overhead, report["rate"]["tasks_per_s"], images=sim_tasks,
                            machines=1, cores=local, batch=1)
            wall = simulate(client, sim_tasks, per_task, sample_shape, os.path.join(tmp, "sim"))
            measured_overhead = wall * local / sim_tasks - per_task
            report["simulation"] = {
                "tasks": sim_tasks, "of_plan_tasks": model["tasks"], "workers": local, "task_s": per_task,
                "tasks_per_s": sim_tasks / wall, "plan_tasks_per_s_per_worker": model["tasks_per_s_needed"] / model[
                    "workers"], "sim_tasks_per_s_per_worker": sim_tasks / wall / local,
                "wall_s": wall, "predicted_wall_s": sim_pred["wall"], "predicted_limit": sim_pred["limit"],
                "deviation": wall / sim_pred["wall"] - 1, "overhead_s": measured_overhead,
                "predicted_overhead_s": overhead}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def print_report(r):
    a, c, b, rate, m, s = r["overhead"], r["costs"], r["bytes"], r["rate"], r["plan"], r["simulation"]
    args = r["args"]
    print(f"this machine: {r['machine']['cores']} cores, load average {r['machine']['load_average'][0]:.2f} "
          f"at the start; LRPNUMPY_THREADS={r['kernel_threads']} here and in the workers, one BLAS thread")
    print(f"(a) per-task overhead: lenet5 float32, {a['images']} inputs from a .npy (NpySource), {a['tasks']} tasks of "
          f"{a['batch']}, chunks written by the workers; equal bit for bit to serial")
    print(f"    serial {a['serial_s']:.3f} s, 1-worker cluster {a['cluster_s']:.3f} s  ->  "
          f"{1e3 * a['overhead_s']:.1f} ms per task{' (within the noise: 0.1 ms in the model)' if a['overhead_s'] < 1e-4 else ''}")
    print(f"(b) scheduler task rate: {rate['tasks']} tiny tasks on {rate['workers']} workers: "
          f"{rate['tasks_per_s']:.0f} tasks/s")
    print(f"(c) bytes per task: {b['to_worker']} B to the worker (task arguments pickled; dask sizeof "
          f"{b['to_worker_sizeof']} B), {b['back']} B back (shape + dtype; {_fmt_b(b['back_without_out'])} "
          f"without out=)")
    after = f" ({_fmt_b(b['model_after_use'])} once it has explained: the rules' cached weights travel too)" \
        if "model_after_use" in b else ""
    print(f"    once per worker: the model {_fmt_b(b['model_once'])} as built{after}, the source {b['source_once']} B")
    print(f"(d) {c['model']} float32{' (reused from ' + c['reused_from'] + ')' if 'reused_from' in c else ''}, seconds per input on one core (IG and SmoothGrad at {c['steps']} steps, "
          f"timed at {c['measure_steps']}):")
    for name, cost in c["s_per_input"].items():
        print(f"    {name:<24} {cost:8.3f} s   (timed: {c['measured_s_per_input'][name]:.3f} s)")
    if "worker" in c:
        w = c["worker"]
        print(f"    on a worker process: {w['method']} of {w['inputs']} inputs {w['worker_s']:.2f} s against "
              f"{w['here_s']:.2f} s in this process: x{w['factor']:.2f} (the plan's worker factor, at least 1)")
    print(f"plan: {args['images']} inputs x {len(c['s_per_input'])} methods on {args['machines']} machines x "
          f"{args['cores']} cores = {m['workers']} workers (storage {args['storage_gbps']} GB/s aggregate, "
          f"network {args['network_gbps']} GB/s per machine)")
    print(f"    {'method':<24} {'batch':>6} {'tasks':>8} {'overhead share':>15}")
    for name in m["batch"]:
        print(f"    {name:<24} {m['batch'][name]:>6} {m['tasks_per_method'][name]:>8} "
              f"{100 * m['overhead_share'][name]:>14.2f}%")
    print(f"    tasks {m['tasks']}; scheduler load {m['tasks_per_s_needed']:.1f} tasks/s needed of {m['rate']:.0f} "
          f"measured ({100 * m['scheduler_load']:.1f} %)")
    print(f"    through the scheduler {_fmt_b(m['scheduler_bytes'])}; model broadcast {_fmt_b(m['broadcast_bytes'])} "
          f"(startup {_fmt_s(m['startup'])}); storage {_fmt_b(m['storage_bytes'])}")
    print("    needs: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in m["seconds"].items()))
    print(f"    wall {_fmt_s(m['wall'])} ({m['limit']}-bound), ideal {_fmt_s(m['ideal'])}, efficiency "
          f"{100 * m['efficiency']:.1f} %")
    print(f"(e) simulated run: {s['tasks']} tasks ({s['of_plan_tasks']} in the plan) of {1e3 * s['task_s']:.1f} ms "
          f"on {s['workers']} workers, every result checked")
    print(f"    scheduler load {s['sim_tasks_per_s_per_worker']:.1f} tasks/s per worker (the plan: "
          f"{s['plan_tasks_per_s_per_worker']:.3f})")
    print(f"    measured wall {s['wall_s']:.2f} s, predicted {s['predicted_wall_s']:.2f} s ({s['predicted_limit']}-"
          f"bound): deviation {100 * s['deviation']:+.1f} %; per-task overhead {1e3 * s['overhead_s']:.1f} ms "
          f"(model: {1e3 * s['predicted_overhead_s']:.1f} ms)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
