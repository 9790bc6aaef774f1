"""How much of a scene survives an image codec: the detector judges its reconstructions of held-out
Shapes World scenes from the discrete codes alone and from the codes plus the continuous residual
(an upper bound on what any generator over this codec can score), code use per scale, and how far
the codes reach: the share of the top-left quarter's codes that change when one object is drawn in
the bottom-right cell (codes that depend on far-away content are harder for a generator to predict).

    python -m recipes.eval.reconstruction recipes/pretrained/shapes/codecs/image --n 300
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def reconstruction_report(codec, n: int = 300, split: str = "heldout", batch_size: int = 100) -> dict:
    from recipes.data.shapes import ShapesWorld
    from recipes.eval.detector import detect, score
    from recipes.eval.evaluate import split_start

    world = ShapesWorld(seed=0, image_size=codec.image_size[0])
    start = split_start(split)  # fresh training-split scenes, as `evaluate` uses
    samples = [world.sample(start + i, split) for i in range(n)]
    agreement: dict[str, list[float]] = {"discrete": [], "hybrid": []}
    codes: list[Counter] = [Counter() for _ in codec.grids]
    for start in range(0, n, batch_size):
        chunk = samples[start : start + batch_size]
        tokens = codec.encode([s["image"] for s in chunk])
        for k, idx in enumerate(tokens.indices):
            codes[k].update(idx.flatten().tolist())
        for name, residual in (("discrete", False), ("hybrid", True)):
            images = codec.decode_latent(codec.fhat(tokens, with_residual=residual)).cpu()
            agreement[name] += [score(s["objects"], detect(im))["overall"] for s, im in zip(chunk, images, strict=True)]
    far = far_change(codec)
    return {
        "detector_agreement": {k: float(np.mean(v)) for k, v in agreement.items()},
        "codes_per_scale": [{"distinct": len(c), "top_share": c.most_common(1)[0][1] / sum(c.values()),
                             "far_change": f} for c, f in zip(codes, far, strict=True)],
        "n": n, "split": split,
    }


@torch.no_grad()
def far_change(codec) -> list[float | None]:
    """Per scale, the share of top-left-quarter codes of an empty scene that change when one object (every
    colour x shape x size) is drawn in the bottom-right cell; None for grids whose quarter is the whole image.
    A codec whose codes see only their own region scores 0 at every scale."""
    import itertools

    from recipes.data.shapes import COLOURS, SHAPES, SIZES, render

    size = codec.image_size[0]
    objects = [render([{"colour": c, "shape": s, "position": "bottom right", "size": z}], size)
               for c, s, z in itertools.product(COLOURS, SHAPES, SIZES)]
    empty, drawn = codec.encode([render([], size)]), codec.encode(objects)
    out: list[float | None] = []
    for k, (h, w) in enumerate(codec.grids):
        if h < 2 or w < 2:
            out.append(None)
            continue
        quarter = torch.zeros(h, w, dtype=torch.bool)
        quarter[: h // 2, : w // 2] = True
        quarter = quarter.flatten()
        out.append(float((drawn.indices[k][:, quarter] != empty.indices[k][:, quarter]).float().mean()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.eval.reconstruction", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("codec", help="image codec folder (e.g. MODEL/codecs/image)")
    parser.add_argument("--n", type=int, default=300, help="scenes (default 300)")
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout",
                        help="held-out combinations (default) or fresh training-split scenes (never in the shards)")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    from modalities import load_codec

    try:
        codec = load_codec(args.codec).eval()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = reconstruction_report(codec, n=args.n, split=args.split)
    a = report["detector_agreement"]
    print(f"detector agreement on {args.n} {args.split} scenes: discrete codes {a['discrete']:.3f}, "
          f"codes + residual {a['hybrid']:.3f}")
    for k, c in enumerate(report["codes_per_scale"]):
        far = "" if c["far_change"] is None else f", far-object change {c['far_change']:.3f}"
        print(f"scale {k}: {c['distinct']} distinct codes, most common {c['top_share']:.3f}{far}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
