"""One way to run a job over items in several processes on one machine (preparation, evaluation).

Linux workers are forked (the parent's modules are loaded already, as for DataLoader workers); elsewhere they are
spawned. Each worker runs one torch/OpenMP thread: the processes are the parallelism, and a forked OpenMP pool
misbehaves. Results come back in the order of the items, with the warnings each job raised repeated in the parent in
that order, and the error raised is that of the first failing item in that order: as with one process.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable


def process_map(job: Callable[[Any], Any], items: Iterable[Any], workers: int,
                done: Callable[[Any], None] | None = None) -> list[Any]:
    """`[job(item) for item in items]` in `workers` processes; `done(result)` is called on each, in order, as
    results arrive. `job` and the items must pickle (a module-level function, or a functools.partial of one).
    With one worker (or one item) the jobs run here, one after the other, with no pool to start."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        results = []
        for item in items:
            results.append(job(item))
            if done is not None:
                done(results[-1])
        return results
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context(method),
                               initializer=_one_thread)
    results = []
    try:
        futures = [pool.submit(_recording, job, item) for item in items]
        for future in futures:
            result, caught = future.result()
            for message, category, filename, lineno in caught:
                warnings.warn_explicit(message, category, filename, lineno)
            if done is not None:
                done(result)
            results.append(result)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # items already running finish (and keep what they wrote)
        raise
    pool.shutdown(wait=True)
    return results


def _one_thread() -> None:
    """One torch (and OpenMP) thread per worker. torch is not imported for this (preprocessing needs none): where
    it is not loaded yet, the environment makes a later import start with one thread."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _recording(job: Callable[[Any], Any], item: Any):
    """`job(item)` and the warnings it raised, as (message, category, file, line) the parent can repeat."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = job(item)
    return result, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
