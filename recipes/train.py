"""One DeepSpeed ZeRO trainer for every recipe.

    python -m recipes.train recipes/configs/unified_debug.yaml steps=50          # 1 process (CPU or GPU)
    torchrun --nproc_per_node 2 -m recipes.train RECIPE zero_stage=2              # local ranks
    deepspeed --num_gpus 8 --module recipes.train RECIPE precision=bf16          # one GPU node
    deepspeed --hostfile hosts --module recipes.train RECIPE zero_stage=3        # many nodes
    python -m recipes.train RECIPE --resume                                       # continue from latest
    python -m recipes.export CHECKPOINT_DIR OUT [--ema]                           # consolidated model folder

Determinism: step s always trains on the same global batch, cut into the same micro-batches
j = 0..M-1 (rank r owns j = r, r + world, ...), and every random draw of micro-batch j comes from a
generator seeded by (seed, s, j). So the loss sequence does not depend on the number of ranks (only
on the global batch), and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

from . import checkpoints
from . import distributed as D
from .config import TrainConfig, load_config
from .tasks import make_task, trainable

log = logging.getLogger("recipes.train")
ZERO_CONFIGS = Path(__file__).parent / "configs" / "zero"
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3


def deepspeed_config(cfg: TrainConfig, world: int) -> dict:
    """The ZeRO JSON of the chosen stage, completed with this run's batch, precision and clipping."""
    name = f"zero{cfg.zero_stage}" + ("_offload" if cfg.offload_optimizer else "") + ".json"
    ds = json.loads((ZERO_CONFIGS / name).read_text())
    if cfg.micro_batches_per_step % world:
        raise ValueError(f"{cfg.micro_batches_per_step} micro-batches per step cannot be split over {world} ranks: "
                         "make global_batch / micro_batch a multiple of the number of ranks")
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch
    ds["gradient_accumulation_steps"] = cfg.micro_batches_per_step // world
    ds["train_batch_size"] = cfg.global_batch
    ds["gradient_clipping"] = cfg.grad_clip
    ds["bf16"] = {"enabled": cfg.precision == "bf16"}
    ds["steps_per_print"] = 10**9
    ds["wall_clock_breakdown"] = False
    ds["zero_allow_untested_optimizer"] = True  # SkippableAdamW: torch's AdamW, by a name ZeRO does not list
    return ds


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def micro_generator(seed: int, step: int, j: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device)
    g.manual_seed((seed * 1_000_003 + step) * 10_007 + j)
    return g


