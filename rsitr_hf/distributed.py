"""One job split over the processes of ``accelerate launch`` (GPUs or nodes), on Accelerate's
:class:`~accelerate.PartialState`: the main process plans and broadcasts the plan, every process works on
its part, and the parts come back to every process in process order. Run without a launcher, it is one
process doing all of it (no process group is created)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from .errors import InputError

Item = TypeVar("Item")


class ShardFailed(InputError):
    """Another process of the job stopped on an input error (its message is this one)."""


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) on this machine."""
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


class Shards:
    """This process's place in a job: ``rank`` of ``count`` processes, on ``device``.

    Collective calls (:meth:`from_main`, :meth:`gather`) must be made by every process in the same order;
    an input error on any process is passed to the others, so that none waits for the others forever.
    """

    def __init__(self, rank: int, count: int, device: torch.device):
        self.rank, self.count, self.device = rank, count, device

    @classmethod
    def single(cls) -> Shards:
        """The whole job in this process, on its GPU when it has one (no Accelerate state is created)."""
        return cls(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    @classmethod
    def from_launcher(cls) -> Shards:
        """This process's place as ``accelerate launch`` set it (one process when run without it)."""
        from accelerate import PartialState

        # cpu=True on a GPU-less machine: `accelerate launch --multi_gpu` then joins a gloo group
        state = PartialState(cpu=not has_accelerator())
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def from_main(self, value: Any = None, error: BaseException | None = None) -> Any:
        """``value`` as the main process has it, on every process. The main process passes ``error``
        instead when it cannot go on (and then raises it): the others raise :class:`ShardFailed`."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        message = [(value, None if error is None else str(error))]
        broadcast_object_list(message, from_process=0)
        ((value, failure),) = message
        if failure is not None and not self.is_main:
            raise ShardFailed(failure)
        return value

    def my_part(self, items: Sequence[Item]) -> Sequence[Item]:
        """This process's items of a round of ``count`` items (one each; the last round may be short)."""
        return items[self.rank : self.rank + 1]

    def gather(self, part: list[Any], error: BaseException | None = None) -> list[Any]:
        """Every process's ``part``, concatenated in process order, on every process. A process that met an
        input error passes it as ``error`` (and then raises it): the others raise :class:`ShardFailed`."""
        if self.count == 1:
            return part
        from accelerate.utils import gather_object

        gathered = gather_object([(part, None if error is None else str(error))])
        failure = next((message for _, message in gathered if message is not None), None)
        if failure is not None and error is None:
            raise ShardFailed(failure)
        return [item for items, _ in gathered for item in items]
