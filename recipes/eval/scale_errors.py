"""Which scales does a unified model get wrong? Text-to-image prompt adherence when the first S scales are
the true scene's codes and the model writes the rest, for S = 0 (the model writes everything, as in
`evaluate`) to K (every code given; only the residual is the model's). Where adherence jumps between S
and S + 1, scale S is where the model's mistakes are made; the gap left at S = K is the residual head's
and the codec's.

    python -m recipes.eval.scale_errors recipes/pretrained/shapes --n 200          # fresh training-split scenes
    python -m recipes.eval.scale_errors MODEL --split heldout --out scale_errors.json

Scenes are Shapes World samples with their own captions as prompts, split by object count. A second
table breaks the S = 0 row (the model writes every code) into the attributes the detector scores, per
object count: whether two-object scenes fail on colour, shape, position or count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


@torch.no_grad()
def scale_errors(model, n: int = 200, split: str = "train", batch_size: int = 50, cfg: float | None = None,
                 top_k: int | None = None, seed: int = 0, progress: bool = True, use_residual: bool = True) -> dict:
    """{"rows": [{"given_scales": S, "overall": ..., "overall_1": ..., "overall_2": ...}, ...],
    "attributes": {"1": {"colour": ..., "shape": ..., "position": ..., "count": ..., "size": ...}, "2": ...}
    (S = 0, by object count; size over the prompts that name one), "settings"}. use_residual=False decodes the
    codes alone: at S = K, whether the residual head's output helps or harms a scene whose codes are right."""
    from recipes.data.shapes import ShapesWorld, parse_caption
    from recipes.eval.detector import detect, score
    from recipes.eval.evaluate import split_start

    codec = model.codecs["image"]
    world = ShapesWorld(seed=0, image_size=codec.image_size[0])
    start = split_start(split)
    samples = [world.sample(start + i, split) for i in range(n)]
    counts = np.array([len(s["objects"]) for s in samples])
    K = codec.num_scales
    scores = np.zeros((K + 1, n))
    attributes: list[dict | None] = [None] * n  # per scene, S = 0
    bar = tqdm(total=(K + 1) * ((n + batch_size - 1) // batch_size), desc="scale errors", disable=not progress)
    for b0 in range(0, n, batch_size):
        chunk = samples[b0 : b0 + batch_size]
        truth = codec.encode([s["image"] for s in chunk]).indices
        prompts = [s["caption"] for s in chunk]
        for given in range(K + 1):
            images = model.generate_image(prompts, cfg=cfg, top_k=top_k, seed=seed + b0, prefix=truth[:given],
                                         use_residual=use_residual)
            for i, (p, im) in enumerate(zip(prompts, images.cpu(), strict=True)):
                result = score(parse_caption(p), detect(im))
                scores[given, b0 + i] = result["overall"]
                if given == 0:
                    attributes[b0 + i] = result
            bar.update()
    bar.close()
    rows = []
    for given in range(K + 1):
        row = {"given_scales": given, "overall": float(scores[given].mean())}
        for k in sorted(set(counts.tolist())):
            row[f"overall_{k}"] = float(scores[given, counts == k].mean())
        rows.append(row)
    by_count = {}
    for k in sorted(set(counts.tolist())):
        group = [a for a, c in zip(attributes, counts, strict=True) if c == k]
        by_count[str(k)] = {attr: float(np.mean([a[attr] for a in group])) for attr in ATTRIBUTES}
        sized = [a["size"] for a in group if a["size"] is not None]
        by_count[str(k)]["size"] = float(np.mean(sized)) if sized else None
    return {"rows": rows, "attributes": by_count, "settings": {"n": n, "split": split, "seed": seed,
                                       "use_residual": use_residual,
                                       "cfg": model.config.head("image").default_cfg if cfg is None else cfg,
                                       "top_k": model.config.head("image").default_top_k if top_k is None else top_k,
                                       "objects": {int(k): int((counts == k).sum()) for k in set(counts.tolist())}}}


ATTRIBUTES = ("colour", "shape", "position", "count")


def table(result: dict) -> str:
    rows = result["rows"]
    keys = [k for k in rows[0] if k.startswith("overall_")]
    lines = ["given scales  overall  " + "  ".join(f"{k.split('_')[1]} object(s)" for k in keys)]
    for r in rows:
        lines.append(f"{r['given_scales']:>12}  {r['overall']:7.3f}  "
                     + "  ".join(f"{r[k]:11.3f}" for k in keys))
    lines += ["", "no scales given, by attribute:", "objects  " + "  ".join(f"{a:>8}" for a in (*ATTRIBUTES, "size"))]
    for k, attrs in result["attributes"].items():
        size = "     n/a" if attrs["size"] is None else f"{attrs['size']:8.3f}"
        lines.append(f"{k:>7}  " + "  ".join(f"{attrs[a]:8.3f}" for a in ATTRIBUTES) + f"  {size}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.eval.scale_errors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="unified model folder")
    parser.add_argument("--n", type=int, default=200, help="scenes (default 200)")
    parser.add_argument("--split", choices=("train", "heldout"), default="train",
                        help="fresh training-split scenes (default) or held-out combinations")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's default_cfg)")
    parser.add_argument("--top-k", type=int, default=None, help="default: the model's default_top_k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-residual", action="store_true",
                        help="decode the codes alone (no residual diffusion head)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from recipes.eval.evaluate import load_model

    model = load_model(args.model, args.device)
    if model is None:
        return 2
    result = scale_errors(model, n=args.n, split=args.split, batch_size=args.batch_size, cfg=args.cfg,
                          top_k=args.top_k, seed=args.seed, progress=not args.quiet,
                          use_residual=not args.no_residual)
    print(table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
