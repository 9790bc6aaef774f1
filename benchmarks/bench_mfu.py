"""Training throughput and MFU (model FLOPs utilisation) of the unified recipe's model, in one process.

    python benchmarks/bench_mfu.py --model gpu --dtype bf16 --batch-size 8 --steps 20 --warmup 5 --json mfu.json
    python benchmarks/bench_mfu.py --model debug --device cpu --steps 4 --threads 1
    python benchmarks/bench_mfu.py --model gpu --meta           # parameter counts and FLOPs/sample, no memory

The model, the loss and the optimizer step are the trainer's (`recipes/train.py`, `task: unified`): the
recipe YAML (default `recipes/configs/unified_debug.yaml`) plus `key=value` overrides goes through
`recipes.config.load_config`, `UnifiedTask.prepare` / `build`, and each step calls `UnifiedTask.loss`
(split by task, the recipe's task mix and caption dropout, random draws from the trainer's per-step
generator), backward, gradient clipping, AdamW with the trainer's LR schedule. Models:

  * debug: the recipe's own tiny model (hidden 64, 2 layers; 16x16 images, ladder 1..4: 30 positions);
  * gpu: a Qwen2-shaped backbone of 0.68B non-embedding parameters, the per-layer shape of HART-0.7B's
    transformer: hidden 1536, 24 layers, 12 heads (12 KV heads), SwiGLU intermediate 4096 (3 x 1536 x 4096
    = HART's 2 x 1536 x 6144), text vocabulary 32000; HART's diffusion head (width 1024, depth 6) over a
    random HART hybrid tokenizer (V=4096, Cvae=32) written by this script with VAR's 512px ladder
    1,2,3,4,6,9,13,18,24,32: a 32x32 = 1024-token final grid, so a text-to-image row holds
    sum(n_k^2) = 2240 image positions (a caption/QA row reads the 1024-position complete latent).

Measured per step (wall clock, CUDA synchronised): forward + loss + backward + clipping + AdamW step,
including the host-side batch assembly inside `UnifiedTask.loss` (text encoding, row layout, masks).
NOT measured: data loading and decoding; image encoding by the codec (samples carry random tokens, as a
`token_cache` run does); DeepSpeed (ZeRO, its bf16 optimizer, communication); gradient accumulation
(one micro-batch = the whole batch per step); EMA; checkpoints. `--dtype bf16` does what DeepSpeed's
bf16 mode does (0.19: parameters cast, buffers such as the rotary inv_freq kept fp32): bf16 weights and
activations, fp32 master weights and AdamW states (copied each step); `amp`: fp32 weights, bf16 autocast.

Model FLOPs per step (PaLM appendix B convention; 6 = 2 forward + 4 backward per weight and row),
summed over the step's forward passes, each parameter counted on the rows it really processes:
    6 x N_body x T                           backbone layers + final norm, T = valid (unpadded) positions
  + 12 x layers x (heads x head_dim) x sum_rows len_row^2     attention: 12 x layers x seq_len x width per token
  + 6 x N_lm_head x T_text                   text logits only at text-target positions
  + 6 x N_code x R_w x L                     code logits of the R_w written segments, L = sum of scale sizes
  + 6 x N_word_embed x (R x (L - n_0 + n_last) + R_w x n_last)   item inputs of all R segments + diffusion
  + 6 x N_cond_norm x R_w x n_last                                conditions (n_0, n_last: first/last scale)
  + 6 x N_diffusion x R_w x n_last x diffusion_batch_mul      the loss repeats the last-scale rows
Embedding lookups, the frozen codec's quantizer arithmetic, padding and the all-zero stand-in segment
a pass without written items runs are not counted; tokens/s counts T (as the trainer's tokens_per_s).
MFU = achieved model FLOP/s / peak FLOP/s; peak is `--peak-tflops` or, if not given, measured here: the
best of a few large square matmuls in the training dtype (an achievable peak, below the datasheet's:
H100/H200 SXM dense bf16 is 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from recipes.machine import cpu_model

if TYPE_CHECKING:
    from hart_core.quantizer import HybridTokens
    from modalities import ModalityCodec
    from recipes.config import TrainConfig
    from recipes.tasks import UnifiedTask
    from unified import UnifiedModel
    from unified.sequence import SequenceBatch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "configs" / "unified_debug.yaml"
LADDER_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)  # VAR/HART 512px scales: 32x32 final grid
MODELS = {
    "debug": [],  # the recipe's own tiny model
    "gpu": ["model.backbone={model_type: qwen2, hidden_size: 1536, intermediate_size: 4096, num_hidden_layers: 24, "
            "num_attention_heads: 12, num_key_value_heads: 12, max_position_embeddings: 4096, vocab_size: 32000}",
            "model.head={diff_width: 1024, diff_depth: 6}", "model.max_length=4096"],
}
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "bar")


def texts(n: int = 96) -> list[dict]:
    """Captions and QA pairs for the text tokenizer and the samples."""
    return [{"caption": f"a {COLOURS[i % 6]} {SHAPES[i // 6 % 4]} to the {('left', 'right')[i % 2]} of a small "
                        f"{COLOURS[i // 24 % 6]} {SHAPES[i % 4]}", "question": "what colour is it",
             "answer": COLOURS[i % 6]} for i in range(n)]


def write_codec(folder: Path, ladder: tuple[int, ...]) -> Path:
    """A random HART hybrid image codec folder (V=4096, Cvae=32) with the given scale ladder. Only its
    quantizer runs in training (teacher forcing, complete latents), so its conv trunk is kept narrow."""
    from hart_core.tokenizer import HARTTokenizer, TokenizerConfig
    from modalities import ImageCodec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ImageCodec(HARTTokenizer(TokenizerConfig(ch=32, v_patch_nums=ladder))).save_pretrained(folder)
    return folder


def build(model: str, overrides: list[str], batch_size: int, work: Path, recipe: Path = RECIPE,
          meta: bool = False) -> tuple[TrainConfig, UnifiedTask, UnifiedModel]:
    """(TrainConfig, UnifiedTask, UnifiedModel) built as the trainer builds them (random init)."""
    from recipes.config import load_config
    from recipes.tasks import make_task

    extra = [f"model.codec={write_codec(work / 'codec', LADDER_512)}"] if model == "gpu" else []
    cfg = load_config(recipe, [*MODELS[model], *extra, f"output_dir={work}", f"global_batch={batch_size}",
                               f"micro_batch={batch_size}", "ema_decay=0", *overrides])
    if cfg.task != "unified":
        raise ValueError(f"this benchmark trains the unified task, the recipe's is {cfg.task!r}")
    task = make_task(cfg, work / "artifacts")
    (work / "artifacts").mkdir(parents=True, exist_ok=True)
    task.prepare(texts)
    torch.manual_seed(cfg.seed)
    with torch.device("meta" if meta else "cpu"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*copying from a non-meta parameter")  # the codec's weights, on meta
        return cfg, task, task.build()


def random_tokens(codec: ModalityCodec, generator: torch.Generator) -> HybridTokens:
    """One segment of uniformly random codes and a small random residual, on the CPU."""
    from hart_core.quantizer import HybridTokens

    n = codec.tokens_per_scale
    indices = [torch.randint(codec.codebook_size, (1, k), generator=generator) for k in n]
    return HybridTokens(indices, 0.1 * torch.randn(1, n[-1], codec.latent_dim, generator=generator), codec.grids)


def samples(model: UnifiedModel, n: int, seed: int = 0) -> list[dict]:
    """n samples as the data loader with a token cache hands them over: texts and pre-made tokens."""
    g = torch.Generator().manual_seed(seed)
    pool, m = texts(), next(iter(model.codecs))  # the recipe's first modality
    return [{"key": f"s{i}", "modality": m, "tokens": random_tokens(model.codecs[m], g), **pool[i % len(pool)]}
            for i in range(n)]


# -- counting ----------------------------------------------------------------------------------------


def n_params(module: nn.Module | None) -> int:
    """Trainable parameters of `module` outside embedding tables."""
    if module is None:
        return 0
    return sum(p.numel() for m in module.modules() if not isinstance(m, nn.Embedding)
               for p in m.parameters(recurse=False) if p.requires_grad)


def param_groups(model: UnifiedModel) -> dict[str, int]:
    """Trainable parameters by part; `other` (what no part names) is 0 for the hybrid heads."""
    bb = model.backbone
    tied = bb.lm_head.weight is bb.embed_tokens.weight
    groups = {"backbone_body": n_params(bb.lm.get_decoder()), "lm_head": 0 if tied else n_params(bb.lm_head),
              "heads": sum(n_params(h) - n_params(h.diffusion) for h in model.heads.values()),
              "diffusion_heads": sum(n_params(h.diffusion) for h in model.heads.values())}
    groups["embeddings"] = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding)
                               for p in m.parameters(recurse=False) if p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups["other"] = trainable - sum(groups.values())
    groups["non_embedding"] = trainable - groups["embeddings"]
    groups["trainable"] = trainable
    return groups


def model_flops(model: UnifiedModel, batches: Iterable[SequenceBatch]) -> dict[str, int]:
    """Model FLOPs of forward + backward over the given `SequenceBatch`es (see the module docstring)."""
    from unified.sequence import IGNORE

    bb = model.backbone
    c = bb.config
    width = c.num_attention_heads * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    body = n_params(bb.lm.get_decoder())
    lm_head = sum(p.numel() for p in bb.lm_head.parameters())  # runs on text targets even when tied
    out = dict.fromkeys(("backbone", "attention", "lm_head", "item_heads", "diffusion"), 0)
    for batch in batches:
        lens = batch.valid.sum(1).tolist()
        out["backbone"] += 6 * body * sum(lens)
        out["attention"] += 12 * c.num_hidden_layers * width * sum(n * n for n in lens)
        out["lm_head"] += 6 * lm_head * int((batch.text_targets != IGNORE).sum())
        for modality, head in model.heads.items():
            n = model.codecs[modality].tokens_per_scale
            items = [it for it in batch.items if it.modality == modality]
            written = [it for it in items if it.item.loss]
            segs, segs_w = sum(it.pattern.segments for it in items), sum(it.pattern.segments for it in written)
            out["item_heads"] += 6 * ((n_params(head.head) + n_params(head.code_query)) * segs_w * sum(n)
                                      + n_params(head.word_embed) * (segs * (sum(n) - n[0] + n[-1]) + segs_w * n[-1])
                                      + n_params(head.cond_norm) * segs_w * n[-1])
            if written and all(it.item.tokens.residual is not None for it in written):
                out["diffusion"] += 6 * n_params(head.diffusion) * segs_w * n[-1] * head.config.diffusion_batch_mul
    out["total"] = sum(out.values())
    return out


def peak_tflops(device: torch.device, dtype: torch.dtype, size: int, trials: int = 5, reps: int = 4) -> float:
    """The best rate of `reps` back-to-back [size x size] @ [size x size] matmuls, over `trials`."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(trials + 1):  # the first is a warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - t0) / 1e12)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- training ----------------------------------------------------------------------------------------