class EMA:
    """Exponential moving average of the weights this rank holds: whole tensors under ZeRO 0-2, the
    rank's own partition (`ds_tensor`) under ZeRO-3, so no communication is ever needed."""

    def __init__(self, engine, decay: float, stage: int):
        self.decay, self.stage = decay, stage
        self.names = [n for n, p in engine.module.named_parameters() if p.requires_grad]
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.shadow = [self._local(p).detach().float().clone() for p in self.params]

    def _local(self, p):
        return p.ds_tensor if self.stage == 3 else p.data

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(self._local(p).float(), 1 - self.decay)

    def state(self) -> dict:
        out = {}
        for n, s, p in zip(self.names, self.shadow, self.params, strict=True):
            out[n] = s.cpu()
            if self.stage == 3:
                out[n + "::shape"] = torch.tensor(list(p.ds_shape))
        return out

    def load(self, state: dict) -> None:
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(state[n])


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next step can be skipped, also when DeepSpeed's ZeRO optimizer drives it: a step whose
    loss was NaN or Inf on any rank must not touch the weights (or Adam's moments)."""

    skip_next = False

    def step(self, closure=None):
        if self.skip_next:
            return None
        return super().step(closure)


def weights_finite(engine, stage: int, device: torch.device) -> bool:
    """Whether every weight on every rank is finite (each rank checks what it holds: its partition under ZeRO-3)."""
    local = all(bool(torch.isfinite(p.ds_tensor if stage == 3 else p.data).all())
                for p in engine.module.parameters())
    return not D.any_over_ranks(not local, device)


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process (and of its GPU), in MiB."""
    import resource

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def first_good(source, image_size: int, modalities: tuple[str, ...] | None = None, **decode_options) -> list[dict]:
    from .data import decode_sample

    for i in range(len(source)):
        try:
            return [decode_sample(source.raw(i), image_size, modalities=modalities, **decode_options)]
        except Exception:
            continue
    raise ValueError(f"no decodable sample in the data ({len(source)} samples, all bad)")


def forget_metrics_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their rows, so each step has one."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    tmp.replace(path)


def stop_diverged(ckpt_root: Path, rank: int, why: str) -> None:
    """End every rank (they all reach this together: the decision was all-reduced) with one line; the last
    good checkpoint stays `latest` and nothing is exported."""
    if rank == 0:
        latest = ckpt_root / "latest"
        kept = f"the last good checkpoint stays latest ({latest.read_text().strip()})" if latest.is_file() else \
            "no checkpoint was saved"
        print(f"error: training stopped: {why}; {kept}; nothing exported", file=sys.stderr)
    D.finish(EXIT_DIVERGED)


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> None:
    import deepspeed

    from .data import GlobalBatchLoader, decode_sample, open_source

    rank, world, device = D.setup()
    out = Path(cfg.output_dir)
    artifacts, ckpt_root = out / "artifacts", out / "checkpoints"
    if rank == 0:
        artifacts.mkdir(parents=True, exist_ok=True)
        ckpt_root.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(levelname)s %(name)s: %(message)s")

    source = open_source(cfg.data)
    task = make_task(cfg, artifacts)
    # which checkpoint to continue from, before anything is built: none (or none usable) is an error
    resume_from = D.decided_on_rank0(lambda: checkpoints.resume_tag(ckpt_root)) if resume else None
    first_good(source, cfg.image_size, task.modalities, **cfg.decode_options)  # all samples bad: say so now
    if rank == 0 and not resume:
        def texts():
            for i in range(min(len(source), 10_000)):
                try:
                    yield decode_sample(source.raw(i), cfg.image_size, modalities=task.modalities,
                                        **cfg.decode_options)
                except Exception:  # undecodable samples are counted by the loader during training
                    continue

        task.prepare(texts)
    D.barrier()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = task.build()
    params = trainable(model)
    optimizer = SkippableAdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           model_parameters=params, config=deepspeed_config(cfg, world))
    ema = EMA(engine, cfg.ema_decay, cfg.zero_stage) if cfg.ema_decay > 0 else None

    start = 0
    if resume_from is not None:
        from safetensors.torch import load_file

        tag = resume_from
        with checkpoints.weights_only_loads():
            _, client = engine.load_checkpoint(str(ckpt_root), tag=tag)
        start = int(client["step"])
        if ema is not None:
            ema.load(load_file(str(ckpt_root / tag / f"ema_rank{rank:03d}.safetensors")))
        if rank == 0:
            forget_metrics_after(out / "metrics.jsonl", start)
        log.info("resumed from %s at step %d", tag, start)

    caches = {}
    if cfg.token_cache and cfg.task == "unified":  # one cache per modality, each keyed by its codec
        from .data import TokenCache

        caches = {m: TokenCache(cfg.token_cache, codec) for m, codec in model.codecs.items()}
    loader = GlobalBatchLoader(source, cfg.global_batch, cfg.micro_batch, cfg.seed, cfg.image_size, cache=caches,
                               modalities=task.modalities, **cfg.decode_options)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    metrics_file = (out / "metrics.jsonl").open("a") if rank == 0 else None
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc=f"{task.name}", disable=rank != 0, dynamic_ncols=True)
    engine.train()
    last_good: list[dict] = []
    nonfinite_run: list[int] = []  # the steps, in a row, whose loss was NaN or Inf (on some rank)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        n_samples, n_tokens = 0, 0
        mine = loader.micro_batches(step, rank, world)
        finite = True
        for i, (j, samples) in enumerate(mine):
            g = micro_generator(cfg.seed, step, j, device)
            weight = 1.0
            if samples:
                last_good = samples
            else:  # every sample of this micro-batch was bad: run a zero-weight pass to keep the ranks in step
                samples = last_good or first_good(source, cfg.image_size, task.modalities, **cfg.decode_options)
                weight = 0.0
            loss, metrics, tokens = task.loss(engine.module, samples, g)  # metrics: floats, per micro-batch
            finite = finite and bool(torch.isfinite(loss.detach()))
            engine.backward(loss * weight)
            if i == len(mine) - 1:  # the optimizer steps at this micro-batch: not on a NaN/Inf loss of any rank
                optimizer.skip_next = D.any_over_ranks(not finite, device)
            engine.step()
            for k, v in {"loss": float(loss.detach()), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v * weight
                counts[k] = counts.get(k, 0.0) + weight
            n_samples += len(samples) if weight else 0
            n_tokens += tokens if weight else 0
        if hasattr(task, "after_step"):  # e.g. dead-code restarts; same generator on every rank
            g = micro_generator(cfg.seed, step, 10**6, torch.device("cpu"))
            for k, v in task.after_step(engine.module, step, g).items():
                sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0.0) + 1
        if ema is not None:
            ema.update()
        dt = time.perf_counter() - t0
        stats = D.mean_over_ranks(sums, counts, device)
        samples_total = D.all_sum(n_samples, device)
        tokens_total = D.all_sum(n_tokens, device)
        bad = D.all_sum(loader.bad_count, device)
        skipped = optimizer.skip_next
        optimizer.skip_next = False
        nonfinite_run = [*nonfinite_run, step + 1] if skipped else []
        if rank == 0:
            stats.update({"step": step + 1, "lr": scheduler.get_last_lr()[0], "samples_per_s": samples_total / dt,
                          "tokens_per_s": tokens_total / dt, "bad_samples": bad, "skipped": int(skipped)})
            metrics_file.write(json.dumps(stats) + "\n")
            metrics_file.flush()
            if (step + 1) % cfg.log_every == 0:
                for k, v in stats.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, step + 1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{stats['samples_per_s']:.1f}",
                            tok_s=f"{stats['tokens_per_s']:.0f}", bad=int(bad))
            bar.update(1)
        done = step + 1
        if skipped:
            log.warning("step %d: the loss is not finite (%s) on some rank: optimizer step skipped", done,
                        stats.get("loss") if rank == 0 else "NaN/Inf")
        if len(nonfinite_run) >= cfg.max_nonfinite_steps:
            stop_diverged(ckpt_root, rank, f"the loss was NaN or Inf for {len(nonfinite_run)} steps in a row "
                          f"(steps {nonfinite_run[0]}-{nonfinite_run[-1]}; lower lr or check the data)")
        if cfg.sample_every and done % cfg.sample_every == 0 and cfg.sample_prompts:
            engine.eval()
            task.samples(engine.module, cfg.sample_prompts, out / "samples" / f"step{done:07d}.png", rank == 0)
            engine.train()
        if (done % cfg.save_every == 0 or done == cfg.steps) and not skipped:  # a NaN step saves nothing
            if not weights_finite(engine, cfg.zero_stage, device):
                stop_diverged(ckpt_root, rank, f"the weights are NaN or Inf after step {done}")
            checkpoints.save(engine, ema.state() if ema is not None else None, done, rank, world, cfg.zero_stage,
                             cfg.keep_checkpoints, ckpt_root, {"position": done * cfg.global_batch})
        if stop_after is not None and done >= stop_after:
            log.warning("stopping after step %d as asked (--stop-after)", done)
            D.finish(0)
    bar.close()
    if not (ckpt_root / "latest").is_file():  # the last steps were skipped before any save
        stop_diverged(ckpt_root, rank, "no step could be saved")
    (out / f"memory_rank{rank}.json").write_text(json.dumps(peak_memory(device)))
    if rank == 0:
        metrics_file.close()
        writer.close()
        tag = (ckpt_root / "latest").read_text().strip()
        from .export import export

        export(ckpt_root / tag, out / "final", ema=ema is not None)
        log.info("exported %s", out / "final")
    D.finish(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="YAML recipe (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. zero_stage=3 model.head.diff_depth=2")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    parser.add_argument("--stop-after", type=int, default=None, help="exit after this step (tests a crash)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.recipe, args.overrides)
        train(cfg, resume=args.resume, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError) as e:  # bad recipe, data or checkpoint: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        D.finish(EXIT_BAD_INPUT, wait=False)  # a launcher ends the other ranks when one exits non-zero


if __name__ == "__main__":
    main()
