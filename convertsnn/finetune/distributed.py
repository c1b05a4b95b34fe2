"""Multi-process data parallelism: ``torchrun --nproc_per_node N -m convertsnn finetune ...``.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`distributed_context` then starts
a process group (NCCL on GPUs, gloo on CPU), gives every process its GPU, and the training loop
wraps the model in DistributedDataParallel. Each rank trains on its shard of every global batch
(``batch_size / world_size`` images, DistributedSampler order), DDP averages the gradients, so
a run matches a single-process run with the same global batch. Without torchrun everything
here is a no-op (world size 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from convertsnn.errors import ConvertSNNError


@dataclass
class DistContext:
    """This process's place in the run: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False  # a process group runs (always under torchrun, even for 1 process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when distributed, else unchanged."""
        if not self.distributed:
            return model
        device_ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def epoch_order(self, size: int, epoch: int, seed: int) -> list[int]:
        """This rank's sample indices for ``epoch`` (DistributedSampler: shuffled by seed+epoch,
        padded to a multiple of the world size, every world_size-th index)."""
        sampler = DistributedSampler(
            range(size), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def shard(self, size: int) -> list[int]:
        """This rank's share of ``range(size)`` for evaluation (every world_size-th index)."""
        return list(range(self.rank, size, self.world_size))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """``obj`` from every rank, in rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


@contextmanager
def distributed_context(device: str = "auto") -> Iterator[DistContext]:
    """The process's :class:`DistContext`; starts (and ends) a process group under torchrun.

    Under torchrun a process group is started also for one process, so that
    ``torchrun --nproc_per_node 1`` runs the same NCCL (or gloo) path as N processes. A process
    group that the caller started already is used as it is and left running.
    """
    from convertsnn.cli.options import resolve_device  # the cli package imports this module

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and "LOCAL_RANK" not in os.environ:
        yield DistContext(device=resolve_device(device))
        return
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        raise ConvertSNNError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK are not; start multi-process runs with torchrun"
        ) from None
    target = resolve_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    try:
        yield DistContext(rank, world_size, target, distributed=True)
        if started:  # no rank tears down while another still talks to it (gloo aborts then)
            dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()
