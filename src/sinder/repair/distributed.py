"""Data-parallel repair: each rank trains on different images; ε gradients are summed over
ranks and divided by the number of images that had defects, so every rank takes the same step.
Rank 0 alone writes files. Works under ``torchrun`` (NCCL on CUDA, gloo on CPU) or inside an
already-initialised process group.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run (CUDA for NCCL)
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        buf = t.to(self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors from every rank, in rank order."""
        if not self.enabled:
            return t
        buf = t.to(self.device)
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return torch.cat(out).to(t.device)

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if not self.enabled:
            return t
        buf = t.to(self.device).contiguous()
        dist.broadcast(buf, src=src)
        return buf.to(t.device)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agree(self, ok: bool) -> bool:
        """True on every rank iff ``ok`` on every rank (so all ranks raise or none does)."""
        if not self.enabled:
            return ok
        flag = self.all_reduce_sum(torch.tensor([0.0 if ok else 1.0]))
        return bool(flag.item() == 0)


def current(device: torch.device | None = None) -> DistContext:
    """The context of an already-initialised process group, or a single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    backend = dist.get_backend()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    comm = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local, comm, owns_group=False)


def init_from_env(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return current()
    if dist.is_initialized():
        return current()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    ctx = current()
    ctx.owns_group = True
    log.info("rank %d/%d (%s)", ctx.rank, ctx.world_size, dist.get_backend())
    return ctx


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(ctx: DistContext, device: str) -> str:
    """The device string for this rank (``cuda:LOCAL_RANK`` under multi-GPU torchrun)."""
    if ctx.enabled and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return device
