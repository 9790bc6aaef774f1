"""Training throughput and peak memory per rank of the DeepSpeed trainer under ZeRO-0/2/3, on CPU.

    python benchmarks/bench_train.py --model small --stages 0,2,3 --ranks 2
    python benchmarks/bench_train.py --model debug --stages 0,3 --ranks 2 --steps 6 --warmup 2
    python benchmarks/bench_train.py --model small --stages 0 --offload --json out.json

Each configuration is one real run of `recipes/configs/unified_debug.yaml`, launched as a user
launches it (`python -m torch.distributed.run --nproc_per_node=R -m recipes.train RECIPE key=value
...` for R > 1 ranks, `python -m recipes.train ...` for one), on temporary webdataset shards of
coloured shapes, with DS_ACCELERATOR=cpu (gloo). The model size is set with `model.*=...`
overrides. The script reads what the trainer writes:

  * samples/s, tokens/s: median over steps warmup+1..N of `metrics.jsonl` (each step's time covers
    forward, backward and optimizer step of the whole global batch, not the checkpoint written
    after the last step);
  * peak RSS per rank: `memory_rank{r}.json` (getrusage ru_maxrss: the high-water mark of the
    process's resident memory over its whole life: imports, model build, deepspeed.initialize,
    training and the final checkpoint save; the export that rank 0 runs afterwards is not included).

The EMA copy of the weights is switched off (ema_decay=0) so that resident memory is the runtime
plus the model states that ZeRO partitions. "theory" is the textbook per-rank size of those states
in fp32 training with Adam: 4 bytes/param weights, 4 gradients, 8 Adam moments; ZeRO-1 partitions
the 8, ZeRO-2 the 4+8, ZeRO-3 all 16 over the ranks. RSS additionally holds the Python/torch/
DeepSpeed runtime, activations, communication buckets and any copy DeepSpeed keeps of its own.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recipes.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "configs" / "unified_debug.yaml"
MIB = 2**20

# model settings, passed to the trainer as `key=value` overrides of the recipe
MODELS = {
    "debug": [],  # the recipe's own tiny model (hidden 64, 2 layers)
    "small": [  # Qwen2-shaped backbone, ~53M trainable parameters: the model states dominate memory
        "model.backbone.hidden_size=768",
        "model.backbone.intermediate_size=2048",
        "model.backbone.num_hidden_layers=8",
        "model.backbone.num_attention_heads=12",
        "model.backbone.num_key_value_heads=4",
        "model.backbone.vocab_size=1024",
        "model.head={diff_width: 256, diff_depth: 3}",
    ],
}


# -- environment -----------------------------------------------------------------------------------


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shards(folder: Path) -> str:
    """Webdataset shards of coloured shapes (the test suite's writer when importable)."""
    sys.path.insert(0, str(ROOT))
    try:
        from tests.recipes.conftest import write_shape_shards
    except ImportError:  # e.g. pytest missing: an equivalent writer
        write_shape_shards = _write_shape_shards
    return write_shape_shards(folder, n_shards=2, per_shard=8)


def _write_shape_shards(folder: Path, n_shards: int = 2, per_shard: int = 8) -> str:
    import io

    import webdataset as wds
    from PIL import Image, ImageDraw

    colours = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60), "yellow": (230, 210, 40)}
    combos = [(c, s) for c in colours for s in ("circle", "square")]
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    for shard in range(n_shards):
        with wds.TarWriter(str(folder / f"shard-{shard:03d}.tar")) as sink:
            for _ in range(per_shard):
                colour, shape = combos[i % len(combos)]
                img = Image.new("RGB", (16, 16), (245, 245, 245))
                (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(
                    (3, 3, 12, 12), fill=colours[colour])
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                sink.write({"__key__": f"s{i:05d}", "png": buf.getvalue(), "txt": f"a {colour} {shape}",
                            "json": json.dumps({"question": "what shape is it", "answer": shape})})
                i += 1
    return str(folder / f"shard-{{000..{n_shards - 1:03d}}}.tar")


# -- runs ------------------------------------------------------------------------------------------


def launch(label: str, stage: int, offload: bool, data: str, out: Path, args) -> dict:
    overrides = [f"data={data}", f"output_dir={out}", f"steps={args.steps}", f"save_every={args.steps}",
                 f"global_batch={args.global_batch}", f"micro_batch={args.micro_batch}", "ema_decay=0",
                 "sample_every=0", f"zero_stage={stage}", *MODELS[args.model]]
    if offload:
        overrides.append("offload_optimizer=true")
    if args.ranks == 1:
        cmd = [sys.executable, "-m", "recipes.train", str(RECIPE), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.ranks}",
               f"--master_port={free_port()}", "-m", "recipes.train", str(RECIPE), *overrides]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{label}] {shlex.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with (out / "stdout.log").open("w") as so, (out / "stderr.log").open("w") as se:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=so, stderr=se, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {args.timeout} s"
    wall = time.perf_counter() - t0
    metrics_file = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.is_file() else []
    memory = [out / f"memory_rank{r}.json" for r in range(args.ranks)]
    if rc != 0 or len(rows) != args.steps or not all(m.is_file() for m in memory):
        print(f"\n[{label}] FAILED (exit status {rc}, {len(rows)}/{args.steps} steps logged); "
              f"full logs in {out}/std{{out,err}}.log; last stderr lines:", file=sys.stderr)
        print("\n".join("    " + line for line in failure_lines((out / "stderr.log").read_text(), args.tail)),
              file=sys.stderr)
        args.keep = True  # the logs named above stay
        raise SystemExit(1)
    timed = rows[args.warmup:]
    peaks = [json.loads(m.read_text())["peak_rss_mib"] for m in memory]
    print(f"[{label}] done in {wall:.0f} s", file=sys.stderr, flush=True)
    return {
        "label": label, "stage": stage, "offload": offload, "command": shlex.join(cmd), "wall_s": wall,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in timed),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "step_s": [args.global_batch / r["samples_per_s"] for r in rows],
        "loss": [r["loss"] for r in rows],
        "peak_rss_mib": peaks,
    }


