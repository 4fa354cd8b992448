"""Explanations and evaluations over whole data sets, serially or on Dask.

The data are cut into chunks of ``batch_size`` inputs; each chunk is one task: explain it (and,
for :func:`evaluate_dataset`, perturb it).  Networks keep nothing of a call, so one network serves
every task: Dask's threaded scheduler shares it between threads, and a ``dask.distributed.Client``
gets it once per worker (``client.scatter(..., broadcast=True)``), not with every chunk.

With ``out=FOLDER`` every finished chunk is written there (``chunk_<start>_<stop>.npy``, written to a
temporary name and renamed, so a file that exists is complete); a run that stops (a crash, Ctrl-C,
a lost machine) and is started again computes only the chunks that are missing.  The result is
identical, bit for bit, to the serial run on the same kernel backend: each chunk is the same
computation wherever it runs.

Threads: every chunk runs with one BLAS thread, in every mode, the serial one included (set once
for the whole run with threadpoolctl, in this process; Dask's workers start with one): OpenBLAS's results depend, in the last bit, on how many threads share a product, and one
thread per chunk is what the workers use anyway while the chunks use the cores.
``dask.distributed`` starts its worker processes with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
and ``MKL_NUM_THREADS`` set to 1 (its ``distributed.nanny.pre-spawn-environ`` setting); lrpnumpy's
numba kernels are compiled serial.  Without threadpoolctl installed BLAS keeps its threads, and
results may differ from one mode to another by rounding (1e-16).
"""

import contextlib
import glob
import numbers
import os

import numpy as np

from .errors import MissingDependencyError, RuleParameterError, ShapeError
from .progress import bar


def _chunks(n, batch_size):
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise RuleParameterError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _targets(target, n):
    if target is None or np.ndim(target) == 0:
        return lambda start, stop: target
    t = np.asarray(target)
    if t.shape != (n,):
        raise ShapeError(f"target needs one class per input ({n}), got shape {t.shape}")
    return lambda start, stop: t[start:stop]


class Job:
    """What each task runs: explain a chunk (the keywords of :func:`lrpnumpy.explain`, or a method of
    the registry by name), and optionally score it with an evaluation metric.  Picklable."""

    def __init__(self, rule=None, composite=None, method=None, method_kwargs=None, metric=None, metric_kwargs=None):
        from . import methods as M
        if method is not None and (rule is not None or composite is not None):
            raise RuleParameterError("give method, or rule/composite (LRP), not both")
        if isinstance(method, str):
            M.get(method)  # an unknown name fails here, not on a worker
        elif method is not None and not callable(method):
            raise RuleParameterError(f"method must be a name of lrpnumpy.methods.REGISTRY or a function, got "
                                     f"{method!r}")
        for name, kw in (("method_kwargs", method_kwargs), ("metric_kwargs", metric_kwargs)):
            if kw is not None and not (isinstance(kw, dict) and all(isinstance(k, str) for k in kw)):
                raise RuleParameterError(f"{name} must be a dict of keyword arguments, got {kw!r}")
        if metric is not None and metric not in ("pixel_flipping", "region_perturbation", "selectivity"):
            raise RuleParameterError(f"metric must be pixel_flipping, region_perturbation or selectivity, got "
                                     f"{metric!r}")
        self.rule, self.composite, self.method = rule, composite, method
        self.method_kwargs, self.metric, self.metric_kwargs = dict(method_kwargs or {}), metric, dict(metric_kwargs
                                                                                                    or {})

    def explain(self, model, x, target):
        from . import methods as M
        from .explain import explain
        if self.method is None:
            return explain(model, x, target, rule=self.rule, composite=self.composite).relevance
        method = M.get(self.method) if isinstance(self.method, str) else self.method
        result = method(model, x, target, **self.method_kwargs)
        return getattr(result, "relevance", result)

    def __call__(self, model, x, target):
        relevance = self.explain(model, x, target)
        if self.metric is None:
            return relevance
        from . import evaluate
        r = getattr(evaluate, self.metric)(model, x, relevance, target, progress=False, **self.metric_kwargs)
        return r.curves


def _dask_bar():
    from dask.diagnostics import ProgressBar
    return ProgressBar()


def _limit_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _task(job, model, x, target, path, limit=False):
    """One chunk: compute it (unless it is on disk already: a retried task) and write it; ``limit``: one
    BLAS thread in this task (for a process of its own, where nothing else runs)."""
    if path is not None and os.path.exists(path):
        return np.load(path)
    with (_limit_blas() if limit else contextlib.nullcontext()):
        result = job(model, np.asarray(x), target)
    if path is not None:
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.partial.npy")
        np.save(tmp, result)
        os.replace(tmp, path)
    return result


def _chunk_path(out, start, stop):
    return None if out is None else os.path.join(out, f"chunk_{start:09d}_{stop:09d}.npy")


def run(job, model, data, target=None, batch_size=256, scheduler=None, out=None, progress=None):
    """Run ``job`` over ``data`` chunk by chunk (see :func:`explain_dataset`)."""
    from .explain import logit_network
    n = len(data)
    if n == 0:
        raise ShapeError("the data set is empty")
    logit_network(model, np.asarray(data[:1]))  # the model and the data's form, checked before any task
    chunks = _chunks(n, batch_size)
    targets = _targets(target, n)
    if out is not None:
        os.makedirs(out, exist_ok=True)
    paths = [_chunk_path(out, a, b) for a, b in chunks]
    todo = [i for i, p in enumerate(paths) if p is None or not os.path.exists(p)]
    results = {}
    if scheduler is None:
        with _limit_blas():  # (process-wide: set once here, not in each task, which threads would race on)
            results.update(_serial(job, model, data, chunks, todo, targets, paths, progress))
    else:
        results.update(_on_dask(job, model, data, chunks, todo, targets, paths, scheduler, progress))
    if out is not None:
        return out
    return np.concatenate([results[i] for i in range(len(chunks))])


