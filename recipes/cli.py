"""The `hart-unified` command line.

Unified model (the shipped default model unless --model DIR):
    hart-unified generate --prompt "a red circle in the top left" --out circle.png --previews
    hart-unified generate --modality image --segments 1 ...   # any modality the model and recipes can write
    hart-unified caption photo.png other.png       # or clip.mp4: what happens in it
    hart-unified ask --image photo.png --question "what colour is the circle?"
    hart-unified generate --modality video --segments 8 --prompt "a red circle moving right" --out clip.mp4 --gif
    hart-unified generate --modality video --segments 8 --given start.mp4 --given-segments 2   # continuation
    hart-unified audio continue in.wav --seconds 2 --out out.wav   # audio continuation (Tone World model)
    hart-unified generate --model DIR --modality audio --segments 4 --prompt "a rising scale on a saw wave" --out a.wav
    hart-unified demo --out demo/                  # prompts -> images -> captions, with an index page
    hart-unified eval --out eval.json              # prompt adherence, caption/QA accuracy, digits, speed
    hart-unified eval --suite digits               # one evaluation suite (default: all that apply)
    hart-unified train RECIPE [key=value ...]      # the DeepSpeed trainer (see recipes/configs/)
    hart-unified serve [--host 127.0.0.1] [--port 8000]   # HTTP API + web page (needs the serve extra)
Released HART weights:
    hart-unified t2i --hart DIR --text-encoder DIR --prompt "a lemur in a red hat" --out lemur.png
    hart-unified t2i --debug-model --prompt "anything" --out noise.png     # tiny random model
    hart-unified convert --hart DIR --out DIR                              # released HART -> ours
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hart_core.fast_generate import PATHS
from modalities.audio_io import WRITE_FORMATS

from .arguments import (
    default_device,
    describe_error,
    device,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from .eval.evaluate import add_arguments as add_eval_arguments
from .media import (
    DEFAULT_OUT,
    WRITERS,
    check_writable,
    given_frames,
    modality_of,
    output_paths,
    read_clip,
    read_images,
    read_prompts,
    read_sound,
    save_images,
    write_audio_items,
    write_prompts,
)

EXIT_BAD_INPUT = 2


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def cmd_t2i(args: argparse.Namespace) -> int:
    from hart_core.pipeline import HARTPipeline
    from hart_core.text_encoder import HART_SYSTEM_PROMPT, TextEncoder

    prompts = read_prompts(args.prompt, args.prompts_file)
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompts-file")
    check_writable(Path(args.out))  # before any compute
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
    pipe.to(device, _dtype(args.dtype)).use_path(args.path, _dtype(args.decode_dtype))
    if args.steps is not None:
        pipe.transformer.diffusion_head.set_sampling_steps(args.steps)
    paths = output_paths(Path(args.out), len(prompts))
    write_prompts(Path(args.out), prompts)
    batches = pipe.batches(prompts, cfg=args.cfg, seed=args.seed, top_k=args.top_k, top_p=args.top_p,
                           more_smooth=args.more_smooth, batch_size=args.batch_size, progress=not args.quiet)
    for start, images in batches:  # each batch written (atomically) as soon as it is made
        for path in save_images(images, paths[start : start + len(images)]):
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


DEFAULT_MODEL = Path(__file__).resolve().parent / "pretrained" / "shapes"
DEFAULT_AUDIO_MODEL = Path(__file__).resolve().parent / "pretrained" / "tones"


def _load_unified(args: argparse.Namespace, default: Path = DEFAULT_MODEL):
    from unified import UnifiedModel

    folder = Path(args.model) if args.model else default
    if not folder.is_dir():
        if args.model:
            raise FileNotFoundError(f"model folder {folder} does not exist")
        raise FileNotFoundError(f"the default model is not installed at {folder}; pass --model DIR")
    model = UnifiedModel.from_pretrained(folder).to(torch.device(args.device))
    return model.eval()


def cmd_generate(args: argparse.Namespace) -> int:
    if args.modality not in WRITERS:
        raise ValueError(f"no writer for {args.modality!r} items in recipes (it writes: {', '.join(WRITERS)})")
    out = Path(args.out or DEFAULT_OUT[args.modality])
    prompts = read_prompts(args.prompt, args.prompts_file)
    if args.given and not Path(args.given).is_file():
        raise FileNotFoundError(f"--given {args.given} does not exist")
    check_writable(out)  # before any compute
    model = _load_unified(args)
    model.config.head(args.modality)  # a clear error when the model has no such modality
    given = (given_frames(model.codecs[args.modality], args.given, args.given_segments, args.segments)
             if args.given else None)
    if not prompts and given is None:
        raise ValueError("give at least one --prompt or a --prompts-file (or --given frames to continue)")
    if args.previews and args.modality != "image":
        raise ValueError("--previews writes images: only for --modality image")
    from tqdm.auto import tqdm

    rows: list[str | None] = list(prompts) or [None]  # None: continue the given frames without a prompt
    paths = output_paths(out, len(rows))
    write_prompts(out, prompts)
    for start in tqdm(range(0, len(rows), args.batch_size), desc="generating", disable=args.quiet):
        batch = rows[start : start + args.batch_size]
        steps: list[torch.Tensor] = []
        callback = (lambda k, n, img, steps=steps: steps.append(img.cpu())) if args.previews else None
        items = model.generate(None if batch == [None] else batch, modality=args.modality, segments=args.segments,
                               given=None if given is None else [given] * len(batch), cfg=args.cfg,
                               seed=args.seed + start, top_k=args.top_k, callback=callback)
        # each batch is written as soon as it is made: a crash later loses nothing written so far
        written = WRITERS[args.modality]((items[:, None] if args.segments == 1 else items).cpu(),
                                         paths[start : start + len(batch)], gif=args.gif,
                                         codec=model.codecs[args.modality])
        if args.previews:  # one strip per prompt: scale 1 .. K (of every segment), coarse to fine
            strips = [torch.cat([s[i] for s in steps], dim=2) for i in range(len(batch))]
            mine = paths[start : start + len(batch)]
            save_images(torch.stack(strips), [p.with_name(f"{p.stem}_scales.png") for p in mine])
        for p in written:
            print(p)
    return 0


def _read_items(model, paths: list[str], frames: int | None = None) -> tuple[str, list]:
    """Image, video or audio files (by their suffix) as the model's codec of that modality reads them."""
    kinds = {modality_of(p) for p in paths}
    if len(kinds) > 1:
        raise ValueError(f"give files of one kind in one call, not {' and '.join(sorted(kinds))}")
    modality = kinds.pop()
    if modality not in model.codecs:
        raise ValueError(f"this model has no {modality} codec (it has: {', '.join(model.codecs)})")
    codec = model.codecs[modality]
    if modality == "image":
        return modality, read_images(paths, codec.image_size)
    if modality == "audio":
        return modality, [read_sound(p, codec) for p in paths]
    return modality, [read_clip(p, codec.frame_size, frames) for p in paths]