def failure_lines(stderr: str, n: int) -> list[str]:
    """The last n lines the workers wrote; torch.distributed.run's own traceback and failure summary
    that follow them are reduced to the lines naming each failed rank's exit code or signal."""
    lines = stderr.splitlines()
    end = next((i for i, line in enumerate(lines) if "ChildFailedError" in line), None)
    if end is None:
        return lines[-n:]
    start = max((i for i in range(end) if lines[i].startswith("Traceback")), default=end)
    summary = [" ".join(line.split()) for line in lines[end:] if line.strip().startswith(("rank ", "exitcode"))]
    return lines[:start][-n:] + ["(torch.distributed.run: " + "; ".join(summary) + ")"]


def count_params(run_dir: Path) -> tuple[int, int]:
    """(trainable, total) parameters of the trained module, rebuilt from a run's artifacts."""
    sys.path.insert(0, str(ROOT))
    from recipes.config import TrainConfig
    from recipes.tasks import make_task

    cfg = TrainConfig(**json.loads((run_dir / "recipe.json").read_text()))
    model = make_task(cfg, run_dir / "artifacts").rebuild()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def theory(stage: int, n: int, world: int) -> dict:
    """Per-rank bytes of fp32 weights / gradients / Adam moments under ZeRO-`stage` over `world` ranks."""
    return {"params": 4 * n / (world if stage >= 3 else 1), "grads": 4 * n / (world if stage >= 2 else 1),
            "adam": 8 * n / (world if stage >= 1 else 1)}


# -- report ----------------------------------------------------------------------------------------


