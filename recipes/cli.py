"""The `hart-unified` command line.

    hart-unified t2i --hart DIR --text-encoder DIR --prompt "a lemur in a red hat" --out lemur.png
    hart-unified t2i --debug-model --prompt "anything" --out noise.png     # tiny random model
    hart-unified convert --hart DIR --out DIR                              # released HART -> ours
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

EXIT_BAD_INPUT = 2


def _save_images(images: torch.Tensor, out: Path, prompts: list[str]) -> list[Path]:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(len(images))]
    for img, path in zip(images, paths, strict=True):
        array = img.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(array).save(path)
    if len(images) > 1:
        out.with_name(f"{out.stem}_prompts.txt").write_text("\n".join(prompts) + "\n")
    return paths


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def cmd_t2i(args: argparse.Namespace) -> int:
    from hart_core.pipeline import HARTPipeline
    from hart_core.text_encoder import HART_SYSTEM_PROMPT, TextEncoder

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompts-file")
    device = torch.device(args.device)
    if args.debug_model:
        from hart_core.debug import debug_pipeline

        print("note: --debug-model is a tiny RANDOMLY INITIALISED model; its images are noise.", file=sys.stderr)
        pipe = debug_pipeline()
    else:
        if not args.hart or not args.text_encoder:
            raise ValueError("--hart DIR and --text-encoder DIR are required (or --debug-model)")
        pipe = HARTPipeline.from_pretrained(args.hart)
        pipe.text_encoder = TextEncoder.from_pretrained(
            args.text_encoder, max_length=args.max_length or pipe.transformer.config.context_token,
            system_prompt=None if args.no_system_prompt else HART_SYSTEM_PROMPT,
            device=device, dtype=_dtype(args.dtype),
        )
    pipe.to(device, _dtype(args.dtype))
    if args.steps is not None:
        pipe.transformer.diffusion_head.set_sampling_steps(args.steps)
    images = pipe(
        prompts, cfg=args.cfg, seed=args.seed, top_k=args.top_k, top_p=args.top_p,
        more_smooth=args.more_smooth, batch_size=args.batch_size, progress=not args.quiet,
    )
    for path in _save_images(images, Path(args.out), prompts):
        print(path)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from hart_core.pipeline import HARTPipeline

    pipe = HARTPipeline.from_official(args.hart)
    pipe.save_pretrained(args.out)
    n_tr = sum(p.numel() for p in pipe.transformer.parameters())
    n_tok = sum(p.numel() for p in pipe.tokenizer.parameters())
    print(f"wrote {args.out}: transformer {n_tr / 1e6:.1f}M params, tokenizer {n_tok / 1e6:.1f}M params")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hart-unified", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t2i = sub.add_parser("t2i", help="text-to-image with HART weights", description="Generate images from text.")
    src = t2i.add_argument_group("model")
    src.add_argument("--hart", help="released HART folder (llm/ + tokenizer/) or a converted one")
    src.add_argument("--text-encoder", help="local Hugging Face LM folder (HART uses Qwen2-1.5B)")
    src.add_argument("--debug-model", action="store_true", help="tiny random model, to try the pipeline")
    src.add_argument("--max-length", type=int, default=None,
                     help="text context slots (default: the model's context_token, 300 for HART)")
    src.add_argument("--no-system-prompt", action="store_true", help="encode prompts without HART's system prompt")
    t2i.add_argument("--prompt", action="append", help="a prompt; repeat for several images")
    t2i.add_argument("--prompts-file", help="text file with one prompt per line")
    t2i.add_argument("--out", default="hart.png", help="output PNG; several prompts give OUT_000.png, ...")
    t2i.add_argument("--cfg", type=float, default=4.5, help="classifier-free guidance scale (default 4.5)")
    t2i.add_argument("--seed", type=int, default=0)
    t2i.add_argument("--steps", type=int, default=None, help="diffusion-head sampling steps (default: model's, 8)")
    t2i.add_argument("--top-k", type=int, default=None, help="default: the released schedule (600, then 300)")
    t2i.add_argument("--top-p", type=float, default=0.0)
    t2i.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax smoothing of the codes")
    t2i.add_argument("--batch-size", type=int, default=4)
    t2i.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t2i.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    t2i.add_argument("--quiet", action="store_true", help="no progress bar")
    t2i.set_defaults(func=cmd_t2i)

    conv = sub.add_parser("convert", help="convert a released HART folder to this project's format")
    conv.add_argument("--hart", required=True, help="released HART folder (llm/ + tokenizer/)")
    conv.add_argument("--out", required=True, help="output folder (transformer/ + tokenizer/)")
    conv.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
