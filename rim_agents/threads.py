"""How many CPU threads torch uses while a run trains or evaluates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch as th


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Use ``count`` torch threads inside the block, then restore the previous count.

    One thread is the fastest for the RIM on a CPU: its many small per-step operations gain
    nothing from a second thread and pay a thread wake-up each (docs/benchmarks.md). The
    thread count also changes the summation order, so a seeded run's results depend on it.

    :param count: threads, at least 1
    """
    previous = th.get_num_threads()
    th.set_num_threads(count)
    try:
        yield
    finally:
        th.set_num_threads(previous)