def train(args: argparse.Namespace, cfg: TrainConfig, task: UnifiedTask, model: UnifiedModel,
          device: torch.device) -> list[dict]:
    """Warm-up + timed steps of the trainer's step on one fixed batch; one row per step."""
    from recipes.train import lr_lambda, micro_generator

    params = [p for p in model.parameters() if p.requires_grad]
    masters = [p.detach().float().clone() for p in params] if args.dtype == "bf16" else None
    if args.dtype == "bf16":  # DeepSpeed's bf16: parameters (not buffers) in bf16, fp32 masters in the optimizer
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.to(torch.bfloat16)
    opt_params = masters or params
    optimizer = torch.optim.AdamW(opt_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if args.compile:
        model.backbone.compile()
    seen: list = []  # the SequenceBatches of this step's forward passes
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    data = samples(model, args.batch_size, cfg.seed)
    model.train()
    rows = []
    for step in range(args.warmup + args.steps):
        seen.clear()
        g = micro_generator(cfg.seed, step, 0, device)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "amp"):
            loss, _, tokens = task.loss(model, data, g)
        loss.backward()
        if masters is not None:
            for m, p in zip(masters, params, strict=True):
                m.grad, p.grad = p.grad.float(), None
        torch.nn.utils.clip_grad_norm_(opt_params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if masters is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
        loss = float(loss.detach())  # waits for the step's work, like the trainer's float(loss)
        sync(device)
        dt = time.perf_counter() - t0
        flops = model_flops(model, seen)
        row = {"step": step + 1, "warmup": step < args.warmup, "loss": loss, "seconds": dt, "tokens": tokens,
               "padded_positions": sum(b.valid.numel() for b in seen), "passes": len(seen),
               "samples": len(data), "flops": flops["total"], "flops_parts": flops}
        row.update(rates(row, args.peak))
        rows.append(row)
        print(f"step {row['step']:3d}{' (warm-up)' if row['warmup'] else '':10} loss {loss:8.4f} | {dt * 1e3:8.1f} ms"
              f" | {row['tokens_per_s']:10.0f} tok/s {row['samples_per_s']:8.2f} samples/s | "
              f"{row['tflops']:8.3f} TFLOP/s | MFU {row['mfu']:6.1%}", flush=True)
    return rows


def rates(r: dict, peak: float) -> dict:
    """Per-second rates of a step (or of a sum of steps) and its MFU against `peak` TFLOP/s."""
    tflops = r["flops"] / r["seconds"] / 1e12
    return {"tokens_per_s": r["tokens"] / r["seconds"], "samples_per_s": r["samples"] / r["seconds"],
            "tflops": tflops, "mfu": tflops / peak}


# -- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="recipe key=value overrides, as the trainer takes them")
    p.add_argument("--model", choices=sorted(MODELS), default="debug")
    p.add_argument("--recipe", type=Path, default=RECIPE)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "amp"), default="fp32")
    p.add_argument("--batch-size", type=int, default=8, help="samples per step (one micro-batch)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device (default: measured)")
    p.add_argument("--peak-size", type=int, default=None, help="matmul side for the measured peak (8192 on CUDA, "
                   "1024 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone's forward")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--meta", action="store_true", help="only count parameters and FLOPs per sample (meta device)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        p.error("need --batch-size >= 1, --steps >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = {"command": shlex.join(sys.orig_argv if argv is None else ["benchmarks/bench_mfu.py", *argv]),
            "machine": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_model()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)",
            "torch": torch.__version__, "python": platform.python_version(), "model": args.model,
            "overrides": [*MODELS[args.model], *args.overrides], "device": str(device), "dtype": args.dtype,
            "batch_size": args.batch_size, "compile": args.compile}
    with tempfile.TemporaryDirectory(prefix="bench_mfu_") as work:
        cfg, task, model = build(args.model, args.overrides, args.batch_size, Path(work), args.recipe, args.meta)
        groups = param_groups(model)
        # one text-to-image sample (CPU rows: works on the meta device too)
        sample = samples(model, 1, cfg.seed)[0]
        row = model.row("t2i", sample["tokens"], sample["caption"], modality=sample["modality"])
        info["params"], info["flops_per_t2i_sample"] = groups, model_flops(model, [model.builder.build([row])])
        for k, v in info.items():
            if k == "params":
                v = ", ".join(f"{name} {n:,}" for name, n in v.items())
            elif k == "flops_per_t2i_sample":
                v = ", ".join(f"{name} {n / 1e9:,.3f}" for name, n in v.items()) + " GFLOP"
            print(f"{k:>20}: {v}")
        if args.meta:
            return info
        model.to(device)
        dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
        if args.peak_tflops is None:
            size = args.peak_size or (8192 if device.type == "cuda" else 1024)
            args.peak = peak_tflops(device, dtype, size)
            print(f"{'peak':>20}: {args.peak:.3f} TFLOP/s MEASURED here (best {size}x{size} {dtype} matmul)")
        else:
            args.peak = args.peak_tflops
            print(f"{'peak':>20}: {args.peak:.3f} TFLOP/s (given)")
        info.update(peak_tflops=args.peak, peak_measured=args.peak_tflops is None, steps=args.steps,
                    warmup=args.warmup)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rows = train(args, cfg, task, model, device)
    timed = [r for r in rows if not r["warmup"]]
    total = {k: sum(r[k] for r in timed) for k in ("seconds", "tokens", "samples", "flops")}
    summary = {**total, **rates(total, args.peak), "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"]}
    if device.type == "cuda":
        summary["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"{'summary':>20}: {summary['tokens_per_s']:.0f} tokens/s, {summary['samples_per_s']:.2f} samples/s, "
          f"{summary['tflops']:.3f} TFLOP/s, MFU {summary['mfu']:.2%} (timed steps {args.warmup + 1}..{len(rows)}; "
          f"{total['flops'] / max(total['tokens'], 1) / 1e6:.2f} MFLOP/token); loss {summary['loss_first']:.4f} -> "
          f"{summary['loss_last']:.4f}" + (f"; peak CUDA memory {summary['peak_cuda_allocated_mib']:.0f} MiB"
                                          if "peak_cuda_allocated_mib" in summary else ""))
    result = {**info, "summary": summary, "steps_detail": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    out = main()
    sys.exit(0 if "summary" not in out or math.isfinite(out["summary"]["loss_last"]) else 1)
