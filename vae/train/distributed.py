"""Data-parallel training over the processes torchrun starts: torch.distributed and DDP, nothing home-made.

Every rank runs the same loop on the same seeded streams (epoch permutation, noise) and takes its
share of each batch; DDP averages the gradients, so the ranks' weights stay identical. Rank 0 alone
writes files.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0, which writes the run directory and prints."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a batch: every size-th one from rank (shares differ by at most one row)."""
        return batch[self.rank::self.size]

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on a machine: cuda means cuda:LOCAL_RANK under torchrun."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.size > 1 else device

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any (a collective: all ranks must call it)."""
        return flag if self.size == 1 else bool(all_reduce(torch.tensor(int(flag), device=device), "max"))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def world_from_environment() -> World:
    """The process group torchrun describes in WORLD_SIZE, RANK and LOCAL_RANK (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(world: World, device: torch.device):
    """Join the torchrun process group for the block (NCCL on GPUs, gloo on CPUs); no-op for one process."""
    if world.size == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce t in place over the ranks (sum, min or max) when there is more than one."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t


def batch_mean(rows: torch.Tensor) -> torch.Tensor:
    """The mean over dim 0 of a batch whose rows (b, D) are spread over the ranks -> (D,)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return rows.mean(0)
    sums = all_reduce(torch.cat([rows.sum(0), rows.new_tensor([len(rows)])]))
    return sums[:-1] / sums[-1]


def dist_size() -> int:
    """The number of training processes (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1
