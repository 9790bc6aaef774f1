"""Evaluate a unified model on worlds whose truth is known exactly:

- text-to-image prompt adherence on held-out Shapes World prompts (colour x shape combinations never
  seen in training), judged by the analytic detector, GenEval-style: colour, shape, position, count
  and overall (everything right);
- captioning (the caption must name exactly the right objects and places) and QA exact match on
  held-out Shapes World images;
- digits: text-to-image accuracy judged by a classifier trained on the real digits (its own held-out
  accuracy is reported beside it), and captioning accuracy on real test digits;
- sampling speed on this machine (images/s, captions/s).

    python -m recipes.eval.evaluate MODEL_DIR --out eval.json      (or: hart-unified eval)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recipes.machine import cpu_model


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


# `split="train"` scenes start here, past every sample `write_shards` draws for training (N <= 1e6): a
# validation set of the training distribution, for choosing sampling settings without the held-out split
VALIDATION_START = 1_000_000


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


@torch.no_grad()
def evaluate(model, n: int = 200, batch_size: int = 32, cfg: float | None = None, seed: int = 0,
             progress: bool = True, split: str = "heldout", top_k: int | None = None) -> dict:
    from recipes.data.digits import Digits
    from recipes.data.digits import parse_caption as parse_digit
    from recipes.data.shapes import ShapesWorld, parse_caption
    from recipes.eval.detector import caption_correct, detect, score
    from recipes.eval.digits_classifier import default_classifier

    size = model.codecs["image"].image_size[0]
    cfg = model.config.head("image").default_cfg if cfg is None else cfg
    top_k = model.config.head("image").default_top_k if top_k is None else top_k
    world = ShapesWorld(seed=0, image_size=size)
    bar = tqdm(total=5, desc="eval", disable=not progress)
    out: dict = {}

    # text-to-image prompt adherence on held-out prompts
    start = split_start(split)
    prompts = world.prompts(split, n, start=start)
    t0 = time.perf_counter()
    images = torch.cat([model.generate_image(b, cfg=cfg, top_k=top_k, seed=seed + i)
                        for i, b in enumerate(_batches(prompts, batch_size))])
    t2i_time = time.perf_counter() - t0
    per = [score(parse_caption(p), detect(img)) for p, img in zip(prompts, images.cpu(), strict=True)]
    keys = ("colour", "shape", "position", "count", "overall")
    out["shapes_t2i"] = {k: float(np.mean([s[k] for s in per])) for k in keys}
    out["shapes_t2i"]["n"] = len(prompts)
    bar.update()

    # captioning and QA on held-out images
    samples = [world.sample(start + i, split) for i in range(n)]
    t0 = time.perf_counter()
    captions = [c for b in _batches(samples, batch_size)
                for c in model.caption([s["image"] for s in b], max_new_tokens=40)]
    caption_time = time.perf_counter() - t0
    out["shapes_caption"] = {"accuracy": float(np.mean([caption_correct(c, s["objects"])
                                                        for c, s in zip(captions, samples, strict=True)])),
                             "n": len(samples)}
    answers = [a for b in _batches(samples, batch_size)
               for a in model.answer([s["image"] for s in b], [s["question"] for s in b], max_new_tokens=8)]
    exact = [a.strip() == s["answer"] for a, s in zip(answers, samples, strict=True)]
    out["shapes_qa"] = {"exact_match": float(np.mean(exact)), "n": len(samples)}
    bar.update()

    # digits: text-to-image judged by the classifier, captioning of real test digits
    digits = Digits(image_size=size, seed=0)
    clf = default_classifier(size)
    digit_prompts = digits.prompts("test", n)
    gen = torch.cat([model.generate_image([c for c, _ in b], cfg=cfg, top_k=top_k, seed=seed + 1000 + i)
                     for i, b in enumerate(_batches(digit_prompts, batch_size))])
    predicted = clf.predict(gen.cpu())
    labels = np.array([label for _, label in digit_prompts])
    out["digits_t2i"] = {"accuracy": float((predicted == labels).mean()), "n": len(labels),
                         "classifier_heldout_accuracy": float(clf.heldout_accuracy)}
    bar.update()
    test = [digits.test[i] for i in range(min(n, len(digits.test)))]
    digit_captions = [c for b in _batches(test, batch_size)
                      for c in model.caption([s["image"] for s in b], max_new_tokens=12)]

    def parsed(c):
        try:
            return parse_digit(c)
        except ValueError:
            return -1

    right = [parsed(c) == s["label"] for c, s in zip(digit_captions, test, strict=True)]
    out["digits_caption"] = {"accuracy": float(np.mean(right)), "n": len(test)}
    bar.update()
    out["speed"] = {"images_per_s": len(prompts) / t2i_time, "captions_per_s": len(samples) / caption_time,
                    "batch_size": batch_size, "device": str(model.device), "cpu": cpu_model(),
                    "torch_threads": torch.get_num_threads()}
    out["settings"] = {"n": n, "cfg": cfg, "top_k": top_k, "seed": seed, "image_size": size, "split": split}
    out["examples"] = [{"prompt": p, "score": s} for p, s in zip(prompts[:5], per[:5], strict=True)]
    out["examples"] += [{"image": s["key"], "caption": c, "truth": s["caption"]}
                        for c, s in zip(captions[:5], samples[:5], strict=True)]
    bar.update()
    bar.close()
    return out


def table(results: dict) -> str:
    t = results["shapes_t2i"]
    d = results["digits_t2i"]
    which = "held-out" if results["settings"].get("split", "heldout") == "heldout" else "training-split"
    rows = [
        (f"Shapes text-to-image, overall ({which} prompts)", t["overall"]),
        ("  colour / shape / position / count",
         f"{t['colour']:.3f} / {t['shape']:.3f} / {t['position']:.3f} / {t['count']:.3f}"),
        (f"Shapes captioning, exact attributes ({which} images)", results["shapes_caption"]["accuracy"]),
        (f"Shapes QA, exact match ({which} images)", results["shapes_qa"]["exact_match"]),
        ("Digits text-to-image, classifier accuracy", d["accuracy"]),
        ("  (classifier's own held-out accuracy on real digits)", d["classifier_heldout_accuracy"]),
        ("Digits captioning accuracy (real test digits)", results["digits_caption"]["accuracy"]),
        ("Sampling speed, images/s | captions/s",
         f"{results['speed']['images_per_s']:.1f} | {results['speed']['captions_per_s']:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {v:.3f}" if isinstance(v, float) else f"{name:<{width}}  {v}"
                     for name, v in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation options, shared by `python -m recipes.eval.evaluate` and `hart-unified eval`."""
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--n", type=int, default=200, help="prompts / images per measurement (default 200)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's default_cfg)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="text-to-image top-k (default: the model's default_top_k; 0 = no filtering)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout",
                        help="Shapes World prompts/images: held-out combinations (the benchmark, default) or "
                             "fresh training-split scenes (for choosing settings such as --cfg)")


def run(model, args: argparse.Namespace, progress: bool = True) -> int:
    """Evaluate with the options of `add_arguments`, print the table, write the JSON if asked."""
    results = evaluate(model, n=args.n, batch_size=args.batch_size, cfg=args.cfg, seed=args.seed,
                       progress=progress, split=args.split, top_k=args.top_k)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.eval.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="unified model folder")
    add_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    model = load_model(args.model, args.device)
    return 2 if model is None else run(model, args)


if __name__ == "__main__":
    sys.exit(main())
