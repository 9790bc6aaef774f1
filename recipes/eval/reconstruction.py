"""How much of a scene survives an image codec: the detector judges its reconstructions of held-out
Shapes World scenes from the discrete codes alone and from the codes plus the continuous residual
(an upper bound on what any generator over this codec can score), code use per scale, and how far
the codes reach: the share of the top-left quarter's codes that change when one object is drawn in
the bottom-right cell (codes that depend on far-away content are harder for a generator to predict).
With `--world moving`, Moving Shapes clips instead (a video codec, or the image codec of its frames):
per-frame adherence, identity and the tracked centroid's error, as the video evaluation judges clips.

    python -m recipes.eval.reconstruction recipes/pretrained/shapes/codecs/image --n 300
    python -m recipes.eval.reconstruction recipes/pretrained/moving_shapes/codecs/video --world moving --split train
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
def clip_reconstruction_report(codec, n: int = 100, split: str = "heldout", frames: int = 4,
                               batch_size: int = 25) -> dict:
    """Moving Shapes clips (`frames` of each clip's 8, taken evenly as the video recipe does) through the
    codec's frame tokenizer: {"discrete"|"hybrid": {"frames", "identity", "track_error_px"}, "n", ...}."""
    from modalities.video_io import sample_indices
    from recipes.data.moving_shapes import MovingShapesWorld
    from recipes.eval.evaluate import split_start
    from recipes.eval.motion import judge_clip, track_error

    image_codec = getattr(codec, "image", codec)  # a video codec codes its frames with an image codec
    from recipes.eval.video_suite import CLIP_FRAMES

    world = MovingShapesWorld(seed=0, image_size=image_codec.image_size[0], num_frames=CLIP_FRAMES)
    keep = sample_indices(world.num_frames, 8.0, frames)
    start = split_start(split)
    clips = []
    for i in range(n):
        s = world.sample(start + i, split)
        objects = [{**o, "boxes": [o["boxes"][t] for t in keep]} for o in s["objects"]]
        clips.append((s["frames"][keep], objects))
    rows: dict[str, list[dict]] = {"discrete": [], "hybrid": []}
    for b0 in range(0, n, batch_size):
        chunk = clips[b0 : b0 + batch_size]
        tokens = image_codec.encode(np.concatenate([f for f, _ in chunk]))
        for name, residual in (("discrete", False), ("hybrid", True)):
            images = image_codec.decode_latent(image_codec.fhat(tokens, with_residual=residual)).cpu()
            for (_, objects), clip in zip(chunk, images.split(frames), strict=True):
                judged = judge_clip(objects, clip)
                rows[name].append({"frames": judged["frames"], "identity": judged["identity"],
                                   "track_error_px": track_error(clip, objects)})
    out: dict = {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in rows.items()}
    return {**out, "n": n, "split": split, "frames": frames}


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
    parser.add_argument("codec", help="image or video codec folder (e.g. MODEL/codecs/image)")
    parser.add_argument("--n", type=int, default=300, help="scenes or clips (default 300)")
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout",
                        help="held-out combinations (default) or fresh training-split scenes (never in the shards)")
    parser.add_argument("--world", choices=("shapes", "moving"), default="shapes",
                        help="Shapes World scenes (default) or Moving Shapes clips, judged frame by frame")
    from recipes.eval.video_suite import CLIP_FRAMES

    parser.add_argument("--frames", type=int, default=4, help=f"frames per clip with --world moving, 2 to "
                        f"{CLIP_FRAMES}, taken evenly from the clip's {CLIP_FRAMES} (default 4)")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if not 2 <= args.frames <= CLIP_FRAMES:  # direction needs two frames
        parser.error(f"--frames must be 2 to {CLIP_FRAMES}, got {args.frames}")
    from modalities import load_codec

    try:
        codec = load_codec(args.codec).eval()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.world == "moving":
        report = clip_reconstruction_report(codec, n=args.n, split=args.split, frames=args.frames)
        print(f"{args.n} {args.split} Moving Shapes clips, {args.frames} frames each:")
        for name in ("discrete", "hybrid"):
            r = report[name]
            print(f"  {name:8s} per-frame adherence {r['frames']:.3f}, identity {r['identity']:.3f}, "
                  f"track error {r['track_error_px']:.2f} px")
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        return 0
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
