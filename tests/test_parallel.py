"""Data-set scale: chunks on Dask's schedulers and a local cluster give the serial result, bit for bit;
a killed worker and an interrupted run change nothing."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import parallel as P
from lrpnumpy.errors import LRPError

dask = pytest.importorskip("dask", reason="dask is not installed (the 'dask' extra)")


@pytest.fixture(scope="module")
def lenet():
    """The shipped CNN (a LeNet trained on Fashion-MNIST) and 512 shipped test images."""
    net = L.io.load(os.path.join(L.datasets.DATA_DIR, "fashion_cnn_maxpool.npz"), dtype=np.float64)
    return net, L.datasets.sample(np.float64).images[:512]


@pytest.fixture(scope="module")
def serial(lenet):
    net, x = lenet
    return P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=32)


def test_serial_chunks_equal_one_explanation(lenet, serial):
    net, x = lenet
    whole = L.explain(net, x[:64], composite=L.EpsilonPlus()).relevance
    np.testing.assert_allclose(serial[:64], whole, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_local_schedulers_give_the_serial_result(lenet, serial, scheduler):
    net, x = lenet
    out = P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=32, scheduler=scheduler)
    np.testing.assert_array_equal(out, serial)


def test_process_scheduler_and_methods_by_name(lenet, tmp_path):
    """The process pool needs importable code: run it in a child script."""
    import subprocess
    import sys
    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, lrpnumpy as L\n"
        "from lrpnumpy import parallel as P\n"
        "if __name__ == '__main__':\n"
        "    net = L.zoo.lenet5(seed=0)\n"
        "    x = np.random.default_rng(0).random((96, 1, 28, 28))\n"
        "    a = P.explain_dataset(net, x, method='gradient', batch_size=32, scheduler='processes')\n"
        "    b = P.explain_dataset(net, x, method='gradient', batch_size=32)\n"
        "    print(np.array_equal(a, b))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-1:] == ["True"], out.stderr[-2000:]


def test_interrupted_run_resumes_with_only_the_missing_chunks(lenet, serial, tmp_path):
    net, x = lenet
    folder = str(tmp_path / "store")
    assert P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=32, out=folder) == folder
    chunks = sorted(n for n in os.listdir(folder) if n != P.MANIFEST)
    assert os.path.exists(os.path.join(folder, P.MANIFEST))
    assert len(chunks) == 16 and chunks[0] == "chunk_000000000_000000032.npy"
    for name in chunks[5:8]:  # as if the run had stopped before these
        os.remove(os.path.join(folder, name))
    kept = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in chunks if name not in chunks[5:8]}
    calls = []
    original = P.Job.explain

    def counting(self, model, v, target):
        calls.append(len(v))
        return original(self, model, v, target)
    P.Job.explain = counting
    try:
        P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=32, out=folder)
    finally:
        P.Job.explain = original
    assert calls == [32, 32, 32]  # three chunks computed, the other thirteen read
    assert all(os.stat(os.path.join(folder, n)).st_mtime_ns == t for n, t in kept.items())
    np.testing.assert_array_equal(P.load(folder), serial)


def test_local_cluster_with_a_worker_killed_midway(lenet, serial, tmp_path):
    """Two worker processes on loopback explain 512 inputs; one is killed once a few chunks are done;
    Dask reruns its tasks and the result is the serial one."""
    distributed = pytest.importorskip("distributed")
    net, x = lenet
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        out = P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=32, scheduler=client)
        np.testing.assert_array_equal(out, serial)
        folder = str(tmp_path / "killed")
        result = {}
        job = threading.Thread(target=lambda: result.setdefault("out", P.explain_dataset(
            net, x, composite=L.EpsilonPlus(), batch_size=16, scheduler=client, out=folder)))
        job.start()
        deadline = time.time() + 60
        while time.time() < deadline and (not os.path.isdir(folder) or len(os.listdir(folder)) < 4):
            time.sleep(0.02)
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)  # one worker dies in the middle of the run
        job.join(timeout=240)
        assert not job.is_alive() and result["out"] == folder
        np.testing.assert_array_equal(P.load(folder), serial)


def test_evaluate_dataset_and_errors(lenet):
    net, x = lenet
    x = x[:96]
    res = P.evaluate_dataset(net, x, "pixel_flipping", composite=L.EpsilonPlus(), batch_size=32,
                             features_per_step=56, scheduler="threads")
    e = L.explain(net, x, composite=L.EpsilonPlus())
    whole = L.evaluate.pixel_flipping(net, x, e.relevance, features_per_step=56)
    np.testing.assert_allclose(res["curves"], whole.curves, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res["aopc"], whole.aopc(), rtol=1e-9, atol=1e-12)
    for bad in (dict(method="lime"), dict(method="gradient", composite=L.EpsilonPlus()), dict(batch_size=0),
                dict(scheduler="cluster"), dict(target=[1, 2])):
        with pytest.raises(LRPError):
            P.explain_dataset(net, x, **bad)
    with pytest.raises(LRPError):
        P.evaluate_dataset(net, x, "accuracy")


def test_a_chunk_that_kills_its_worker_every_time_is_a_worker_error():
    """Red team: distributed's KilledWorker reached the user; now an lrpnumpy error naming the chunk."""
    distributed = pytest.importorskip("distributed")
    from lrpnumpy.errors import WorkerError
    net = L.io.load(os.path.join(L.datasets.DATA_DIR, "fashion_mlp.npz"), dtype=np.float64)
    x = L.datasets.sample(np.float64).images[:8]
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with pytest.raises(WorkerError, match=r"chunk_00000000[04]_00000000[48]\.npy \(inputs [04]:[48]\): "
                                              r"KilledWorker"):
            P.explain_dataset(net, x, method=lambda model, v, t=None: os._exit(1), batch_size=4, scheduler=client)


