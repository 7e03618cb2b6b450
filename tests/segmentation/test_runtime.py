"""Thread budget: a process never takes more intra-op threads than its share of the cores."""
from __future__ import annotations

import os

import torch

from segmentation.runtime import limit_threads, thread_budget


def test_thread_budget_is_the_cores_shared_by_the_processes_on_this_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert thread_budget(1) == 2 and thread_budget(2) == 1 and thread_budget(3) == 1  # never 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes on this node
    assert thread_budget() == 1


def test_limit_threads_lowers_but_never_raises(monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    try:
        torch.set_num_threads(2)
        assert limit_threads(2) == 1 and torch.get_num_threads() == 1
        assert limit_threads(1) == 1  # an explicit 1 (OMP_NUM_THREADS=1) stays
    finally:
        torch.set_num_threads(previous)
