"""Moving Shapes World: Shapes World objects moving at a known speed in a known direction, bouncing off
the walls; clips whose ground truth (every object's box in every frame) is known exactly.

    world = MovingShapesWorld(seed=0, image_size=32, num_frames=8)
    s = world.sample(3, "train")      # {"key", "frames": uint8 [T, H, W, 3], "caption", "question", "answer",
                                      #  "objects": [{"colour", "shape", "direction", "boxes": [[x0, y0, x1, y1]] * T}]}
    pattern = world.write_shards("data/moving", "train", n=2000)   # KEY.mp4 (H.264), KEY.txt, KEY.json

* objects: the Shapes World colours and shapes, large (side 1/4 of the frame: 8 px at 32 px), 1 or 2 per
  clip (2 with probability 0.5), never the same (colour, shape) twice, never overlapping in any frame;
* motion: `DIRECTIONS` (right, left, up, down) at `speed` pixels a frame (image_size / 16: 2 px at 32 px);
  an object that reaches a wall bounces back. Starts are drawn so that no object bounces during the first
  half of the clip, so its caption direction is the way it visibly moves there;
* captions: "a red circle moving right", "a red circle moving right and a blue square moving up";
* questions: "which way is the red circle moving?" -> "right", "how many objects are there?" -> "two";
* held-out split: the (shape, direction) pairs in `HELDOUT_MOTIONS` (a circle moving up, a square moving
  left, a triangle moving down: one per shape, 3 of 12) never occur in a training clip; every held-out
  clip has one, so held-out prompts measure composition of a shape and a motion seen separately.

Samples are pure functions of (seed, split, index), as in the Shapes World.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .shapes import BACKGROUND, COLOURS, NUMBERS, SHAPES, SPLITS, draw_shape
from .shards import write_shards

DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
HELDOUT_MOTIONS: frozenset[tuple[str, str]] = frozenset({("circle", "up"), ("square", "left"), ("triangle", "down")})
ALL_MOTIONS = tuple((s, d) for s in SHAPES for d in DIRECTIONS)
TRAIN_MOTIONS = tuple(m for m in ALL_MOTIONS if m not in HELDOUT_MOTIONS)
TWO_OBJECTS_P = 0.5


class MovingShapesWorld:
    def __init__(self, seed: int = 0, image_size: int = 32, num_frames: int = 8, max_objects: int = 2):
        if image_size < 24:
            raise ValueError(f"image_size must be >= 24, got {image_size}")
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {num_frames}")
        if max_objects not in (1, 2):
            raise ValueError(f"max_objects must be 1 or 2, got {max_objects}")
        self.seed, self.image_size, self.num_frames, self.max_objects = seed, image_size, num_frames, max_objects
        self.side = image_size // 4
        self.speed = max(1, image_size // 16)

    def __repr__(self) -> str:
        return (f"MovingShapesWorld(seed={self.seed}, image_size={self.image_size}, num_frames={self.num_frames}, "
                f"max_objects={self.max_objects})")

    # -- motion ------------------------------------------------------------------------------------------------

    def track(self, start: tuple[int, int], direction: str) -> list[list[int]]:
        """Boxes [x0, y0, x1, y1] (ends exclusive) in every frame, bouncing off the walls."""
        (x, y), (dx, dy) = start, DIRECTIONS[direction]
        vx, vy, top = dx * self.speed, dy * self.speed, self.image_size - self.side
        boxes = []
        for _ in range(self.num_frames):
            boxes.append([x, y, x + self.side, y + self.side])
            x, vx = _bounce(x + vx, vx, top)
            y, vy = _bounce(y + vy, vy, top)
        return boxes

    def _start(self, direction: str, rng: np.random.Generator) -> tuple[int, int]:
        # free of walls for the first half of the clip along the motion, anywhere across it
        travel = self.speed * (self.num_frames // 2)
        top = self.image_size - self.side
        along = int(rng.integers(0, top - travel + 1))
        across = int(rng.integers(0, top + 1))
        dx, dy = DIRECTIONS[direction]
        along = along if dx + dy > 0 else top - along
        return (along, across) if dx else (across, along)

    # -- samples -----------------------------------------------------------------------------------------------

    def objects(self, i: int, split: str = "train") -> list[dict]:
        _check_split(split)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(i)])
        n = 2 if self.max_objects == 2 and rng.random() < TWO_OBJECTS_P else 1
        pool = TRAIN_MOTIONS if split == "train" else tuple(sorted(HELDOUT_MOTIONS))
        motions = [pool[int(rng.integers(len(pool)))]]
        if n == 2:
            allowed = TRAIN_MOTIONS if split == "train" else ALL_MOTIONS
            motions.append(allowed[int(rng.integers(len(allowed)))])
        names = list(COLOURS)
        colours = [names[int(rng.integers(len(names)))] for _ in motions]
        if n == 2 and (colours[0], motions[0][0]) == (colours[1], motions[1][0]):  # never the same object twice
            others = [c for c in names if c != colours[0]]
            colours[1] = others[int(rng.integers(len(others)))]
        for _ in range(200):  # starts whose tracks never overlap
            objects = [{"colour": c, "shape": s, "direction": d, "boxes": self.track(self._start(d, rng), d)}
                       for c, (s, d) in zip(colours, motions, strict=True)]
            if n == 1 or not any(_overlap(a, b) for a, b in zip(objects[0]["boxes"], objects[1]["boxes"], strict=True)):
                return objects
        return objects[:1]  # practically unreachable: two large objects in a 4x4-object frame

    def render(self, objects: list[dict]) -> np.ndarray:
        frames = []
        for t in range(self.num_frames):
            image = Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)
            draw = ImageDraw.Draw(image)
            for o in objects:
                draw_shape(draw, o["shape"], o["boxes"][t], COLOURS[o["colour"]])
            frames.append(np.asarray(image))
        return np.stack(frames)

    def sample(self, i: int, split: str = "train") -> dict:
        objects = self.objects(i, split)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(i), 1])
        if rng.random() < 0.5:
            o = objects[int(rng.integers(len(objects)))]
            question, answer = f"which way is the {o['colour']} {o['shape']} moving?", o["direction"]
        else:
            question, answer = "how many objects are there?", NUMBERS[len(objects)]
        return {"key": f"moving-{split}-{i:07d}", "split": split, "index": i, "frames": self.render(objects),
                "caption": caption(objects), "question": question, "answer": answer, "objects": objects}

    def write_shards(self, folder: str | os.PathLike, split: str = "train", n: int = 1000, per_shard: int = 500,
                     fps: float = 8.0) -> str:
        """Clips 0..n-1 as webdataset tars `folder/moving-SPLIT-NNN.tar`: KEY.mp4 (H.264 4:4:4, read back
        through decord in training), KEY.txt (the caption), KEY.json (caption, question, answer, objects, ...)."""
        from modalities import write_video

        _check_split(split)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        with tempfile.TemporaryDirectory() as tmp:

            def record(i: int) -> dict:
                s = self.sample(i, split)
                mp4 = write_video(Path(tmp) / "clip.mp4", s["frames"], fps=fps, full_chroma=True).read_bytes()
                meta = {k: s[k] for k in ("caption", "question", "answer", "objects", "split", "index")}
                meta.update(seed=self.seed, image_size=self.image_size, num_frames=self.num_frames)
                return {"__key__": s["key"], "mp4": mp4, "txt": s["caption"], "json": json.dumps(meta)}

            return write_shards(folder, f"moving-{split}", range(n), per_shard, record)


def caption(objects: list[dict]) -> str:
    return " and ".join(f"a {o['colour']} {o['shape']} moving {o['direction']}" for o in objects)


def parse_caption(text: str) -> list[dict]:
    """Inverse of `caption`: [{"colour", "shape", "direction"}]; raises ValueError on anything else."""
    out = []
    for part in text.strip().split(" and "):
        words = part.split()
        if len(words) != 5 or words[0] != "a" or words[3] != "moving" or words[1] not in COLOURS \
                or words[2] not in SHAPES or words[4] not in DIRECTIONS:
            raise ValueError(f"not a Moving Shapes caption: {text!r}")
        out.append({"colour": words[1], "shape": words[2], "direction": words[4]})
    return out


def _bounce(p: int, v: int, top: int) -> tuple[int, int]:
    if p < 0:
        return -p, -v
    if p > top:
        return 2 * top - p, -v
    return p, v


def _overlap(a: list[int], b: list[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recipes.data.moving_shapes",
                                     description="Write Moving Shapes World clips as webdataset shards of mp4 files.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--n", type=int, default=1000, help="clips (default 1000)")
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--size", type=int, default=32, help="frame side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = MovingShapesWorld(args.seed, args.size, args.frames)
    print(world.write_shards(args.out, args.split, args.n, args.per_shard))


if __name__ == "__main__":
    main()
