"""Evaluate a unified model with the evaluation suites registered here (`EVAL_SUITES`); by default every
suite that applies to the model's modalities. Built in, on worlds whose truth is known exactly:

- "shapes": text-to-image prompt adherence on held-out Shapes World prompts (colour x shape
  combinations never seen in training), judged by the analytic detector, GenEval-style: colour, shape,
  position, count and overall (everything right); captioning (the caption must name exactly the right
  objects and places) and QA exact match on held-out Shapes World images;
- "digits": text-to-image accuracy judged by a classifier trained on the real digits (its own held-out
  accuracy is reported beside it), and captioning accuracy on real test digits;
- "speed": sampling speed on this machine (images/s, captions/s), from the shapes suite's timings;
- "moving_shapes" (video models, `video_suite.py`) and "tones" (audio models, `tones_suite.py`).

A new suite is a function `(model, ctx) -> {field: result}` under `@register_suite(name, modalities=...)`,
with a `table` of its rows for the printed summary.

    python -m recipes.eval.evaluate MODEL_DIR --out eval.json      (or: hart-unified eval [--suite NAME])
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recipes.arguments import default_device, device, finite_float, non_negative_int, positive_int
from recipes.data.shapes import VALIDATION_START
from recipes.machine import cpu_model
from recipes.media import atomic_write


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def split_start(split: str) -> int:
    """Index of the first Shapes World scene an evaluation of `split` uses: held-out scenes from 0, fresh
    training-split scenes from VALIDATION_START."""
    if split not in ("heldout", "train"):
        raise ValueError(f"split must be 'heldout' or 'train', not {split!r}")
    return VALIDATION_START if split == "train" else 0


def load_model(folder: str, device: str):
    """The unified model in `folder` on `device` for an evaluation command, or None after printing why not."""
    from unified import UnifiedModel

    try:
        return UnifiedModel.from_pretrained(folder).to(torch.device(device)).eval()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


@dataclass
class EvalContext:
    """The options every suite reads, and what suites leave for later ones (timings, examples)."""

    n: int = 200
    batch_size: int = 32
    cfg: float | None = None  # None: each modality's default_cfg
    top_k: int | None = None
    seed: int = 0
    split: str = "heldout"
    video_frames: int = 8
    timings: dict[str, tuple[int, float]] = field(default_factory=dict)  # "images"/"captions": (count, seconds)
    examples: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Suite:
    name: str
    modalities: tuple[str, ...]  # the codecs a model needs for this suite to apply
    run: Callable[..., dict]  # (model, ctx) -> {result field: value}
    table: Callable[[dict, str], list[tuple[str, object]]]  # (results, split word) -> printed rows


EVAL_SUITES: dict[str, Suite] = {}


def register_suite(name: str, modalities: tuple[str, ...] = ("image",),
                   table: Callable[[dict, str], list[tuple[str, object]]] = lambda results, which: [],
                   ) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Decorator: `run(model, ctx) -> dict` becomes the suite `name`, run by default on models with
    every one of `modalities`."""
    def deco(run: Callable[..., dict]) -> Callable[..., dict]:
        if name in EVAL_SUITES:
            raise ValueError(f"evaluation suite {name!r} is already registered")
        EVAL_SUITES[name] = Suite(name, tuple(modalities), run, table)
        return run

    return deco


def applicable_suites(model) -> list[str]:
    """The registered suites whose modalities the model has, in registration order."""
    return [name for name, s in EVAL_SUITES.items() if all(m in model.codecs for m in s.modalities)]


def choose_suites(model, names: list[str] | None) -> list[str]:
    """`names` checked against the registry and the model (None: every applicable suite)."""
    if not names:
        return applicable_suites(model)
    for name in names:
        if name not in EVAL_SUITES:
            raise ValueError(f"unknown evaluation suite {name!r} (known: {', '.join(EVAL_SUITES)})")
        missing = [m for m in EVAL_SUITES[name].modalities if m not in model.codecs]
        if missing:
            raise ValueError(f"evaluation suite {name!r} needs a model with {' and '.join(missing)} "
                             f"(this one has: {', '.join(model.codecs)})")
    return list(dict.fromkeys(names))


@torch.no_grad()
def evaluate(model, n: int = 200, batch_size: int = 32, cfg: float | None = None, seed: int = 0,
             progress: bool = True, split: str = "heldout", top_k: int | None = None,
             suites: list[str] | None = None, video_frames: int = 8) -> dict:
    """{suite results..., "settings", "examples"} for the chosen suites (default: all that apply)."""
    names = choose_suites(model, suites)
    split_start(split)  # checks the name
    ctx = EvalContext(n, batch_size, cfg, top_k, seed, split, video_frames)  # None: each modality's own default
    if "image" in model.codecs:  # the image suites' settings, recorded
        cfg = model.config.head("image").default_cfg if cfg is None else cfg
        top_k = model.config.head("image").default_top_k if top_k is None else top_k
    out: dict = {}
    for name in tqdm(names, desc="eval", disable=not progress):
        out.update(EVAL_SUITES[name].run(model, ctx))
    out["settings"] = {"n": n, "cfg": cfg, "top_k": top_k, "seed": seed}
    if "image" in model.codecs:
        out["settings"]["image_size"] = model.codecs["image"].image_size[0]
    out["settings"]["split"] = split
    if "video" in model.codecs:
        out["settings"]["video_frames"] = video_frames
    if suites:
        out["settings"]["suites"] = names
    if ctx.examples:
        out["examples"] = ctx.examples
    return out


