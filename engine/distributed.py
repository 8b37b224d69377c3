"""Data-parallel training with PyTorch's own ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node K -m engine train ...`` (or ``srun torchrun --nnodes N ...``) sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`init_from_env` joins the process group
(NCCL on CUDA, gloo on CPU). Every rank holds the whole model, reads its own shard of the
minibatches and averages its gradients with the others (:meth:`Dist.all_reduce_grads`, one
flat all-reduce per step) before the optimiser step, so the ranks stay identical. A single
process without torchrun gets :data:`SINGLE` and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce_grads(self, params) -> None:
        """Average the gradients of ``params`` over the ranks (one flat buffer)."""
        if not self.active:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        o = 0
        for g in grads:
            g.copy_(flat[o:o + g.numel()].view_as(g))
            o += g.numel()

    def all_reduce_sum(self, t):
        """Sum a tensor over the ranks, in place; returns it."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def broadcast_module(self, module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in module.state_dict().values():
            dist.broadcast(t, 0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


SINGLE = Dist()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment; :data:`SINGLE` when there
    is none (or a world of one). ``device`` ("cpu" or "cuda") picks gloo or NCCL; on CUDA each
    rank takes the GPU of its ``LOCAL_RANK``."""
    world = env_world_size()
    if world <= 1:
        return SINGLE
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        import datetime

        # generous: a rank may wait while rank 0 reads a shard of a large file
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))
    return Dist(rank, world, local, backend)


def shutdown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["SINGLE", "Dist", "env_world_size", "init_from_env", "shutdown"]
