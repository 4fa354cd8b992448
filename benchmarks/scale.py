"""Data-set scale on this machine: serial, Dask threads, and 1 and 2 Dask worker processes side by side.

    python benchmarks/scale.py [--model lenet5] [--images 4096] [--batch-size N] [--in-memory] [--out]
                               [--repeat 3] [--json OUT]

lenet5 (float32) over ``--images`` random inputs stored in a ``.npy`` file that every mode reads chunk
by chunk (a worker reads its own chunks: a task carries the file's path and a range, never the data;
``--in-memory``: an array in memory instead, sent once to each worker), for two jobs: LRP
(EpsilonPlus) and ``evaluate_dataset`` (pixel flipping of the EpsilonPlus relevance, 16 steps).
The batch size is chosen as ``parallel.choose_batch_size`` chooses it for a cluster of 2 workers (a
chunk long enough that the per-task overhead stays under 10 % of its time), unless ``--batch-size``
is given; every mode uses the same one.  ``--out``: every mode writes its chunks to a folder (the
workers write them; only shapes travel back).

Cores: a batch's samples are shared among kernel threads (``lrpnumpy.kernels._common``), by default
as many as the process's cores; on a Dask cluster each worker takes its share of its machine's cores
(cores / task threads of the workers there; ``LRPNUMPY_THREADS`` in a worker's environment
overrides it).  So the modes are timed at two core counts:

* one core: serial with one kernel thread against one worker process with one kernel thread
  (``LRPNUMPY_THREADS=1`` in its environment): the per-task overhead of a worker, at equal cores;
  and two workers (one core each, their share) against that one worker: how the cluster scales;
* all cores: serial (this process, 2 threads on 2 cores) against one worker process that has the
  machine to itself (its share: all the cores), and two workers against serial: whether the
  cluster beats one plain process.

Targets (issue 31): one worker at most 1.25x serial (at one core, and at all cores), two workers at
least 1.8x one worker (one core each against one core).  What the machine itself allows is timed too:
two plain processes (no Dask), each serial on one core over half of the inputs, started together
(their results, written to files, are checked bit for bit like the others'): their speed-up over the
serial one-core run is the ceiling for two workers' speed-up over one.

Every mode's result is first asserted equal, bit for bit, to the serial one; then each is timed
(best of ``--repeat``, the modes taking turns; the clusters are started and warmed up before
timing).  Printed: seconds, inputs/s and CPU seconds per mode (this process, whose threads include
a LocalCluster's scheduler, plus the workers: what the mode costs whatever else runs on the
machine), the ratios, the per-task overhead on a worker
((1 worker - serial) / tasks, at one core) and the round trip of an empty task on the cluster.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

import lrpnumpy as L
from lrpnumpy import parallel, sources, zoo
from lrpnumpy.kernels import _common


def cpu_seconds():
    """CPU seconds of this process so far (its threads included: a LocalCluster's scheduler runs here)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed_cpu(fn, client):
    """Wall seconds of ``fn()`` and the CPU seconds it took, here and on ``client``'s workers."""
    before = {} if client is None else client.run(cpu_seconds)
    c, t = cpu_seconds(), time.perf_counter()
    fn()
    wall, here = time.perf_counter() - t, cpu_seconds() - c
    after = {} if client is None else client.run(cpu_seconds)
    return wall, here + sum(after[w] - before.get(w, 0.0) for w in after)


def empty_task_seconds(client, tasks=200):
    client.gather(client.map(abs, range(20), pure=False))
    t = time.perf_counter()
    client.gather(client.map(abs, range(tasks), pure=False))
    return (time.perf_counter() - t) / tasks


def make_job(name, net_name, steps=16):
    """The two jobs, by name: (Job, the dataset function, its keywords)."""
    if name == "lrp":
        return parallel.Job(composite=L.EpsilonPlus()), parallel.explain_dataset, dict(composite=L.EpsilonPlus())
    return (parallel.Job(composite=L.EpsilonPlus(), metric="pixel_flipping", metric_kwargs=dict(steps=steps)),
            lambda *a, **k: parallel.evaluate_dataset(*a, **k)["curves"],
            dict(composite=L.EpsilonPlus(), metric="pixel_flipping", steps=steps))


def child(args):
    """A plain process (no Dask) running one job serially on one kernel thread over inputs start:stop of
    the .npy file: warmed up, it prints "ready"; then for each line "go" on stdin it runs, writes the
    result to ``out`` and prints its wall and CPU seconds."""
    job_name, model, path, start, stop, batch, out = args
    net = zoo.MODELS[model](seed=0, dtype=np.float32).freeze()
    data = sources.NpySource(path)
    _, fn, kw = make_job(job_name, model)
    x = data.read(int(start), int(stop))
    with _common.kernel_threads(1):
        fn(net, x[:int(batch)], batch_size=int(batch), progress=False, **kw)
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            c, t = cpu_seconds(), time.perf_counter()
            result = fn(net, x, batch_size=int(batch), progress=False, **kw)
            wall, cpu = time.perf_counter() - t, cpu_seconds() - c
            np.save(out, result)
            print(f"{wall} {cpu}", flush=True)
    return 0


#: This process's environment before any cluster starts: a Dask nanny sets its workers' variables in
#: it too (``MALLOC_TRIM_THRESHOLD_=65536``, which made glibc's malloc give the plain processes fresh
#: pages for every large array: 1.2-1.5x their time).
CLEAN_ENVIRON = dict(os.environ)


class PlainProcesses:
    """Two plain processes, each serial on one core over half of the inputs, started together."""

    def __init__(self, job_name, model, path, n, batch, tmp):
        import subprocess
        half = n // 2
        self.outs = [os.path.join(tmp, f"plain{i}.npy") for i in range(2)]
        env = dict(CLEAN_ENVIRON, LRPNUMPY_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", job_name, model, path,
                                        str(a), str(b), str(batch), out],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                      for (a, b), out in zip(((0, half), (half, n)), self.outs)]
        for proc in self.procs:
            assert proc.stdout.readline().strip() == "ready", "a plain process did not start"

    def run(self):
        for proc in self.procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        walls, cpus = zip(*(map(float, proc.stdout.readline().split()) for proc in self.procs))
        self.last = max(walls), sum(cpus)
        return np.concatenate([np.load(out) for out in self.outs])

    def close(self):
        for proc in self.procs:
            proc.stdin.close()
            proc.wait()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet5", choices=sorted(zoo.MODELS))
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--in-memory", action="store_true")
    p.add_argument("--out", action="store_true")
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
    tmp = tempfile.mkdtemp(prefix="lrpnumpy-scale-")
    try:
        x = np.random.default_rng(0).random((args.images,) + net.input_shape).astype(np.float32)
        np.save(os.path.join(tmp, "x.npy"), x)
        data = x if args.in_memory else sources.NpySource(os.path.join(tmp, "x.npy"))
        jobs = {"LRP (EpsilonPlus)": ("lrp",) + make_job("lrp", args.model),
                "evaluate_dataset (pixel flipping)": ("pf",) + make_job("pf", args.model)}
        report = {"images": args.images, "data": "in memory" if args.in_memory else ".npy file (NpySource)",
                  "out": args.out, "jobs": {}}
        opts = dict(threads_per_worker=1, processes=True, host="127.0.0.1", silence_logs=40,
                    **parallel.cluster_options())
        with LocalCluster(n_workers=2, **opts) as cluster2, Client(cluster2) as client2, \
                LocalCluster(n_workers=1, **opts) as cluster1a, Client(cluster1a) as client1a, \
                LocalCluster(n_workers=1, env={"LRPNUMPY_THREADS": "1"}, **opts) as cluster1, \
                Client(cluster1) as client1:
            report["empty_task_ms"] = 1e3 * empty_task_seconds(client1)
            report["kernel_threads"] = {"serial": _common.THREADS,
                                        "1 worker (all cores)": list(parallel._worker_threads(client1a).values()),
                                        "1 worker (1 core)": [f[1] for f in client1.run(parallel._worker_facts).values()],
                                        "2 workers": list(parallel._worker_threads(client2).values())}
            for name, (job_name, job, fn, kw) in jobs.items():
                batch = args.batch_size or parallel.choose_batch_size(job, net, data, scheduler=client2)
                tasks = -(-args.images // batch)
                counter = iter(range(10 ** 6))

                def run(scheduler):
                    if isinstance(scheduler, PlainProcesses):
                        return scheduler.run()
                    extra = {}
                    if args.out:
                        extra = dict(out=os.path.join(tmp, f"out{next(counter)}"), overwrite=True)
                    threads = 1 if scheduler == "serial-1" else None
                    scheduler = None if scheduler == "serial-1" else scheduler
                    with _common.kernel_threads(threads):
                        out = fn(net, data, batch_size=batch, scheduler=scheduler, progress=False, **kw, **extra)
                    if args.out and not isinstance(out, np.ndarray):
                        out = parallel.load(out)
                    return out
                modes = [("serial, 1 core (this process)", "serial-1"), ("serial, all cores (this process)", None),
                         ("Dask threads, 2", "threads"),
                         ("Dask cluster, 1 worker process, 1 core", client1),
                         ("Dask cluster, 1 worker process, all cores", client1a),
                         ("Dask cluster, 2 worker processes", client2)]
                plain = PlainProcesses(job_name, args.model, os.path.join(tmp, "x.npy"), args.images, batch, tmp)
                modes.append(("2 plain processes, 1 core each (no Dask)", plain))
                reference = run(None)
                for mode, scheduler in modes:
                    if scheduler is not None and not isinstance(scheduler, (str, PlainProcesses)):
                        fn(net, x[:batch * 2], batch_size=batch, scheduler=scheduler, progress=False, **kw)  # warm
                    assert np.array_equal(run(scheduler), reference), f"{name}, {mode}: differs from the serial run"
                times, cpu = {mode: np.inf for mode, _ in modes}, {}
                for _ in range(args.repeat):  # the modes in turn, so that a shared machine's load hits each alike
                    for mode, scheduler in modes:
                        if isinstance(scheduler, PlainProcesses):
                            run(scheduler)
                            wall, used = scheduler.last
                        else:
                            wall, used = timed_cpu(lambda s=scheduler: run(s),
                                                   None if scheduler is None or isinstance(scheduler, str)
                                                   else scheduler)
                        if wall < times[mode]:
                            times[mode], cpu[mode] = wall, used
                plain.close()
                s1, s_all, _, t1, t1_all, t2, p2 = (times[m] for m, _ in modes)
                report["jobs"][name] = {
                    "two_plain_vs_serial": s1 / p2,
                    "batch_size": batch, "tasks": tasks, "seconds": times, "cpu_seconds": cpu,
                    "one_worker_vs_serial": t1 / s1, "one_worker_vs_serial_all_cores": t1_all / s_all,
                    "two_vs_one_worker": t1 / t2, "two_workers_vs_serial_all_cores": s_all / t2,
                    "overhead_per_task_ms": 1e3 * (t1 - s1) / tasks,
                    "serial_ms_per_task": 1e3 * s1 / tasks}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.model} float32, {args.images} inputs ({report['data']}{', chunks written by the workers' if args.out else ''}); "
          f"results equal bit for bit in every mode")
    print(f"  empty task round trip on the cluster: {report['empty_task_ms']:.2f} ms; kernel threads: "
          + ", ".join(f"{k} {v}" for k, v in report["kernel_threads"].items()))
    for name, r in report["jobs"].items():
        print(f"{name}: batch size {r['batch_size']} (chosen{' by --batch-size' if args.batch_size else ' automatically'}), "
              f"{r['tasks']} tasks of {r['serial_ms_per_task']:.1f} ms serially")
        for mode, t in r["seconds"].items():
            print(f"  {mode:<44} {t:7.3f} s   {args.images / t:8.0f} inputs/s   CPU {r['cpu_seconds'][mode]:7.3f} s")

        def met(ok):
            return "met" if ok else "NOT met"
        print(f"  1 worker / serial, 1 core each: {r['one_worker_vs_serial']:.2f}x (target <= 1.25x: "
              f"{met(r['one_worker_vs_serial'] <= 1.25)}); all cores: {r['one_worker_vs_serial_all_cores']:.2f}x "
              f"({met(r['one_worker_vs_serial_all_cores'] <= 1.25)})")
        print(f"  2 workers speed-up over 1 worker of 1 core: {r['two_vs_one_worker']:.2f}x (target >= 1.8x: "
              f"{met(r['two_vs_one_worker'] >= 1.8)}; this machine's ceiling, 2 plain processes over serial on "
              f"1 core: {r['two_plain_vs_serial']:.2f}x); over serial on all cores: "
              f"{r['two_workers_vs_serial_all_cores']:.2f}x; overhead per task on a worker: "
              f"{r['overhead_per_task_ms']:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
