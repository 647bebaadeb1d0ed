"""One job split over the processes of ``accelerate launch`` (GPUs or nodes), on Accelerate's
:class:`~accelerate.PartialState`: the main process plans and broadcasts the plan, every process works on
its part, and the parts come back to every process in process order. Run without a launcher, it is one
process doing all of it (no process group is created).

:func:`embed_batches` is the one place where embedding work is dealt out: evaluation (every image and
caption of a split) and the search index (the images of a folder) both call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .errors import InputError


class ShardFailed(InputError):
    """Another process of the job stopped on an input error (its message is this one)."""


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) on this machine."""
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def default_device() -> torch.device:
    """This machine's accelerator (a GPU) when it has one, else the CPU: where a command that is not launched
    by Accelerate runs its model."""
    if not has_accelerator():
        return torch.device("cpu")
    return torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else torch.device("cuda")


def gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` of this process -> ``(P * B, ...)``: every process's, in process order (each process
    gives the same ``B``, as Accelerate's even batches do); the tensor itself without a process group.

    Gradients flow back to each process's own rows, summed over the processes, so that DDP's average of the
    parameters' gradients is the gradient of a loss computed on the gathered batch, whatever the number of
    processes (the HarMA release's own gather passed back only the local part, a gradient ``P`` times
    smaller, which Adam all but ignores)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


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
        return cls(0, 1, default_device())

    @classmethod
    def of(cls, accelerator) -> Shards:
        """This process's place in the job of an ``Accelerator`` (or ``PartialState``)."""
        return cls(accelerator.process_index, accelerator.num_processes, accelerator.device)

    @classmethod
    def from_launcher(cls) -> Shards:
        """This process's place as ``accelerate launch`` set it (one process when run without it)."""
        from accelerate import PartialState

        # cpu=True on a GPU-less machine: `accelerate launch --multi_gpu` then joins a gloo group
        return cls.of(PartialState(cpu=not has_accelerator()))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """End the job: every process waits for the others, then leaves the process group (as
        ``Accelerator.end_training`` does), so that none exits while another still talks to it (gloo's
        threads then abort the early one: "terminate called without an active exception")."""
        if self.count == 1:
            return
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        state.destroy_process_group()

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


def as_given(batch):
    return batch


class LoadedBatches(torch.utils.data.Dataset):
    """Batch ``i`` of ``batches``, loaded by ``load`` (in a worker when the loader has some)."""

    def __init__(self, batches: Sequence, load: Callable[[Any], Any]):
        self.batches, self.load = batches, load

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.load(self.batches[index])


def embed_batches(
    batches: Sequence[Sequence],
    embed: Callable[[Any], torch.Tensor],
    shards: Shards,
    load: Callable[[Sequence], Any] | None = None,
    batches_per_round: int | None = None,
    num_workers: int = 0,
    desc: str = "",
    leave: bool = True,
) -> Iterator[list[torch.Tensor]]:
    """Embed ``batches`` over the processes of ``shards``; yields, on every process, each round's embeddings.

    A round deals ``batches_per_round`` consecutive batches to each process in process order (``None``: a
    single round in which each process takes a contiguous ``1/count`` of the batches). Each process loads
    its batches (``load``, in ``num_workers`` data-loader workers when there are some, so it must then be
    picklable; default: the batch as it is), embeds each with ``embed`` into ``(len(batch), D)`` on its
    device, and hands them over as float32 on the CPU once per round; the parts are gathered in process
    order. So every yielded list of ``(n_i, D)`` tensors follows the batch order, and each row is computed
    from the same batch as in a one-process run. An :class:`InputError` on any process stops all of them
    (the others raise :class:`ShardFailed` with its message). A progress bar counts this process's items
    (on the main process only). Nothing here draws from torch's global random stream, so evaluating during
    training leaves the training's dropout and shuffling as they would be without it.
    """
    from tqdm.auto import tqdm

    per_round = batches_per_round or max(1, math.ceil(len(batches) / shards.count))
    rounds = [
        batches[start + shards.rank * per_round : start + (shards.rank + 1) * per_round]
        for start in range(0, len(batches), per_round * shards.count)
    ]
    total = sum(len(batch) for mine in rounds for batch in mine)
    with tqdm(total=total, desc=desc, disable=not (total and shards.is_main), leave=leave) as progress:
        for mine in rounds:
            part, error = [], None
            try:
                for batch, embedded in embedded_locally(mine, embed, shards, load, num_workers):
                    part.append(embedded)
                    progress.update(len(batch))
                part = [torch.cat(part).float().cpu()] if part else []
            except InputError as failure:
                error, part = failure, []
            gathered = shards.gather(part, error)  # the other processes stop with its message
            if error is not None:
                raise error
            yield gathered


def embedded_locally(
    batches: Sequence[Sequence],
    embed: Callable[[Any], torch.Tensor],
    shards: Shards,
    load: Callable[[Sequence], Any] | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[Sequence, torch.Tensor]]:
    """``(batch, embeddings)`` for each of ``batches``, in this process alone: each loaded (``load``, in
    ``num_workers`` data-loader workers when there are some) and embedded with ``embed`` on its device."""
    loader = torch.utils.data.DataLoader(
        LoadedBatches(batches, load or as_given),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=shards.device.type == "cuda",
        generator=torch.Generator(),  # its seed draw must not take from the training's stream
    )
    for batch, inputs in zip(batches, loader, strict=True):
        yield batch, embed(inputs)
