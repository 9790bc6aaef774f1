"""Trainer checkpoints (DeepSpeed folders `checkpoints/stepNNNNNNN/` + `latest`) that can be trusted.

- Nothing in them can run code: every `torch.load` while DeepSpeed reads a checkpoint (resume, and
  `zero_to_fp32` in the export) goes through `hart_core.checkpoint.safe_torch_load` (weights_only, plus
  the three plain DeepSpeed classes its optimizer states hold), never DeepSpeed's `weights_only=False`.
- Written completely before they count: every file is fsynced and listed with its SHA-256 in
  `checkpoint.sha256`, then `latest` moves (itself written, fsynced and renamed).
- A damaged one is skipped: `--resume` takes the newest checkpoint, from `latest` back, whose files
  match their checksums and load safely, and says which one it passed over and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from hart_core.checkpoint import CheckpointError, safe_torch_load, verify_checksums, write_checksums

log = logging.getLogger("recipes.checkpoints")
MANIFEST = "checkpoint.sha256"
TRAINER_STATE = "trainer_state.json"


def deepspeed_globals() -> list[type]:
    """The only non-tensor classes DeepSpeed pickles into its checkpoints (ZeRO 0-3, fp32 and bf16, as
    `torch.serialization.get_unsafe_globals_in_checkpoint` lists them): an enum, a dataclass and the loss
    scaler's state. Unpickling rebuilds them from their fields; none of them is ever called."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler]


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside: `torch.load` (which DeepSpeed calls with weights_only=False) is `safe_torch_load`, so a
    checkpoint file carrying a pickled payload is refused (CheckpointError) instead of executed."""
    allowed = deepspeed_globals()
    original = torch.load

    def forced(f, map_location=None, *args, mmap=None, **kwargs):  # weights_only and pickle_module ignored
        return safe_torch_load(f, allowed, mmap=bool(mmap), map_location=map_location)

    torch.load = forced
    try:
        yield
    finally:
        torch.load = original


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(tag_dir: Path) -> None:
    """Make a written checkpoint durable and verifiable: fsync its files, list them in checkpoint.sha256."""
    names = sorted(p.name for p in tag_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    for name in names:
        _fsync(tag_dir / name)
    _fsync(write_checksums(tag_dir, names, MANIFEST))
    _fsync(tag_dir)


def write_latest(ckpt_root: Path, tag: str) -> None:
    tmp = ckpt_root / ".latest.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_root / "latest")
    _fsync(ckpt_root)


def save(engine, ema_state: dict | None, step: int, rank: int, world: int, zero_stage: int, keep: int,
         ckpt_root: Path, loader_state: dict) -> None:
    """DeepSpeed checkpoint under tag step{N}; `latest` is switched only after every rank has written
    everything and rank 0 has sealed it, so a crash mid-write leaves the previous checkpoint as the latest
    usable one. Older checkpoints beyond `keep` are removed."""
    from safetensors.torch import save_file

    from . import distributed as D

    tag = f"step{step:07d}"
    if rank == 0 and (ckpt_root / tag).exists():  # left by a run that crashed or was passed over on resume
        shutil.rmtree(ckpt_root / tag)
    D.barrier()
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state={"step": step, "data": loader_state},
                           save_latest=False)
    if ema_state is not None:
        save_file(ema_state, str(ckpt_root / tag / f"ema_rank{rank:03d}.safetensors"))
    D.barrier()
    if rank == 0:
        (ckpt_root / tag / TRAINER_STATE).write_text(json.dumps(
            {"step": step, "zero_stage": zero_stage, "world_size": world, "ema": ema_state is not None}))
        seal(ckpt_root / tag)
        write_latest(ckpt_root, tag)
        tags = sorted(p.name for p in ckpt_root.glob("step*") if p.is_dir())
        for old in tags[: tags.index(tag) + 1][:-keep]:  # never a newer (partial) one: it is not ours to judge
            shutil.rmtree(ckpt_root / old, ignore_errors=True)
    D.barrier()


def verify(tag_dir: Path) -> None:
    """Raise CheckpointError unless the checkpoint is complete, matches its checksums (when it has them:
    older ones do not) and every pickle in it loads without running code."""
    if not (tag_dir / TRAINER_STATE).is_file():
        raise CheckpointError(f"{tag_dir}: incomplete (no {TRAINER_STATE})")
    verify_checksums(tag_dir, MANIFEST)
    allowed = deepspeed_globals()
    for pt in sorted(tag_dir.glob("*.pt")):
        safe_torch_load(pt, allowed, mmap=True)  # mapped: the pickle is judged without reading every tensor
    for ema in sorted(tag_dir.glob("ema_rank*.safetensors")):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(ema), "pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{ema}: not a readable safetensors file ({e})") from e


def resume_tag(ckpt_root: Path) -> str:
    """The checkpoint to resume from: `latest` if it verifies, else the newest older one that does (each
    one passed over is logged with the reason). CheckpointError when there is none."""
    latest = ckpt_root / "latest"
    if not latest.is_file():
        raise CheckpointError(f"--resume: no checkpoint to resume from in {ckpt_root} (no 'latest'); "
                              "run without --resume to start afresh")
    named = latest.read_text().strip()
    older = sorted((p.name for p in ckpt_root.glob("step*") if p.is_dir() and p.name < named), reverse=True)
    problems = []
    for tag in [named, *older]:
        try:
            verify(ckpt_root / tag)
        except CheckpointError as e:
            problems.append(str(e))
            log.warning("not resuming from %s: %s", tag, e)
            continue
        if tag != named:
            log.warning("resuming from %s instead of the damaged latest %s", tag, named)
        return tag
    raise CheckpointError(f"--resume: no usable checkpoint in {ckpt_root}: " + "; ".join(problems))
