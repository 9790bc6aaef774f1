"""The "moving_shapes" evaluation suite: text-to-video, video captioning, frame continuation and
image-to-video on Moving Shapes World clips of the evaluation split (8-frame clips, `video_frames` of
their frames taken evenly, as in training), judged by `recipes.eval.motion`.

- t2v: for each clip's caption, a clip of `video_frames` frames; per-frame adherence (the detector
  finds exactly the asked objects), identity (every object in every frame), direction (each object
  moves the asked way over the first half), overall (all of them);
- caption: the model's caption of the true clip names exactly its objects and their directions;
- continuation: the first 2 true frames given, no prompt; the written frames' tracked centroids against
  the truth (pixel error, mean and per written frame) and the direction judged over the whole clip;
- i2v: the first true frame given with the caption; adherence and direction as for t2v;
- speed: frames/s and clips/s of text-to-video, captions/s of video captioning, and the autoregressive
  steps a frame takes (one per scale, plus one to read the frame whole for the next).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from modalities import sample_indices

from .evaluate import EvalContext, _batches, register_suite, split_start
from .motion import caption_matches, judge_clip, track_errors

GIVEN_FRAMES = 2
CLIP_FRAMES = 8  # the world's clip length (the shards' and the recipe's); `video_frames` of them are used


def _subsample(sample: dict, keep: list[int]) -> dict:
    objects = [{**o, "boxes": [o["boxes"][i] for i in keep]} for o in sample["objects"]]
    return {**sample, "frames": sample["frames"][keep], "objects": objects}


def _asked(objects: list[dict]) -> list[dict]:
    return [{k: o[k] for k in ("colour", "shape", "direction")} for o in objects]


def _mean(rows: list[dict], keys=("frames", "identity", "direction", "overall")) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} | {"n": len(rows)}


def _table(results: dict, which: str) -> list[tuple[str, object]]:
    t, i = results["moving_t2v"], results["moving_i2v"]
    c = results["moving_continuation"]
    return [
        (f"Moving Shapes text-to-video, overall ({which} prompts)", t["overall"]),
        ("  per-frame adherence / identity / direction",
         f"{t['frames']:.3f} / {t['identity']:.3f} / {t['direction']:.3f}"),
        (f"Moving Shapes video captioning ({which} clips)", results["moving_caption"]["accuracy"]),
        ("Moving Shapes continuation (2 frames given): direction | track error px",
         f"{c['direction']:.3f} | {c['track_error_px']:.2f}"),
        ("Moving Shapes image-to-video: overall | direction", f"{i['overall']:.3f} | {i['direction']:.3f}"),
        ("Video speed, frames/s | clips/s | captions/s (autoregressive steps a frame)",
         f"{results['video_speed']['frames_per_s']:.1f} | {results['video_speed']['clips_per_s']:.2f} | "
         f"{results['video_speed']['captions_per_s']:.1f} ({results['video_speed']['ar_steps_per_frame']})"),
    ]


@register_suite("moving_shapes", modalities=("video",), table=_table)
def moving_shapes_suite(model, ctx: EvalContext) -> dict:
    from recipes.data.moving_shapes import MovingShapesWorld

    codec = model.codecs["video"]
    world = MovingShapesWorld(seed=0, image_size=codec.frame_size[0], num_frames=CLIP_FRAMES)
    start = split_start(ctx.split)
    # the world's clips, with `video_frames` of their frames taken evenly, as the training data path does
    keep = sample_indices(CLIP_FRAMES, 8.0, ctx.video_frames)
    clips = [_subsample(world.sample(start + i, ctx.split), keep) for i in range(ctx.n)]
    kw = dict(modality="video", segments=ctx.video_frames, cfg=ctx.cfg, top_k=ctx.top_k)
    out: dict = {}

    t0 = time.perf_counter()
    generated = [v for i, b in enumerate(_batches(clips, ctx.batch_size))
                 for v in model.generate([s["caption"] for s in b], seed=ctx.seed + i, **kw).cpu()]
    t_clips = time.perf_counter() - t0
    out["moving_t2v"] = _mean([judge_clip(_asked(s["objects"]), v) for s, v in zip(clips, generated, strict=True)])

    t0 = time.perf_counter()
    captions = [c for b in _batches(clips, ctx.batch_size)
                for c in model.describe([torch.from_numpy(s["frames"]) for s in b], modality="video",
                                        max_new_tokens=40)]
    t_captions = time.perf_counter() - t0
    out["moving_caption"] = {"accuracy": float(np.mean([caption_matches(c, s["objects"])
                                                        for c, s in zip(captions, clips, strict=True)])),
                             "n": len(clips)}

    rows, errors = [], []
    for i, b in enumerate(_batches(clips, ctx.batch_size)):
        given = codec.encode_items([torch.from_numpy(s["frames"][:GIVEN_FRAMES]) for s in b])
        for s, v in zip(b, model.generate(None, given=given, seed=ctx.seed + 500 + i, **kw).cpu(), strict=True):
            rows.append(judge_clip(_asked(s["objects"]), v))
            errors.append(track_errors(v, s["objects"], start=GIVEN_FRAMES))
    out["moving_continuation"] = {"direction": _mean(rows)["direction"], "track_error_px": float(np.mean(errors)),
                                  "track_error_px_per_frame": np.mean(errors, axis=0).round(3).tolist(),
                                  "given_frames": GIVEN_FRAMES, "n": len(rows)}

    rows = []
    for i, b in enumerate(_batches(clips, ctx.batch_size)):
        given = codec.encode_items([torch.from_numpy(s["frames"][:1]) for s in b])
        videos = model.generate([s["caption"] for s in b], given=given, seed=ctx.seed + 900 + i, **kw).cpu()
        rows += [judge_clip(_asked(s["objects"]), v) for s, v in zip(b, videos, strict=True)]
    out["moving_i2v"] = _mean(rows)

    # one frame takes a step per scale, then one more to read it whole (for the next frame)
    steps = codec.num_scales + 1
    out["video_speed"] = {"clips_per_s": len(clips) / t_clips, "frames_per_s": len(clips) * ctx.video_frames / t_clips,
                          "captions_per_s": len(clips) / t_captions, "ar_steps_per_frame": steps,
                          "frames": ctx.video_frames, "batch_size": ctx.batch_size, "device": str(model.device)}
    ctx.examples += [{"prompt": s["caption"], "score": judge_clip(_asked(s["objects"]), v)}
                     for s, v in zip(clips[:3], generated[:3], strict=True)]
    ctx.examples += [{"clip": s["key"], "caption": c, "truth": s["caption"]}
                     for c, s in zip(captions[:3], clips[:3], strict=True)]
    return out