def _timed(ctx: EvalContext, what: str, count: int, fn: Callable[[], object]):
    t0 = time.perf_counter()
    result = fn()
    ctx.timings[what] = (count, time.perf_counter() - t0)
    return result


def _shapes_table(results: dict, which: str) -> list[tuple[str, object]]:
    t = results["shapes_t2i"]
    return [
        (f"Shapes text-to-image, overall ({which} prompts)", t["overall"]),
        ("  colour / shape / position / count",
         f"{t['colour']:.3f} / {t['shape']:.3f} / {t['position']:.3f} / {t['count']:.3f}"),
        (f"Shapes captioning, exact attributes ({which} images)", results["shapes_caption"]["accuracy"]),
        (f"Shapes QA, exact match ({which} images)", results["shapes_qa"]["exact_match"]),
    ]


@register_suite("shapes", table=_shapes_table)
def shapes_suite(model, ctx: EvalContext) -> dict:
    """Text-to-image adherence, captioning and QA on Shapes World scenes of `ctx.split`."""
    from recipes.data.shapes import ShapesWorld, parse_caption
    from recipes.eval.detector import caption_correct, detect, score

    world = ShapesWorld(seed=0, image_size=model.codecs["image"].image_size[0])
    out: dict = {}
    start = split_start(ctx.split)
    prompts = world.prompts(ctx.split, ctx.n, start=start)
    images = _timed(ctx, "images", len(prompts), lambda: torch.cat([
        model.generate_image(b, cfg=ctx.cfg, top_k=ctx.top_k, seed=ctx.seed + i)
        for i, b in enumerate(_batches(prompts, ctx.batch_size))]))
    per = [score(parse_caption(p), detect(img)) for p, img in zip(prompts, images.cpu(), strict=True)]
    keys = ("colour", "shape", "position", "count", "overall")
    out["shapes_t2i"] = {k: float(np.mean([s[k] for s in per])) for k in keys}
    out["shapes_t2i"]["n"] = len(prompts)

    samples = [world.sample(start + i, ctx.split) for i in range(ctx.n)]
    captions = _timed(ctx, "captions", len(samples), lambda: [
        c for b in _batches(samples, ctx.batch_size)
        for c in model.describe([s["image"] for s in b], modality="image", max_new_tokens=40)])
    out["shapes_caption"] = {"accuracy": float(np.mean([caption_correct(c, s["objects"])
                                                        for c, s in zip(captions, samples, strict=True)])),
                             "n": len(samples)}
    answers = [a for b in _batches(samples, ctx.batch_size)
               for a in model.describe([s["image"] for s in b], modality="image",
                                       question=[s["question"] for s in b], max_new_tokens=8)]
    exact = [a.strip() == s["answer"] for a, s in zip(answers, samples, strict=True)]
    out["shapes_qa"] = {"exact_match": float(np.mean(exact)), "n": len(samples)}
    ctx.examples += [{"prompt": p, "score": s} for p, s in zip(prompts[:5], per[:5], strict=True)]
    ctx.examples += [{"image": s["key"], "caption": c, "truth": s["caption"]}
                     for c, s in zip(captions[:5], samples[:5], strict=True)]
    return out


def _digits_table(results: dict, which: str) -> list[tuple[str, object]]:
    d = results["digits_t2i"]
    return [
        ("Digits text-to-image, classifier accuracy", d["accuracy"]),
        ("  (classifier's own held-out accuracy on real digits)", d["classifier_heldout_accuracy"]),
        ("Digits captioning accuracy (real test digits)", results["digits_caption"]["accuracy"]),
    ]


@register_suite("digits", table=_digits_table)
def digits_suite(model, ctx: EvalContext) -> dict:
    """Digits drawn from "the digit N" prompts, judged by a classifier; captions of real test digits."""
    from recipes.data.digits import Digits
    from recipes.data.digits import parse_caption as parse_digit
    from recipes.eval.digits_classifier import default_classifier

    size = model.codecs["image"].image_size[0]
    digits = Digits(image_size=size, seed=0)
    clf = default_classifier(size)
    digit_prompts = digits.prompts("test", ctx.n)
    gen = torch.cat([model.generate_image([c for c, _ in b], cfg=ctx.cfg, top_k=ctx.top_k, seed=ctx.seed + 1000 + i)
                     for i, b in enumerate(_batches(digit_prompts, ctx.batch_size))])
    predicted = clf.predict(gen.cpu())
    labels = np.array([label for _, label in digit_prompts])
    out = {"digits_t2i": {"accuracy": float((predicted == labels).mean()), "n": len(labels),
                          "classifier_heldout_accuracy": float(clf.heldout_accuracy)}}
    test = [digits.test[i] for i in range(min(ctx.n, len(digits.test)))]
    digit_captions = [c for b in _batches(test, ctx.batch_size)
                      for c in model.describe([s["image"] for s in b], modality="image", max_new_tokens=12)]

    def parsed(c):
        try:
            return parse_digit(c)
        except ValueError:
            return -1

    right = [parsed(c) == s["label"] for c, s in zip(digit_captions, test, strict=True)]
    out["digits_caption"] = {"accuracy": float(np.mean(right)), "n": len(test)}
    return out