def _serial(job, model, data, chunks, todo, targets, paths, progress):
    results, shown = {}, bar(len(todo), progress, unit="chunk")
    for i in todo:
        a, b = chunks[i]
        results[i] = _task(job, model, data[a:b], targets(a, b), paths[i])
        if shown is not None:
            shown.update(1)
    if shown is not None:
        shown.close()
    return results


def _on_dask(job, model, data, chunks, todo, targets, paths, scheduler, progress):
    try:
        import dask
    except ImportError as exc:
        raise MissingDependencyError("a scheduler needs Dask: pip install 'lrpnumpy[dask]'") from exc
    client = None
    if not isinstance(scheduler, str):
        client = scheduler
        if not hasattr(client, "scatter") or not hasattr(client, "submit"):
            raise RuleParameterError(f"scheduler must be 'threads', 'processes' or a dask.distributed.Client, got "
                                     f"{scheduler!r}")
    elif scheduler not in ("threads", "processes", "synchronous"):
        raise RuleParameterError(f"scheduler must be 'threads', 'processes' or a dask.distributed.Client, got "
                                 f"{scheduler!r}")
    if client is not None:
        from distributed import as_completed
        m, j = client.scatter([model, job], broadcast=True, hash=False)  # once per worker, not per chunk
        futures = {client.submit(_task, j, m, np.asarray(data[a:b]), targets(a, b), paths[i], pure=False): i
                   for i, (a, b) in ((i, chunks[i]) for i in todo)}
        shown = bar(len(futures), progress, unit="chunk")
        results = {}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if shown is not None:
                shown.update(1)
        if shown is not None:
            shown.close()
        return results
    m, j = dask.delayed(model, pure=True), dask.delayed(job, pure=True)
    tasks = [dask.delayed(_task)(j, m, np.asarray(data[a:b]), targets(a, b), paths[i], scheduler == "processes")
             for i, (a, b) in ((i, chunks[i]) for i in todo)]
    with _limit_blas(), (_dask_bar() if progress else contextlib.nullcontext()):
        values = dask.compute(*tasks, scheduler=scheduler)
    return dict(zip(todo, values))


def explain_dataset(model, data, target=None, rule=None, composite=None, method=None, batch_size=256,
                    scheduler=None, out=None, progress=None, **method_kwargs):
    """Explain every input of a data set, in chunks, serially or on Dask.

    Parameters
    ----------
    model : Sequential or Graph
    data : ndarray, numpy.memmap, or any object with ``len()`` and slicing that gives arrays
        The inputs (N, ...); a memory-mapped ``.npy`` (``np.load(path, mmap_mode="r")``) is read one
        chunk at a time.
    target : None, int or sequence of int
        As for :func:`lrpnumpy.explain` (one class per input for a sequence).
    rule, composite : optional
        LRP's, as for :func:`lrpnumpy.explain`.
    method : str or callable, optional
        Instead of LRP: a name of :data:`lrpnumpy.methods.REGISTRY` (e.g. ``"gradient"``) or a
        function ``method(model, x, target, **method_kwargs)``.
    batch_size : int
        Inputs per chunk (task).
    scheduler : None, "threads", "processes", "synchronous" or a dask.distributed.Client
        None runs serially in this process.
    out : str, optional
        A folder: each chunk's relevance is written there as it finishes, chunks already there are
        not computed again, and the folder's path is returned (:func:`load` reads it).
    progress : bool, optional
        A progress bar over the chunks (default: on a terminal).

    Returns
    -------
    ndarray or str
        The relevance of every input (the data's shape), or ``out``.
    """
    job = Job(rule, composite, method, method_kwargs)
    return run(job, model, data, target, batch_size, scheduler, out, progress)


def evaluate_dataset(model, data, metric="pixel_flipping", target=None, rule=None, composite=None, method=None,
                     batch_size=256, scheduler=None, out=None, progress=None, **metric_kwargs):
    """Explain and score every input of a data set with a perturbation metric, in chunks.

    Each chunk is explained (as by :func:`explain_dataset`) and perturbed (``metric``:
    ``"pixel_flipping"``, ``"region_perturbation"`` or ``"selectivity"`` of :mod:`lrpnumpy.evaluate`
    with ``metric_kwargs``); the per-sample curves are kept (or written to ``out``).

    Returns
    -------
    dict
        ``curves`` (N, L + 1), ``mean_curve`` and ``aopc`` (per sample, and ``mean_aopc``).
    """
    job = Job(rule, composite, method, None, metric, metric_kwargs)
    curves = run(job, model, data, target, batch_size, scheduler, out, progress)
    if out is not None:
        curves = load(out)
    aopc = (curves[:, :1] - curves).mean(axis=1)
    return {"curves": curves, "mean_curve": curves.mean(axis=0), "aopc": aopc, "mean_aopc": float(aopc.mean())}


def load(out):
    """The chunks in folder ``out`` (written by :func:`explain_dataset` or :func:`evaluate_dataset`),
    in order, as one array."""
    paths = sorted(glob.glob(os.path.join(out, "chunk_*_*.npy")))
    if not paths:
        raise ShapeError(f"{out}: no chunks (chunk_<start>_<stop>.npy) found")
    return np.concatenate([np.load(p) for p in paths])
