"""Judging Moving Shapes clips: the Shapes World detector on every frame, tracks by object identity, and
the direction each object moves.

    result = judge_clip(parse_caption("a red circle moving right"), frames)   # uint8 [T, H, W, 3] or float
    # {"frames": per-frame adherence, "identity", "direction", "overall"}

Rules:
* per-frame adherence: the fraction of frames in which the detector finds exactly the asked objects
  (colour and shape; `detector.score(...)["overall"]` with positions not asked);
* identity: the fraction of asked objects found (same colour and shape, exactly one such object) in
  every frame: an object must not change colour or shape, vanish or split;
* direction: for each asked object found in the first `half` frames, the direction of its centroid's
  net displacement over them (the axis that moved most; below `MIN_TRAVEL` pixels it is "still");
  the fraction of asked objects whose direction is the asked one. The world never bounces an object
  during the first half of a clip, so this is the caption's direction;
* overall: 1.0 when every frame adheres and every direction is right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .detector import detect, score

MIN_TRAVEL = 2.0  # pixels of net displacement at 32 px below which an object counts as still


def as_frames(frames) -> list[np.ndarray]:
    """uint8 [T, H, W, 3] or float [T, 3, H, W] in [0, 1] (numpy or torch) -> list of uint8 [H, W, 3]."""
    from modalities.video_write import as_uint8_frames

    return list(as_uint8_frames(frames))


def direction_of(displacement: Sequence[float], min_travel: float = MIN_TRAVEL) -> str:
    dx, dy = displacement
    if max(abs(dx), abs(dy)) < min_travel:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def tracks(asked: Sequence[dict], detections: Sequence[list[dict]]) -> list[list[tuple[float, float] | None]]:
    """Per asked object, per frame, the centroid of the one detected object of its colour and shape
    (None when there is none, or more than one)."""
    out = []
    for spec in asked:
        track = []
        for found in detections:
            same = [o for o in found if o["colour"] == spec["colour"] and o["shape"] == spec["shape"]]
            if len(same) == 1:
                x0, y0, x1, y1 = same[0]["bbox"]
                track.append(((x0 + x1) / 2, (y0 + y1) / 2))
            else:
                track.append(None)
        out.append(track)
    return out


def judge_clip(asked: Sequence[dict], frames, half: int | None = None) -> dict:
    """Scores of one clip against asked objects [{"colour", "shape", "direction"}] (see the module doc)."""
    frames = as_frames(frames)
    detections = [detect(f) for f in frames]
    shapes_only = [{"colour": s["colour"], "shape": s["shape"]} for s in asked]
    per_frame = [score(shapes_only, found)["overall"] for found in detections]
    paths = tracks(asked, detections)
    half = half or max(2, len(frames) // 2)
    identity, direction = [], []
    for spec, path in zip(asked, paths, strict=True):
        identity.append(all(p is not None for p in path))
        start, end = path[0], path[half - 1]
        moved = None if start is None or end is None else direction_of((end[0] - start[0], end[1] - start[1]))
        direction.append(moved == spec["direction"])
    frames_ok = float(np.mean(per_frame))
    return {"frames": frames_ok, "identity": float(np.mean(identity)), "direction": float(np.mean(direction)),
            "overall": float(frames_ok == 1.0 and all(direction))}


def caption_matches(caption: str, objects: Sequence[dict]) -> bool:
    """Whether a predicted caption names exactly the clip's objects with their directions (any order)."""
    from recipes.data.moving_shapes import parse_caption

    try:
        said = parse_caption(caption)
    except ValueError:
        return False
    key = sorted((o["colour"], o["shape"], o["direction"]) for o in objects)
    return sorted((o["colour"], o["shape"], o["direction"]) for o in said) == key


def track_errors(frames, objects: Sequence[dict], start: int = 0) -> list[float]:
    """Per frame from `start` on (continuation: the frames the model wrote), the mean distance (pixels)
    between the objects' tracked centroids and their true box centres; an object lost in a frame costs
    the frame's side."""
    frames = as_frames(frames)[start:]
    paths = tracks(objects, [detect(f) for f in frames])
    side = frames[0].shape[1]
    per_frame = []
    for t in range(len(frames)):
        errors = []
        for o, path in zip(objects, paths, strict=True):
            x0, y0, x1, y1 = o["boxes"][start + t]
            p = path[t]
            errors.append(side if p is None else float(np.hypot(p[0] - (x0 + x1) / 2, p[1] - (y0 + y1) / 2)))
        per_frame.append(float(np.mean(errors)))
    return per_frame


def track_error(frames, objects: Sequence[dict], start: int = 0) -> float:
    """`track_errors` averaged over the frames."""
    return float(np.mean(track_errors(frames, objects, start)))
