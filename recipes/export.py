"""Export a consolidated model folder (`save_pretrained` format, safetensors) from any trainer
checkpoint, ZeRO-3 included:

    python -m recipes.export runs/x/checkpoints/step0000100 runs/x/model [--ema]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hart_core.checkpoint import load_checked, safe_torch_load

from .checkpoints import deepspeed_globals, verify, weights_only_loads
from .config import TrainConfig
from .tasks import make_task


def consolidated_state(checkpoint: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a DeepSpeed checkpoint folder (one tag)."""
    if zero_stage == 0:
        # plain data-parallel: rank 0's model states hold the whole module (tensors and plain types only)
        states = safe_torch_load(checkpoint / "mp_rank_00_model_states.pt", deepspeed_globals())
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with weights_only_loads():  # zero_to_fp32 unpickles with weights_only=False
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name))


def ema_state(checkpoint: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """The EMA weights: whole tensors (ZeRO 0-2) or the ranks' partitions stitched back (ZeRO-3)."""
    from safetensors.torch import load_file

    shards = [load_file(str(p)) for p in sorted(checkpoint.glob("ema_rank*.safetensors"))]
    if not shards:
        raise FileNotFoundError(f"{checkpoint}: no EMA weights (was ema_decay > 0?)")
    if zero_stage < 3:
        return shards[0]
    out = {}
    for name in (k for k in shards[0] if not k.endswith("::shape")):
        shape = torch.Size(shards[0][name + "::shape"].tolist())
        flat = torch.cat([s[name].flatten() for s in shards])  # rank r holds the r-th slice, zero-padded
        out[name] = flat[: shape.numel()].view(shape)
    return out


def export(checkpoint: str | Path, out: str | Path, ema: bool = False) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    run = checkpoint.parent.parent
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete trainer checkpoint (no trainer_state.json)")
    verify(checkpoint)  # complete, undamaged, and no pickle in it would run code
    trainer_state = json.loads(state_file.read_text())
    cfg = TrainConfig(**json.loads((run / "recipe.json").read_text()))
    task = make_task(cfg, run / "artifacts")
    model = task.rebuild()
    state = consolidated_state(checkpoint, trainer_state["zero_stage"])
    if ema:
        state.update(ema_state(checkpoint, trainer_state["zero_stage"]))
    buffers = dict(model.named_buffers())
    for k, v in model.state_dict().items():  # a buffer DeepSpeed did not record keeps its built value
        if k not in state and k in buffers:
            state[k] = v
    load_checked(model, state, str(checkpoint))
    task.export(model.eval(), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/x/checkpoints/step0000100, or the "
                                           "checkpoints/ folder itself for its latest")
    parser.add_argument("out", help="output model folder")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")
    args = parser.parse_args(argv)
    ckpt = Path(args.checkpoint)
    if (ckpt / "latest").is_file():
        ckpt = ckpt / (ckpt / "latest").read_text().strip()
    try:
        print(export(ckpt, args.out, ema=args.ema))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