def test_a_scheduler_that_goes_away_is_a_worker_error(tmp_path):
    distributed = pytest.importorskip("distributed")
    from lrpnumpy.errors import WorkerError
    net = L.io.load(os.path.join(L.datasets.DATA_DIR, "fashion_mlp.npz"), dtype=np.float64)
    x = L.datasets.sample(np.float64).images[:40]

    def slow(model, v, t=None):
        time.sleep(0.2)
        return L.methods.gradient(model, v, t).relevance
    folder, result = tmp_path / "store", {}
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        def run():
            try:
                P.explain_dataset(net, x, method=slow, batch_size=4, scheduler=client, out=str(folder))
            except Exception as exc:  # noqa: BLE001 (the type is what the test checks)
                result["error"] = exc
        job = threading.Thread(target=run)
        job.start()
        deadline = time.time() + 60
        while time.time() < deadline and (not folder.is_dir() or len(os.listdir(folder)) < 3):
            time.sleep(0.02)
        cluster.close()  # the scheduler and its worker go away in the middle of the run
        job.join(timeout=60)
        assert not job.is_alive()
    finally:
        client.close()
    assert isinstance(result.get("error"), WorkerError), result
    assert "(inputs " in str(result["error"]) and "Cancelled" in str(result["error"])


def test_a_process_pool_that_breaks_is_a_worker_error(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "run.py"
    script.write_text(
        "import os, numpy as np, lrpnumpy as L\n"
        "from lrpnumpy import parallel as P\n"
        "def die(model, x, target=None):\n"
        "    os._exit(1)\n"
        "if __name__ == '__main__':\n"
        "    x = np.random.default_rng(0).random((8, 1, 28, 28))\n"
        "    try:\n"
        "        P.explain_dataset(L.zoo.lenet5(seed=0), x, method=die, batch_size=4, scheduler='processes')\n"
        "    except L.errors.WorkerError as exc:\n"
        "        print('WorkerError', exc)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("WorkerError Dask's processes scheduler lost a worker while running chunks "
                                 "chunk_000000000_000000004.npy"), out.stderr[-2000:]


@pytest.mark.parametrize("scheduler", [None, "threads"])
def test_the_progress_bar_counts_inputs_with_throughput_and_time_left(lenet, capsys, tmp_path, scheduler):
    pytest.importorskip("tqdm")
    net, x = lenet
    P.explain_dataset(net, x[:48], method="gradient", batch_size=16, scheduler=scheduler, progress=True)
    shown = capsys.readouterr().err
    assert " 0/48 [" in shown and "input/s" in shown and " left]" in shown, shown[-500:]
    folder = str(tmp_path / "store")
    P.explain_dataset(net, x[:48], method="gradient", batch_size=16, out=folder, progress=False)
    os.remove(os.path.join(folder, "chunk_000000016_000000032.npy"))
    capsys.readouterr()
    P.explain_dataset(net, x[:48], method="gradient", batch_size=16, scheduler=scheduler, out=folder, progress=True)
    shown = capsys.readouterr().err
    assert " 67%|" in shown and "32/48 [" in shown and " 0/48 [" not in shown, shown[-500:]  # a resumed
    # run starts at the chunks it has


def test_no_dashboard_unless_asked_and_no_port_clash():
    """Red team: dashboard_address=None still served HTTP on 8787, and a second cluster warned that the
    port was taken; now a free port, the dashboard off unless asked."""
    import urllib.error
    import urllib.request
    import warnings
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "Port 8787 is already in use"
        with distributed.LocalCluster(n_workers=1, processes=False, **P.cluster_options()) as a, \
                distributed.LocalCluster(n_workers=1, processes=False, **P.cluster_options()) as b, \
                distributed.LocalCluster(n_workers=1, processes=False, **P.cluster_options(True)) as c:
            assert a.scheduler.http_server.port != 8787 and b.scheduler.http_server.port != 8787
            link = f"http://127.0.0.1:{a.scheduler.http_server.port}/status"
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(link, timeout=20)
            link = f"http://127.0.0.1:{c.scheduler.http_server.port}/status"  # (without bokeh: a page saying
            assert urllib.request.urlopen(link, timeout=20).status == 200    # to install it)


def test_cli_dashboard_is_opt_in(tmp_path, capsys):
    pytest.importorskip("distributed")
    from lrpnumpy.__main__ import main
    np.save(tmp_path / "x.npy", L.datasets.sample(np.float64).images[:8])
    model = os.path.join(L.datasets.DATA_DIR, "fashion_mlp.npz")
    assert main(["explain-dataset", model, str(tmp_path / "x.npy"), "--quiet", "--dashboard"]) == 2
    assert "--dashboard" in capsys.readouterr().err
    assert main(["explain-dataset", model, str(tmp_path / "x.npy"), "--quiet", "--workers", "1", "--batch-size",
                 "4", "--dashboard"]) == 0
    assert "Dask dashboard: http://" in capsys.readouterr().err
    assert main(["explain-dataset", model, str(tmp_path / "x.npy"), "--quiet", "--workers", "1"]) == 0
    assert "dashboard" not in capsys.readouterr().err


def test_workers_get_the_network_frozen_once_and_their_share_of_the_cores(lenet, tmp_path):
    """A frozen network reached a worker writeable (pickling drops NumPy's read-only flag), so nothing it
    derives was cached and every chunk recomputed it; each worker ran as many kernel threads as the
    machine has cores, side by side with the others.  Now: frozen there too, one copy per worker, not
    per task, kernel threads = cores / task threads on the machine, malloc tuned (glibc)."""
    distributed = pytest.importorskip("distributed")
    net = lenet[0].copy().freeze()
    x = lenet[1][:64]

    def probe(model, v, target=None):
        from lrpnumpy import parallel
        from lrpnumpy.kernels._common import immutable, threads
        frozen = all(immutable(getattr(layer, p)) for layer in model for p in layer.params
                     if getattr(layer, p) is not None)
        facts = [frozen, threads(), id(model) % 2 ** 40, parallel._TUNED.get("done", False), os.getpid()]
        return np.tile(np.array(facts, np.float64), (len(v), 1))

    def slow_probe(model, v, target=None):  # a chunk of a real run keeps its worker busy for a while
        end = time.perf_counter() + 0.25
        while time.perf_counter() < end:
            pass
        return probe(model, v, target)

    cores = len(os.sched_getaffinity(0))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  **P.cluster_options()) as cluster, distributed.Client(cluster) as client:
        out = P.explain_dataset(net, x, method=probe, batch_size=4, scheduler=client)
        assert P.load(P.explain_dataset(net, x, method=probe, batch_size=4, scheduler=client,
                                        out=str(tmp_path / "o"))).shape == out.shape
        # 4 chunks on 2 idle workers: 2 each (left to itself the scheduler ran all 4 on one worker)
        for _ in range(2):  # the second time, the scheduler knows how long a chunk takes
            pids = P.explain_dataset(net, x, method=slow_probe, batch_size=16, scheduler=client)[::16, 4]
        assert sorted(np.unique(pids, return_counts=True)[1]) == [2, 2], pids
    assert out[:, 0].all(), "the network reached a worker with writeable weights"
    assert set(out[:, 1]) == {max(1, cores // 2)}
    assert len(set(out[:, 2])) <= 2, "the network was unpickled more than once per worker"
    import platform
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert out[:, 3].all()
    # in the processes scheduler too; an unfrozen network stays writeable there
    out = P.explain_dataset(net, x[:16], method=probe, batch_size=8, scheduler="processes")
    assert out[:, 0].all()
    assert not P.explain_dataset(lenet[0].copy(), x[:16], method=probe, batch_size=8, scheduler="processes")[:, 0].any()


def test_worker_threads_share_the_cores_of_each_machine():
    class Client:
        def run(self, fn, on_error=None):
            return {"a": (8, None), "b": (8, None), "c": (8, 3), "d": (2, None), "e": RuntimeError("gone")}

        def scheduler_info(self, n_workers=-1):
            return {"workers": {"a": {"host": "h1", "nthreads": 2}, "b": {"host": "h1", "nthreads": 1},
                                "c": {"host": "h1", "nthreads": 1}, "d": {"host": "h2", "nthreads": 4},
                                "e": {"host": "h3", "nthreads": 1}}}
    # h1: 8 cores for 4 task threads; c keeps its LRPNUMPY_THREADS; d: fewer cores than threads; e: no answer
    assert P._worker_threads(Client()) == {"a": 2, "b": 2, "d": 1}
    # chunks are placed on the task threads in turn (a hint: a worker that dies or lags gives them up)
    assert P._slots(Client()) == ["a", "a", "b", "c", "d", "d", "d", "d", "e"]

    class Silent:
        def scheduler_info(self, n_workers=-1):
            raise OSError("gone")
    assert P._slots(Silent()) == []


def test_kernel_threads_change_the_cores_not_the_numbers(lenet):
    from lrpnumpy.kernels import _common
    net, x = lenet
    seen = {}
    with _common.kernel_threads(1):
        one = L.explain(net, x[:64], composite=L.EpsilonPlus()).relevance
        seen["inside"] = _common.threads()
        other = threading.Thread(target=lambda: seen.setdefault("other", _common.threads()))
        other.start()
        other.join()
    with _common.kernel_threads(3):
        three = L.explain(net, x[:64], composite=L.EpsilonPlus()).relevance
    assert seen == {"inside": 1, "other": _common.THREADS} and _common.threads() == _common.THREADS
    np.testing.assert_array_equal(one, three)


@pytest.mark.skipif(not (os.uname().sysname == "Linux" and __import__("platform").libc_ver()[0] == "glibc"),
                    reason="glibc's malloc only")
def test_malloc_tuned_where_dask_pins_the_trim_threshold(tmp_path):
    """Dask's workers start with MALLOC_TRIM_THRESHOLD_=65536, which stops glibc raising its mmap
    threshold: every array above 128 KiB was fresh pages, zeroed by the kernel on first touch."""
    import subprocess
    import sys
    code = """if True:
        import os, resource, numpy as np, lrpnumpy as L
        from lrpnumpy import parallel as P
        net = L.io.load(os.path.join(L.datasets.DATA_DIR, "fashion_cnn_maxpool.npz"), dtype=np.float64).freeze()
        x = L.datasets.sample(np.float64).images[:128]
        def faults():
            L.explain(net, x, composite=L.EpsilonPlus())
            f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            L.explain(net, x, composite=L.EpsilonPlus())
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f
        import sys
        if sys.argv[1] == "tuned":  # as a worker's first task does
            assert P._tune_malloc() and P._tune_malloc()
        print(faults())
    """
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536", LRPNUMPY_THREADS="1")
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    before, after = (int(subprocess.run([sys.executable, "-c", code, arg], env=env, check=True, capture_output=True,
                                        text=True).stdout) for arg in ("plain", "tuned"))
    assert before > 1000 and after < before / 10, (before, after)
    env.pop("MALLOC_TRIM_THRESHOLD_")  # without Dask's setting, nothing is changed
    assert subprocess.run([sys.executable, "-c", "from lrpnumpy import parallel as P; assert not P._tune_malloc()"],
                          env=env).returncode == 0


def test_a_network_travels_without_its_derived_weights():
    """Sent to workers (pickled), a frozen network that has explained something is as small as a fresh one:
    the rules' cached weights stay behind (they match nothing after unpickling)."""
    import pickle
    net = L.zoo.lenet5(seed=0).freeze()
    fresh = len(pickle.dumps(net))
    L.explain(net, np.random.default_rng(0).random((2,) + net.input_shape), composite=L.EpsilonGammaBox(low=0, high=1))
    assert any("_derived" in layer.__dict__ for layer in net.layers)  # the cache is there in this process
    sent = pickle.loads(pickle.dumps(net))
    assert len(pickle.dumps(net)) == fresh
    assert not any("_derived" in layer.__dict__ for layer in sent.layers)
    x = np.random.default_rng(1).random((3,) + net.input_shape)
    assert np.array_equal(L.explain(sent, x).relevance, L.explain(net, x).relevance)


def test_a_task_in_this_process_keeps_the_callers_kernel_threads():
    """Only a worker's share replaces the kernel threads: a serial run inside ``kernel_threads(1)`` stays on
    one thread (a task used to reset it to all cores, and "serial, 1 core" in benchmarks/scale.py ran on 2)."""
    from lrpnumpy.kernels._common import kernel_threads, threads
    seen = []

    def job(model, x, target):
        seen.append(threads())
        return np.zeros(len(x))
    with kernel_threads(1):
        P._task(job, None, np.zeros((3, 2)), None, None)
    with kernel_threads(3):
        P._task(job, None, np.zeros((3, 2)), None, None)
    assert seen == [1, 3]


def test_a_client_gets_a_few_chunks_per_worker_at_a_time(lenet, serial, monkeypatch):
    """A run of many chunks keeps at most IN_FLIGHT_PER_SLOT per worker thread submitted (250,000 tasks
    submitted at once lost a client's connection to its scheduler); every chunk still comes back, and
    the result is the serial one bit for bit."""
    distributed = pytest.importorskip("distributed")
    net, x = lenet
    in_flight, turn = [], P._in_turn

    def watched(client, submit, count, slots, futures):
        for k, future in turn(client, submit, count, slots, futures):
            in_flight.append(len(futures) + 1)  # those still out, and this one
            yield k, future
    monkeypatch.setattr(P, "_in_turn", watched)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) \
            as cluster, distributed.Client(cluster) as client:
        got = P.explain_dataset(net, x, composite=L.EpsilonPlus(), batch_size=8, scheduler=client)
    assert got.tobytes() == serial.tobytes()
    assert len(in_flight) == 64 and max(in_flight) <= 2 * P.IN_FLIGHT_PER_SLOT
    assert in_flight[0] == 2 * P.IN_FLIGHT_PER_SLOT  # the window was full while chunks remained


@pytest.mark.skipif(not (os.uname().sysname == "Linux" and __import__("platform").libc_ver()[0] == "glibc"),
                    reason="glibc's malloc only")
def test_tune_malloc_keeps_large_arrays_off_fresh_pages():
    """Above 32 MB glibc gives every array fresh pages, whatever it has freed (a ViT-B/16 explanation at
    batch 16 has many such arrays); after tune_malloc() a freed 64 MB array's memory is used again."""
    import subprocess
    import sys
    code = """if True:
        import ctypes, resource, sys, numpy as np
        from lrpnumpy import parallel as P
        ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 kB pages, a fault each (huge pages: 165 in all)
        if sys.argv[1] == "tuned":
            assert P.tune_malloc()
        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                np.ones(8 << 20)  # 64 MB, freed at once
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        faults()
        print(faults())
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    plain, tuned = (int(subprocess.run([sys.executable, "-c", code, arg], env=env, check=True, capture_output=True,
                                       text=True).stdout) for arg in ("plain", "tuned"))
    assert plain > 1000 and tuned < 100, (plain, tuned)
    for bad in (0, -1, 2 ** 31, 1.5, True, "1"):
        with pytest.raises(LRPError, match="tune_malloc"):
            P.tune_malloc(mmap_bytes=bad)