def _speed_table(results: dict, which: str) -> list[tuple[str, object]]:
    s = results["speed"]
    return [("Sampling speed, images/s | captions/s", f"{s['images_per_s']:.1f} | {s['captions_per_s']:.1f}")]


@register_suite("speed", table=_speed_table)
def speed_suite(model, ctx: EvalContext) -> dict:
    """Images/s and captions/s at `ctx.batch_size`: the shapes suite's own timings when it ran, else one
    batch of Shapes World prompts and scenes timed here."""
    if "images" not in ctx.timings or "captions" not in ctx.timings:
        from recipes.data.shapes import ShapesWorld

        world = ShapesWorld(seed=0, image_size=model.codecs["image"].image_size[0])
        start = split_start(ctx.split)
        prompts = world.prompts(ctx.split, ctx.batch_size, start=start)
        scenes = [world.sample(start + i, ctx.split)["image"] for i in range(ctx.batch_size)]
        _timed(ctx, "images", len(prompts), lambda: model.generate_image(prompts, cfg=ctx.cfg, top_k=ctx.top_k,
                                                                          seed=ctx.seed))
        _timed(ctx, "captions", len(scenes), lambda: model.describe(scenes, modality="image", max_new_tokens=40))
    (n_images, t_images), (n_captions, t_captions) = ctx.timings["images"], ctx.timings["captions"]
    return {"speed": {"images_per_s": n_images / t_images, "captions_per_s": n_captions / t_captions,
                      "batch_size": ctx.batch_size, "device": str(model.device), "cpu": cpu_model(),
                      "torch_threads": torch.get_num_threads()}}


def table(results: dict) -> str:
    """The printed summary: each suite's rows, for the suites that produced results."""
    which = "held-out" if results["settings"].get("split", "heldout") == "heldout" else "training-split"
    rows = []
    for suite in EVAL_SUITES.values():
        try:
            rows += suite.table(results, which)
        except KeyError:  # the suite did not run
            continue
    if not rows:
        return "(no results)"
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {v:.3f}" if isinstance(v, float) else f"{name:<{width}}  {v}"
                     for name, v in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation options, shared by `python -m recipes.eval.evaluate` and `hart-unified eval`."""
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--n", type=positive_int, default=200, help="prompts / images per measurement (default 200)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--cfg", type=finite_float, default=None,
                        help="guidance scale (default: the model's default_cfg)")
    parser.add_argument("--top-k", type=non_negative_int, default=None,
                        help="text-to-image top-k (default: the model's default_top_k; 0 = no filtering)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout",
                        help="Shapes World prompts/images: held-out combinations (the benchmark, default) or "
                             "fresh training-split scenes (for choosing settings such as --cfg)")
    parser.add_argument("--video-frames", type=positive_int, default=8,
                        help="frames per clip of the video suites (default 8)")
    parser.add_argument("--suite", action="append", default=None,
                        help=f"an evaluation suite to run ({', '.join(EVAL_SUITES)}); repeat for several (default: "
                             "every suite that applies to the model's modalities)")


def run(model, args: argparse.Namespace, progress: bool = True) -> int:
    """Evaluate with the options of `add_arguments`, print the table, write the JSON if asked."""
    results = evaluate(model, n=args.n, batch_size=args.batch_size, cfg=args.cfg, seed=args.seed,
                       progress=progress, split=args.split, top_k=args.top_k, suites=args.suite,
                       video_frames=args.video_frames)
    print(table(results))
    if args.out:
        atomic_write(Path(args.out), lambda p: p.write_text(json.dumps(results, indent=1) + "\n"))
        print(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.eval.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="unified model folder")
    add_arguments(parser)
    parser.add_argument("--device", type=device, default=default_device())
    args = parser.parse_args(argv)
    model = load_model(args.model, args.device)
    if model is None:
        return 2
    try:
        return run(model, args)
    except ValueError as e:  # e.g. a suite the model has no codec for
        print(f"error: {e}", file=sys.stderr)
        return 2


from . import tones_suite, video_suite  # noqa: E402,F401  (they register the "tones" and "moving_shapes" suites)

if __name__ == "__main__":
    # run the imported module's main, whose registry the suites above registered into (under -m this file
    # is also `__main__`, a second copy with its own registry)
    from recipes.eval.evaluate import main as registered_main

    sys.exit(registered_main())
