"""Text-to-image latency / throughput of HART with random weights.

    python benchmarks/bench_t2i.py --config debug --batch-sizes 1,4 --iters 3
    python benchmarks/bench_t2i.py --config official --dtype bf16 --batch-sizes 1,8   # on a GPU
    python benchmarks/bench_t2i.py --meta-only                                       # parameter counts only
    python benchmarks/bench_t2i.py --config twin --batch-sizes 1 --paths eager,fast --count-ops

Paths (`--paths`, several in one run for a side-by-side table):
  * eager    = the reference path (`generate_latent`), bit-exact with the released code;
  * fast     = `generate_latent(..., fast=FastPath(transformer))`: static KV cache, per-generation tables,
               fused ops, hoisted diffusion-schedule constants; VAE decode in channels_last (`FastDecoder`,
               in `--decode-dtype`);
  * compiled = the fast path with every scale step, diffusion step and the VAE decode compiled once
               (`torch.compile`; CUDA graphs on CUDA). The warm-up iterations include the compilation
               (reported apart).

The `twin` config is the launch-bound twin of the official 1024px model: depth 24, 14 scales (grids 1..14),
width 4, one head, 16 context slots, 8 diffusion steps. Its arithmetic is negligible, so its wall time and
its count of top-level aten ops (`--count-ops`; what would be kernel launches on a GPU) track the
per-operation overhead of a path on any CPU.

What is timed, per batch of B prompts (CFG doubles the rows to 2B inside the transformer):
  * total       = `generate_latent` (every scale step: KV-cached transformer, logits, CFG, top-k
                  sampling, the quantizer's next-scale inputs, the residual diffusion head) plus
                  the VQ-VAE decode to pixels (`tokenizer.decode_latent`; the fast paths' `FastDecoder`);
  * diffusion   = `transformer.diffusion_head.sample` (timed by wrapping that bound method, in this
                  script only, for the duration of the run);
  * vae decode  = that decode;
  * transformer = total - diffusion - vae decode.
The text encoder is NOT run: the context is a random [B, context_token, context_dim] tensor with a
full mask, as in HART's published latency numbers (which exclude text encoding). Weights are random,
so the pictures are noise; only the amount of work matters. Official-style sampling is used
(top-k 600/300, CFG on every scale, `--steps` diffusion steps).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

# runnable as `python benchmarks/bench_t2i.py` from the repository root without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hart_core.debug import debug_configs, launch_bound_twin_configs, official_configs  # noqa: E402
from hart_core.fast_generate import PATHS, FastPath, fast_path  # noqa: E402
from hart_core.generate import generate_latent, latent_decoder  # noqa: E402
from hart_core.pipeline import HARTPipeline  # noqa: E402
from hart_core.tokenizer import HARTTokenizer, TokenizerConfig  # noqa: E402
from hart_core.transformer import HARTTransformer, TransformerConfig  # noqa: E402
from recipes.machine import cpu_model  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def small_configs() -> tuple[TokenizerConfig, TransformerConfig]:
    """A scaled-down HART that keeps the released architecture (shared AdaLN, l2-norm attention,
    V=4096, Cvae=32, residual diffusion head) at 64x64 pixels: 6 scales up to an 8x8 latent,
    downsample 8, width 384, depth 6, diffusion head 256 x 3, context 64 x 256."""
    patch_nums = (1, 2, 3, 4, 6, 8)
    tok = TokenizerConfig(vocab_size=4096, z_channels=32, ch=64, ch_mult=(1, 1, 2, 4), v_patch_nums=patch_nums)
    tr = TransformerConfig(
        vocab_size=4096, latent_dim=32, embed_dim=384, depth=6, num_heads=6, context_token=64,
        context_dim=256, patch_nums=patch_nums, diff_width=256, diff_depth=3,
    )
    return tok, tr


CONFIGS = {"debug": debug_configs, "small": small_configs, "official": official_configs,
           "twin": launch_bound_twin_configs}


# -- environment -----------------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    cpu = f"{cpu_model()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; host CPU {cpu}"
    return cpu


def header(device: torch.device | None) -> dict:
    info = {
        "command": shlex.join(sys.orig_argv),
        "machine": machine(device) if device is not None else cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device is not None and device.type == "cuda":
        info["cuda"] = torch.version.cuda
    for k, v in info.items():
        print(f"{k:>8}: {v}")
    return info


# -- models ----------------------------------------------------------------------------------------


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_counts(tokenizer: HARTTokenizer, transformer: HARTTransformer) -> dict:
    counts = {
        "transformer_incl_diffusion_head": n_params(transformer),
        "diffusion_head": n_params(transformer.diffusion_head),
        "transformer_excl_diffusion_head": n_params(transformer) - n_params(transformer.diffusion_head),
        "tokenizer": n_params(tokenizer),
        "tokenizer_decode_path": n_params(tokenizer.decoder) + n_params(tokenizer.post_quant_conv),
    }
    print("parameters:")
    for k, v in counts.items():
        print(f"  {k:<34} {v:>14,d}  ({v / 1e6:.2f}M)")
    return counts


def describe(tok_cfg: TokenizerConfig, tr_cfg: TransformerConfig, tokenizer: HARTTokenizer) -> dict:
    h, w = tokenizer.image_size
    d = {
        "image_size": [h, w],
        "patch_nums": list(tr_cfg.patch_nums),
        "image_tokens": tr_cfg.num_image_tokens,
        "embed_dim": tr_cfg.embed_dim,
        "depth": tr_cfg.depth,
        "num_heads": tr_cfg.num_heads,
        "vocab_size": tr_cfg.vocab_size,
        "latent_dim": tr_cfg.latent_dim,
        "context": [tr_cfg.context_token, tr_cfg.context_dim],
        "diffusion_head": [tr_cfg.diff_width, tr_cfg.diff_depth],
        "shared_aln": tr_cfg.shared_aln,
        "vae_ch": tok_cfg.ch,
        "vae_ch_mult": list(tok_cfg.ch_mult),
    }
    print(
        f"  model: {h}x{w} px, scales {d['patch_nums']} ({d['image_tokens']} tokens), width {d['embed_dim']}, "
        f"depth {d['depth']}, heads {d['num_heads']}, V {d['vocab_size']}, Cvae {d['latent_dim']}, "
        f"shared AdaLN {d['shared_aln']}, context {d['context'][0]}x{d['context'][1]}, "
        f"diff head {d['diffusion_head'][0]}x{d['diffusion_head'][1]}, "
        f"VAE ch {d['vae_ch']} x {d['vae_ch_mult']}"
    )
    return d


def build(config: str, device: torch.device, seed: int) -> tuple[HARTTokenizer, HARTTransformer, dict]:
    tok_cfg, tr_cfg = CONFIGS[config]()
    torch.manual_seed(seed)
    with device:  # allocate (and randomly initialise) directly on the target device
        tokenizer = HARTTokenizer(tok_cfg).eval()
        transformer = HARTTransformer(tr_cfg).eval()
    return tokenizer, transformer, describe(tok_cfg, tr_cfg, tokenizer)


# -- timing ----------------------------------------------------------------------------------------


class Timer:
    """Accumulates wall time of calls; synchronises CUDA around each one."""

    def __init__(self, sync):
        self.sync, self.seconds, self.calls = sync, 0.0, 0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            return out

        return timed


@contextlib.contextmanager
def wrapped_method(obj, name: str, wrapper):
    """Shadow a bound method with a wrapped instance attribute; removed again on exit."""
    setattr(obj, name, wrapper(getattr(obj, name)))
    try:
        yield
    finally:
        delattr(obj, name)


def sdpa_context(backend: str, device: torch.device):
    if backend == "auto" or device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
    return sdpa_kernel(kinds[backend])


def random_context(transformer, batch: int, seed: int, device, dtype):
    """A seeded generator and a random [B, context_token, context_dim] context with a full mask: the text
    encoder's output stand-in (its cost is excluded, as in HART's published numbers)."""
    c = transformer.config
    gen = torch.Generator(device).manual_seed(seed)
    context = torch.randn(batch, c.context_token, c.context_dim, generator=gen, device=device).to(dtype)
    return gen, context, torch.ones(batch, c.context_token, dtype=torch.bool, device=device)


def bench_batch(tokenizer, transformer, batch: int, args, device, dtype, sync, fast: FastPath | None = None) -> dict:
    gen, context, mask = random_context(transformer, batch, args.seed, device, dtype)
    diff = Timer(sync)
    rows = {"total": [], "transformer": [], "diffusion": [], "vae_decode": []}
    warmup_s = 0.0
    sampler = transformer.diffusion_head if fast is None else fast.diffusion
    decode = latent_decoder(tokenizer, fast)
    with wrapped_method(sampler, "sample", diff.wrap):
        for it in range(args.warmup + args.iters):
            gen.manual_seed(args.seed + 1)
            diff.seconds = 0.0
            sync()
            t0 = time.perf_counter()
            f_hat = generate_latent(transformer, tokenizer, context, mask, cfg=args.cfg, generator=gen, fast=fast)
            sync()
            t1 = time.perf_counter()
            images = decode(f_hat)
            sync()
            t2 = time.perf_counter()
            if it < args.warmup:
                warmup_s += t2 - t0
                continue
            rows["total"].append(t2 - t0)
            rows["diffusion"].append(diff.seconds)
            rows["vae_decode"].append(t2 - t1)
            rows["transformer"].append(t1 - t0 - diff.seconds)
    if not torch.isfinite(images).all():
        raise RuntimeError(f"non-finite pixels at batch {batch}")
    med = {k: statistics.median(v) for k, v in rows.items()}
    mean_total = statistics.fmean(rows["total"])
    result = {
        "batch_size": batch,
        "iters": args.iters,
        "latency_s_median": med["total"],
        "latency_s_min": min(rows["total"]),
        "images_per_s": batch / med["total"],
        "parts_s_median": {k: med[k] for k in ("transformer", "diffusion", "vae_decode")},
        "share_of_total": {k: statistics.fmean(rows[k]) / mean_total
                                for k in ("transformer", "diffusion", "vae_decode")},
        "image_shape": list(images.shape),
        "warmup_s": warmup_s,
        "raw_s": rows,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def top_level_ops(tokenizer, transformer, batch: int, args, device, dtype, sync, fast: FastPath | None) -> int:
    """aten operations called from Python (not from inside another aten op) in one generation + decode:
    on a GPU, roughly one kernel launch each unless captured in a graph."""
    from torch.profiler import ProfilerActivity, profile

    gen, context, mask = random_context(transformer, batch, args.seed, device, dtype)
    sync()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        latent_decoder(tokenizer, fast)(generate_latent(transformer, tokenizer, context, mask, cfg=args.cfg,
                                                        generator=gen, fast=fast))
        sync()
    count = 0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        count += parent is None
    return count


def profile_once(tokenizer, transformer, batch: int, args, device, dtype, sync) -> None:
    """One generation + decode under torch.profiler; the op table goes to args.profile. Run after the
    timed iterations, so kernels are warm and the timings above are not disturbed."""
    from torch.profiler import ProfilerActivity, profile

    gen, context, mask = random_context(transformer, batch, args.seed, device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync()
    with profile(activities=activities) as prof:
        tokenizer.decode_latent(generate_latent(transformer, tokenizer, context, mask, cfg=args.cfg, generator=gen))
        sync()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    args.profile.parent.mkdir(parents=True, exist_ok=True)
    title = f"batch {batch}, {args.config}, {args.dtype}, cfg {args.cfg}, steps {args.steps}"
    args.profile.write_text(f"{title}\n{table}\n")
    print(f"wrote {args.profile} (profile of one generation at batch {batch})")


def print_result(r: dict) -> None:
    share, parts = r["share_of_total"], r["parts_s_median"]
    line = (
        f"{r['path']:>8} batch {r['batch_size']:>3}: latency {r['latency_s_median'] * 1e3:10.1f} ms/batch (median of "
        f"{r['iters']}, min {r['latency_s_min'] * 1e3:.1f})  {r['images_per_s']:8.2f} images/s"
    )
    if "peak_memory_gib" in r:
        line += f"  peak mem {r['peak_memory_gib']:.2f} GiB"
    if "top_level_ops" in r:
        line += f"  {r['top_level_ops']:,d} top-level ops"
    print(line)
    if r["path"] == "compiled":
        print(f"           warm-up incl. compilation: {r['warmup_s']:.1f} s")
    print(
        "           median ms [share of total time over all iters]: "
        + "  ".join(f"{k} {parts[k] * 1e3:.1f} [{share[k] * 100:.1f}%]"
                    for k in ("transformer", "diffusion", "vae_decode"))
    )


# -- main ------------------------------------------------------------------------------------------


def print_comparison(results: list[dict]) -> None:
    """Each path against the eager one at the same batch size."""
    eager = {r["batch_size"]: r for r in results if r["path"] == "eager"}
    for r in results:
        base = eager.get(r["batch_size"])
        if base is None or r is base:
            continue
        line = (f"{r['path']:>8} vs eager at batch {r['batch_size']}: "
                f"{base['latency_s_median'] / r['latency_s_median']:.2f}x faster")
        if "top_level_ops" in r and "top_level_ops" in base:
            line += f", {r['top_level_ops']:,d} vs {base['top_level_ops']:,d} top-level ops"
        print(line)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default=None,
                   help="model size (default: debug; official with --meta-only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="transformer dtype; tokenizer and diffusion head stay fp32 (as HARTPipeline.to)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated, e.g. 1,8")
    p.add_argument("--cfg", type=float, default=4.5)
    p.add_argument("--steps", type=int, default=8, help="diffusion head sampling steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sdpa", choices=("auto", "flash", "efficient", "cudnn", "math"), default="auto",
                   help="restrict scaled_dot_product_attention to one backend (CUDA only)")
    p.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off",
                   help="also run the fp32 parts (diffusion head, VAE decode) under torch.autocast in this "
                        "dtype, as the official sampler does with fp16; weights keep their dtypes")
    p.add_argument("--decode-dtype", choices=sorted(DTYPES), default="fp32",
                   help="precision of the fast paths' VAE decode (FastDecoder); eager decodes in fp32")
    p.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls and convolutions (CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (CPU runs; 1 avoids OpenMP spin contention on a busy machine)")
    p.add_argument("--paths", default="eager",
                   help=f"comma-separated generation paths to time, from {','.join(PATHS)} (see above)")
    p.add_argument("--count-ops", action="store_true",
                   help="also count the top-level aten ops of one generation per path and batch (torch.profiler)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--profile", type=Path, default=None,
                   help="after timing, profile one untimed generation + decode at the first batch size with "
                        "torch.profiler and write its op table (sorted by device time) here")
    p.add_argument("--meta-only", action="store_true",
                   help="build the model on the meta device, print parameter counts, exit (no memory)")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not args.paths or set(args.paths) - set(PATHS):
        p.error(f"--paths takes a comma-separated list from {', '.join(PATHS)}")
    if "compiled" in args.paths and args.warmup < 1:
        p.error("--paths compiled needs --warmup >= 1 (the first generation compiles)")
    if args.config is None:
        args.config = "official" if args.meta_only else "debug"
    if args.iters < 1 or args.warmup < 0 or not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("need --iters >= 1, --warmup >= 0 and positive batch sizes")
    return args


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.meta_only:
        info = header(None)
        print(f"  config: {args.config} on the meta device (no memory allocated)")
        tokenizer, transformer, model = build(args.config, torch.device("meta"), args.seed)
        counts = param_counts(tokenizer, transformer)
        tr = counts["transformer_incl_diffusion_head"]
        print(f"  transformer weights: {tr * 4 / 2**30:.2f} GiB fp32, {tr * 2 / 2**30:.2f} GiB bf16")
        payload = {**info, "config": args.config, "meta_only": True, "model": model, "params": counts}
        write_json(args.json, payload)
        return payload

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    info = header(device)
    print(f"  config: {args.config}, dtype {args.dtype} (transformer; tokenizer + diffusion head fp32), "
          f"cfg {args.cfg}, diffusion steps {args.steps}, warmup {args.warmup}, iters {args.iters}, "
          f"seed {args.seed}, sdpa {args.sdpa}, autocast {args.autocast}, fast decode {args.decode_dtype}, "
          f"tf32 {args.tf32}; "
          "text encoder excluded (random context, full mask)")
    tokenizer, transformer, model = build(args.config, device, args.seed)
    counts = param_counts(tokenizer, transformer)
    # same placement/dtype logic as HARTPipeline.to: tokenizer fp32, transformer in dtype, head fp32
    HARTPipeline(tokenizer, transformer).to(device, dtype)
    transformer.diffusion_head.set_sampling_steps(args.steps)

    results = []
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast])
                if args.autocast != "off" else contextlib.nullcontext())
    with torch.inference_mode(), sdpa_context(args.sdpa, device), autocast:
        decode_dtype = DTYPES[args.decode_dtype]
        fast_paths = {path: fast_path(transformer, path, None if path == "eager" else decode_dtype)
                      for path in args.paths}
        for batch in args.batch_sizes:
            for path in args.paths:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                r = {"path": path, **bench_batch(tokenizer, transformer, batch, args, device, dtype, sync,
                                                 fast_paths[path])}
                if args.count_ops:
                    r["top_level_ops"] = top_level_ops(tokenizer, transformer, batch, args, device, dtype, sync,
                                                       fast_paths[path])
                print_result(r)
                results.append(r)
                if fast_paths[path] is not None:
                    fast_paths[path].release()  # one path's KV cache at a time
        print_comparison(results)
        if args.profile is not None:
            profile_once(tokenizer, transformer, args.batch_sizes[0], args, device, dtype, sync)
    payload = {
        **info,
        "config": args.config,
        "device": str(device),
        "dtype": args.dtype,
        "cfg": args.cfg,
        "diffusion_steps": args.steps,
        "warmup": args.warmup,
        "iters": args.iters,
        "seed": args.seed,
        "sdpa": args.sdpa,
        "autocast": args.autocast,
        "decode_dtype": args.decode_dtype,
        "tf32": args.tf32,
        "paths": args.paths,
        "text_encoder": "excluded (random context, full mask)",
        "model": model,
        "params": counts,
        "results": results,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