def report(args, runs: list[dict], n_train: int, n_total: int) -> dict:
    import torch

    info = {
        "command": shlex.join(sys.orig_argv),
        "machine": f"{cpu_model()} ({os.cpu_count()} logical CPUs, no GPU used: DS_ACCELERATOR=cpu, gloo)",
        "torch": torch.__version__,
        "deepspeed": version("deepspeed"),
        "python": platform.python_version(),
    }
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "LD_PRELOAD"))}
    if env:  # allocator settings change resident memory a lot (freed memory kept by glibc or returned)
        info["env"] = " ".join(f"{k}={v}" for k, v in env.items())
    for k, v in info.items():
        print(f"{k:>10}: {v}")
    print(f"{'model':>10}: {args.model} ({' '.join(MODELS[args.model]) or 'recipe defaults'}); "
          f"{n_train:,} trainable parameters ({n_train / 1e6:.2f}M) of {n_total:,}")
    print(f"{'setup':>10}: {args.ranks} rank(s) x OMP_NUM_THREADS={args.threads}, fp32, AdamW, "
          f"global batch {args.global_batch}, micro-batch {args.micro_batch} "
          f"({args.global_batch // args.micro_batch // args.ranks} accumulation step(s) per rank), "
          f"{args.steps} steps, throughput = median of steps {args.warmup + 1}..{args.steps}, ema_decay=0")
    print()
    world = args.ranks
    base = next((r for r in runs if r["stage"] == 0 and not r["offload"]), None)
    rank_cols = " ".join(f"{'rank' + str(i):>7}" for i in range(world))
    print(f"{'run':<13} {'samples/s':>9} {'tokens/s':>9} | peak RSS MiB: {rank_cols} {'vs ZeRO-0':>17} | "
          f"theory MiB/rank: {'params':>6} {'grads':>6} {'adam':>6} {'total':>6} | {'RSS-theory':>10}")
    for r in runs:
        t = theory(r["stage"], n_train, world)
        total = sum(t.values())
        peak = max(r["peak_rss_mib"])
        if base is None:
            delta = "n/a"
        elif r is base:
            delta = "-"
        else:
            d = peak - max(base["peak_rss_mib"])
            delta = f"{d:+.0f} ({d / max(base['peak_rss_mib']):+.0%})"
        ranks = " ".join(f"{p:7.0f}" for p in r["peak_rss_mib"])
        print(f"{r['label']:<13} {r['samples_per_s']:9.2f} {r['tokens_per_s']:9.0f} | {'':>13} {ranks} "
              f"{delta:>17} | {'':>16} {t['params'] / MIB:6.0f} {t['grads'] / MIB:6.0f} {t['adam'] / MIB:6.0f} "
              f"{total / MIB:6.0f} | {peak - total / MIB:10.0f}")
        r["theory_mib"] = {k: v / MIB for k, v in t.items()}
    print()
    print("vs ZeRO-0: max peak RSS over ranks minus ZeRO-0's. RSS-theory: max peak RSS minus the theory total.")
    for r in runs:
        steps = " ".join(f"{s:.2f}" for s in r["step_s"])
        print(f"{r['label']:<13} wall {r['wall_s']:5.0f} s; step seconds: {steps}; "
              f"loss first/last {r['loss'][0]:.4f}/{r['loss'][-1]:.4f}")
    return {**info, "model": args.model, "overrides": MODELS[args.model], "trainable_params": n_train,
            "total_params": n_total, "ranks": world, "threads": args.threads, "steps": args.steps,
            "warmup": args.warmup, "global_batch": args.global_batch, "micro_batch": args.micro_batch, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="0,2,3", help="comma-separated ZeRO stages (0-3)")
    p.add_argument("--ranks", type=int, default=2, help="processes (torch.distributed.run when > 1)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the throughput median")
    p.add_argument("--model", choices=sorted(MODELS), default="small")
    p.add_argument("--global-batch", type=int, default=8, help="samples per optimizer step over all ranks")
    p.add_argument("--micro-batch", type=int, default=4, help="samples per forward pass on one rank")
    p.add_argument("--offload", action="store_true", help="also run ZeRO-2 and ZeRO-3 with offload_optimizer=true")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS per rank (default: logical CPUs // ranks, at least 1)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--tail", type=int, default=30, help="stderr lines shown when a run fails")
    p.add_argument("--keep", action="store_true", help="keep the run folders (printed at the end)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    if importlib.util.find_spec("deepspeed") is None:
        print("error: deepspeed is not installed in this environment; the trainer needs it "
              "(pip install -e '.[train]')", file=sys.stderr)
        return 2
    try:
        stages = [int(s) for s in args.stages.split(",") if s.strip()]
    except ValueError:
        p.error(f"--stages: expected comma-separated integers, got {args.stages!r}")
    if not stages or any(s not in (0, 1, 2, 3) for s in stages):
        p.error(f"--stages: ZeRO stages are 0, 1, 2, 3; got {args.stages!r}")
    if args.ranks < 1 or args.steps < 1 or not 0 <= args.warmup < args.steps:
        p.error("need --ranks >= 1, --steps >= 1 and 0 <= --warmup < --steps")
    if args.global_batch % args.micro_batch or (args.global_batch // args.micro_batch) % args.ranks:
        p.error("--global-batch must be a multiple of --micro-batch * --ranks")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.ranks)
    configs = [(f"ZeRO-{s}", s, False) for s in stages]
    if args.offload:
        configs += [(f"ZeRO-{s}+offload", s, True) for s in (2, 3)]

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        data = shards(work / "shards")
        runs, counts = [], None
        for label, stage, offload in configs:
            out = work / label.replace("+", "_")
            runs.append(launch(label, stage, offload, data, out, args))
            if counts is None:
                counts = count_params(out)
        print(file=sys.stderr)
        result = report(args, runs, *counts)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        if args.keep:
            print(f"run folders kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
