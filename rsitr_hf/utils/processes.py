"""Work spread over processes of this machine, results in order."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def in_processes(
    function: Callable[[Item], Result], items: Sequence[Item], workers: int, initializer=None
) -> Iterator[Result]:
    """``function(item)`` for each item, in order, over ``workers`` fresh (spawned) processes that each run
    ``initializer`` first; in this process when ``workers`` is 1 or there is one item. ``function`` and the
    items must pickle."""
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=context, initializer=initializer) as pool:
        yield from pool.map(function, items)
