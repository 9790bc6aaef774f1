"""Process-group helpers shared by the trainer: one code path for 1 CPU process, local ranks
(torchrun / deepspeed launcher) and many GPU nodes."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def setup() -> tuple[int, int, torch.device]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU); returns
    (rank, world_size, device). A plain `python -m recipes.train` is a world of one."""
    import deepspeed

    if "RANK" not in os.environ:  # single process without a launcher
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    on_gpu = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    if on_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    else:
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(sums: dict[str, float], counts: dict[str, float], device: torch.device) -> dict[str, float]:
    """Per-key mean over every rank's micro-batches; a key need not be present on every rank (a
    micro-batch without captions has no text loss)."""
    keys = set(sums)
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(keys))
        keys = set().union(*gathered)
    keys = sorted(keys)
    t = torch.tensor([[sums.get(k, 0.0), counts.get(k, 0.0)] for k in keys], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return {k: (s / c if c else float("nan")) for k, (s, c) in zip(keys, t.tolist(), strict=True)}


def all_sum(value: float, device: torch.device) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def any_over_ranks(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on some rank (each rank must call it at the same point)."""
    return all_sum(1.0 if flag else 0.0, device) > 0


def decided_on_rank0(decide):
    """`decide()` run once, on rank 0, its result (or its ValueError) handed to every rank: a decision
    that reads shared files (which checkpoint to resume) is made once, and ranks cannot disagree."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return decide()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", decide())
        except ValueError as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def finish(code: int = 0, wait: bool = True) -> None:
    """End a worker. gloo threads of DeepSpeed's cloned process group can outlive
    destroy_process_group() and abort the process after all work is done ("terminate called without
    an active exception"); leaving through os._exit after a final barrier avoids that. Without
    `wait` (an error on this rank alone) the launcher ends the other ranks."""
    if wait:
        barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