def cmd_audio_continue(args: argparse.Namespace) -> int:
    _check_files([args.file])
    out = Path(args.out)
    if out.suffix.lower() not in WRITE_FORMATS:
        raise ValueError(f"--out {out}: audio is written as {', '.join(WRITE_FORMATS)}")
    check_writable(out)  # before any compute
    model = _load_unified(args, DEFAULT_AUDIO_MODEL)
    codec = model.codecs.get("audio")
    if codec is None:
        raise ValueError(f"this model has no audio codec (it has: {', '.join(model.codecs)})")
    wave = read_sound(args.file, codec)
    audio = model.continue_audio(wave, args.seconds, prompts=[args.prompt] if args.prompt else None, cfg=args.cfg,
                                 top_k=args.top_k, seed=args.seed)
    if args.only_new:  # the written chunks are the last ones (continue_audio returns the given ones first)
        audio = audio[:, -codec.segments_for(args.seconds) * codec.chunk :]
    print(write_audio_items(audio[:, None].cpu(), [out], codec=codec)[0])
    return 0


def _check_files(paths: list[str]) -> None:
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist" if not p.exists() else f"{p} is not a file")


def cmd_caption(args: argparse.Namespace) -> int:
    _check_files(args.files)  # before the model loads
    model = _load_unified(args)
    modality, items = _read_items(model, args.files, args.frames)
    texts = model.describe(items, modality=modality, max_new_tokens=args.max_new_tokens)
    for path, text in zip(args.files, texts, strict=True):
        print(f"{path}\t{text}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    _check_files([args.image])
    if not args.question.strip("\x00 \t\n"):
        raise ValueError("empty question")
    model = _load_unified(args)
    modality, items = _read_items(model, [args.image], args.frames)
    print(model.describe(items, modality=modality, question=args.question, max_new_tokens=args.max_new_tokens)[0])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    check_writable(Path(args.out) / "index.html")  # before any compute
    print(run_demo(_load_unified(args), args.out, args.prompt, args.cfg, args.seed, args.frames))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.evaluate import run

    try:
        import sklearn  # noqa: F401  (the digits judge)
    except ImportError:
        raise ValueError("hart-unified eval needs scikit-learn: pip install -e '.[train]'") from None
    if args.out:
        check_writable(Path(args.out))  # before minutes of evaluation
    return run(_load_unified(args), args, progress=not args.quiet)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import main as train_main

    train_main([args.recipe, *args.overrides, *(["--resume"] if args.resume else [])])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.run import serve

    return serve(_load_unified(args), args, Path(args.model).name if args.model else DEFAULT_MODEL.name)


def _unified_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="unified model folder (default: the shipped model)")
    p.add_argument("--device", type=device, default=default_device())


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
    src.add_argument("--max-length", type=positive_int, default=None,
                     help="text context slots (default: the model's context_token, 300 for HART)")
    src.add_argument("--no-system-prompt", action="store_true", help="encode prompts without HART's system prompt")
    t2i.add_argument("--prompt", action="append", help="a prompt; repeat for several images")
    t2i.add_argument("--prompts-file", help="text file with one prompt per line")
    t2i.add_argument("--out", default="hart.png", help="output PNG; several prompts give OUT_000.png, ...")
    t2i.add_argument("--cfg", type=finite_float, default=4.5, help="classifier-free guidance scale (default 4.5)")
    t2i.add_argument("--seed", type=int, default=0)
    t2i.add_argument("--steps", type=positive_int, default=None,
                     help="diffusion-head sampling steps (default: model's, 8)")
    t2i.add_argument("--top-k", type=non_negative_int, default=None,
                     help="default: the released schedule (600, then 300)")
    t2i.add_argument("--top-p", type=probability, default=0.0)
    t2i.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax smoothing of the codes")
    t2i.add_argument("--batch-size", type=positive_int, default=4)
    t2i.add_argument("--device", type=device, default=default_device())
    t2i.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    t2i.add_argument("--path", choices=PATHS, default="fast",
                     help="generation path: fast (default: static KV cache, fused ops), eager (the reference, "
                          "bit-exact with the released code) or compiled (fast + torch.compile / CUDA graphs; "
                          "compiles for minutes first, pays off on a GPU)")
    t2i.add_argument("--decode-dtype", choices=("fp32", "bf16"), default="fp32",
                     help="VAE decode precision on the fast and compiled paths (bf16: faster on GPUs, pixels "
                          "within ~5 levels of 255 of fp32's; the eager path always decodes in fp32)")
    t2i.add_argument("--quiet", action="store_true", help="no progress bar")
    t2i.set_defaults(func=cmd_t2i)

    gen = sub.add_parser("generate", help="text -> image (or another modality) with a unified model",
                         description="Generate items (images by default) from prompts with a unified model.")
    _unified_args(gen)
    gen.add_argument("--modality", default="image",
                     help=f"what to write (default image; recipes can write: {', '.join(WRITERS)})")
    gen.add_argument("--segments", type=positive_int, default=1,
                     help="segments per item (frames, chunks; default 1); several give OUT_sJJ files")
    gen.add_argument("--prompt", action="append", help="a prompt; repeat for several images")
    gen.add_argument("--prompts-file", help="text file with one prompt per line")
    gen.add_argument("--out", default=None,
                     help="output file (default image.png, video.mp4); several prompts give OUT_000.png, ...")
    gen.add_argument("--given", help="video: continue the first frames of this video file, or this image as the "
                                     "first frame (image-to-video); prompts are optional then")
    gen.add_argument("--given-segments", type=positive_int, default=1,
                     help="frames of --given to continue from (default 1)")
    gen.add_argument("--gif", action="store_true", help="video: also write a GIF beside each mp4")
    gen.add_argument("--previews", action="store_true", help="also write OUT_scales.png: every scale, coarse to fine")
    gen.add_argument("--cfg", type=finite_float, default=None,
                     help="classifier-free guidance scale (default: the model's own, default_cfg in its config.json)")
    gen.add_argument("--top-k", type=non_negative_int, default=None,
                     help="top-k sampling (default: the model's own, default_top_k in its config.json; 0 = none)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=positive_int, default=8)
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=cmd_generate)

    cap = sub.add_parser("caption", help="image or video -> caption",
                         description="Caption images, or describe what happens in videos, with a unified model.")
    _unified_args(cap)
    cap.add_argument("files", nargs="+", help="image files, or video files (.mp4, .gif, ...); fitted to the model")
    cap.add_argument("--frames", type=positive_int, default=None,
                     help="videos: frames sampled evenly (default: every frame)")
    cap.add_argument("--max-new-tokens", type=positive_int, default=32)
    cap.set_defaults(func=cmd_caption)

    ask = sub.add_parser("ask", help="image + question -> answer", description="Ask a question about an image.")
    _unified_args(ask)
    ask.add_argument("--image", required=True, help="an image file, or a video file")
    ask.add_argument("--frames", type=positive_int, default=None,
                     help="videos: frames sampled evenly (default: every frame)")
    ask.add_argument("--question", required=True)
    ask.add_argument("--max-new-tokens", type=positive_int, default=16)
    ask.set_defaults(func=cmd_ask)

    demo = sub.add_parser("demo", help="a few prompts end to end, written to a folder with an index.html",
                          description="Generate, preview and caption a handful of prompts.")
    _unified_args(demo)
    demo.add_argument("--out", default="demo", help="output folder (default ./demo)")
    demo.add_argument("--prompt", action="append", help="replace the built-in prompts")
    demo.add_argument("--cfg", type=finite_float, default=None,
                      help="guidance scale (default: the model's default_cfg)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--frames", type=positive_int, default=4,
                      help="frames of each demo clip (video models; default 4)")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="prompt adherence, caption/QA accuracy, digits, speed",
                        description="Evaluate a unified model on held-out Shapes World prompts and images and on "
                                    "real digits; prints a table and writes JSON.")
    _unified_args(ev)
    add_eval_arguments(ev)
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    train = sub.add_parser("train", help="train with a YAML recipe (see recipes/configs/)",
                           description="Run the DeepSpeed trainer in this process; for several ranks launch "
                                       "`torchrun ... -m recipes.train` or `deepspeed --module recipes.train`.")
    train.add_argument("recipe")
    train.add_argument("overrides", nargs="*", help="key=value overrides")
    train.add_argument("--resume", action="store_true")
    train.set_defaults(func=cmd_train)

    from .serve.run import add_arguments as add_serve_arguments

    srv = sub.add_parser("serve", help="HTTP API and web page over a unified model",
                         description="Serve a unified model over HTTP: OpenAI-style POST /v1/images/generations, "
                                     "its streamed variant (each scale's preview), captions and answers about "
                                     "uploaded images, /health, the web page at / and the OpenAPI page at /docs. "
                                     "Concurrent requests are batched dynamically.")
    _unified_args(srv)
    add_serve_arguments(srv)
    srv.set_defaults(func=cmd_serve)

    audio = sub.add_parser("audio", help="audio with a unified model: continue a clip",
                           description="Audio prediction with a unified model (the shipped Tone World model unless "
                                       "--model DIR). Text-to-audio is `generate --modality audio --segments N`; "
                                       "captions of audio files are `caption FILE.wav`.")
    audio_sub = audio.add_subparsers(dest="audio_command", required=True)
    cont = audio_sub.add_parser("continue", help="continue an audio file",
                                description="Continue an audio file: its whole chunks are given to the model (a "
                                            "shorter tail is dropped), then it writes --seconds more.")
    _unified_args(cont)
    cont.add_argument("file", help="an audio file (.wav, .flac, .ogg, .mp3), resampled to the model's rate")
    cont.add_argument("--seconds", type=positive_float, default=2.0, help="seconds to add (default 2)")
    cont.add_argument("--out", default="continued.wav", help="output .wav/.flac/.ogg (default continued.wav)")
    cont.add_argument("--only-new", action="store_true", help="write only the new audio, not the given chunks")
    cont.add_argument("--prompt", help="optional text the continuation should follow (e.g. a caption)")
    cont.add_argument("--cfg", type=finite_float, default=None, help="guidance scale (default: the model's own)")
    cont.add_argument("--top-k", type=non_negative_int, default=None, help="top-k sampling (default: the model's own)")
    cont.add_argument("--seed", type=int, default=0)
    cont.set_defaults(func=cmd_audio_continue)

    conv = sub.add_parser("convert", help="convert a released HART folder to this project's format")
    conv.add_argument("--hart", required=True, help="released HART folder (llm/ + tokenizer/)")
    conv.add_argument("--out", required=True, help="output folder (transformer/ + tokenizer/)")
    conv.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input (files, folders, values): one clear line, no traceback
        print(f"error: {describe_error(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
