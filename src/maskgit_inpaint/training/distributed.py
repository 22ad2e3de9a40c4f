"""One process, or one of N under `torchrun --nproc_per_node N` (DistributedDataParallel).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them this is a plain
single-process run. NCCL on CUDA, gloo on CPU. Rank 0 alone logs, evaluates and
writes files; every rank trains on its share of each global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maskgit_inpaint import runtime


@dataclass(frozen=True)
class Processes:
    rank: int  # this process among all of them
    world: int  # how many train together
    local_rank: int  # this process on its machine (picks its GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0


def backend(dev: torch.device) -> str:
    """The process group backend for `dev`: NCCL between GPUs (gloo has no fast GPU collectives), gloo between CPUs."""
    return "nccl" if dev.type == "cuda" else "gloo"


def start(seed: int) -> tuple[Processes, torch.device]:
    """Join the process group when launched by torchrun; seed and place this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    procs = Processes(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    dev = runtime.setup(seed)
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", procs.local_rank)
            torch.cuda.set_device(dev)
        else:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            # Share the cores, don't oversubscribe them (torchrun's own OMP_NUM_THREADS=1 is a blanket default, not a share).
            torch.set_num_threads(max(1, runtime.cores() // local))
        dist.init_process_group(backend(dev))
    return procs, dev


def stop(procs: Processes) -> None:
    if procs.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
