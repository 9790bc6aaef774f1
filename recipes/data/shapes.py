"""Shapes World: a procedural image/caption/QA world whose ground truth is known exactly.

    world = ShapesWorld(seed=0, image_size=32, max_objects=2)
    s = world.train(17)          # or world.heldout(17), world.sample(17, "heldout")
    s["image"], s["caption"], s["question"], s["answer"], s["objects"]
    pattern = write_shards("data/shapes", "train", n=20_000)   # "data/shapes/shapes-train-{000..019}.tar"
    specs = parse_caption("a red circle to the left of a small green triangle")

The world (all attribute sets are module constants):

* colours: `COLOURS` (red, green, blue, yellow, purple, cyan; far apart in RGB and from the background)
* shapes: `SHAPES` (circle, square, upward triangle), filled, drawn without anti-aliasing or outlines
* positions: `POSITIONS`, the cells of a 3x3 grid in reading order ("top left" ... "bottom right");
  an object is centred in its cell (no jitter), so its position is never ambiguous
* sizes: `SIZES` (small, large): side 0.5625 or 0.75 of a cell (6 or 8 px at 32 px, 12 or 16 at 64); at
  32 px objects in neighbouring cells are >= 3 px apart
* 1 or 2 objects per image (2 with probability 0.6 when max_objects=2), in different cells, never
  the same (colour, shape) twice; plain light grey background `BACKGROUND`

Held-out split. The (colour, shape) combinations in `HELDOUT_COMBOS` (red triangle, green square,
blue circle, yellow triangle: 4 of 18, ~22%, every shape and four colours involved) never occur in a
training image, as either object, nor in a training question. Every held-out image contains at least
one of them (the other object, if any, is any combination), so held-out prompts measure composition
of attributes seen separately, not memorisation.

Samples are pure functions of (seed, split, index): `np.random.default_rng([seed, split, index])`, so
any sample can be regenerated without the others, and shards are byte-identical across runs (tar
mtimes are 0).

Captions (`caption_style="varied"`, the default) come from templates; every template fully
determines the colour, shape, count and absolute position of every object, or, for two objects in
the same row / column, their relative position ("to the left of", "to the right of", "above",
"below": same row or column, in that order). Sizes are mentioned in 40% of captions. Templates:

    a red circle in the top left              there is a large red circle in the center
    in the top left there is a red circle     a red circle on the left and a green square at the bottom
    there is a red circle at the top and a small blue square in the bottom right
    a red circle to the left of a green triangle         a red circle above a green triangle

`parse_caption` is their exact inverse (tested on many samples). Because the template is drawn at
random, a caption of an image is not unique: judge a predicted caption by what it says, e.g.
`recipes.eval.detector.caption_correct(pred, sample["objects"])`, or build the world with
`caption_style="canonical"` (`canonical_caption`: one caption per image, objects in reading order,
absolute positions, no sizes) when string exact match is wanted.

Questions (one per sample, type drawn uniformly among those with a unique answer, then an instance):

    how many objects are there?            -> one | two
    where is the blue square?              -> top left | ... | center | ...
    what colour is the circle?             -> red        (only if one circle)
    what shape is the red object?          -> circle     (only if one red object)
    what shape is in the top left?         -> circle     (only occupied cells; "on the left", "at the top")
    what colour is the object in the top left? -> red
    what size is the blue square?          -> small | large
    is there a red circle?                 -> yes | no  (absent combinations are drawn from the split's own)
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .shards import write_shards as write_tar_shards

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
    "purple": (150, 40, 190),
    "cyan": (20, 200, 220),
}
BACKGROUND: tuple[int, int, int] = (240, 240, 240)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                              "bottom left", "bottom", "bottom right")  # index = 3 * row + col
SIZES: tuple[str, ...] = ("small", "large")
SIZE_FRACTION: dict[str, float] = {"small": 0.5625, "large": 0.75}  # object side / cell side
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
INVERSE_RELATION = {"to the left of": "to the right of", "to the right of": "to the left of",
                    "above": "below", "below": "above"}
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "square"), ("blue", "circle"), ("yellow", "triangle")})
ALL_COMBOS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
TRAIN_COMBOS: tuple[tuple[str, str], ...] = tuple(c for c in ALL_COMBOS if c not in HELDOUT_COMBOS)
SPLITS = ("train", "heldout")
# `split="train"` samples from here on are the evaluation's: past every sample training data draws (indices
# below 1e6), a validation set of the training distribution for choosing sampling settings
VALIDATION_START = 1_000_000
TWO_OBJECTS_P = 0.6
SIZE_IN_CAPTION_P = 0.4
RELATIVE_P = 0.5  # same-row / same-column pairs: relative caption with this probability
NUMBERS = ("zero", "one", "two", "three")

# location phrases: position -> the phrases a caption may use ("middle" is a synonym of "center")
LOCATION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left",), "top": ("at the top",), "top right": ("in the top right",),
    "left": ("on the left",), "center": ("in the center", "in the middle"), "right": ("on the right",),
    "bottom left": ("in the bottom left",), "bottom": ("at the bottom",),
    "bottom right": ("in the bottom right",),
}


def cell(position: str) -> tuple[int, int]:
    """Position name -> (row, col) in the 3x3 grid."""
    return divmod(POSITIONS.index(position), 3)


def position_name(row: int, col: int) -> str:
    return POSITIONS[3 * row + col]


def object_side(size: str, image_size: int) -> int:
    """Side in pixels of an object of `size` (its bounding box is side x side)."""
    return max(3, round(SIZE_FRACTION[size] * image_size / 3))


def object_box(position: str, size: str, image_size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), ends exclusive, of an object centred in its cell."""
    row, col = cell(position)
    side = object_side(size, image_size)
    cell_side = image_size / 3
    x0 = math.floor(col * cell_side + (cell_side - side) / 2 + 0.5)
    y0 = math.floor(row * cell_side + (cell_side - side) / 2 + 0.5)
    return x0, y0, x0 + side, y0 + side


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], fill) -> None:
    """A filled shape whose pixel bounding box is exactly `box` (ends exclusive); no anti-aliasing."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w = x1 - x0
    if shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "triangle":  # pointing up; an even width gets a two-pixel apex, so it stays symmetric
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), (x0 + w // 2, y0), (x0 + (w - 1) // 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r} (known: {SHAPES})")


def render(objects: Sequence[dict], image_size: int = 32) -> Image.Image:
    """Draw objects ({colour, shape, position, size}) on the background."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in objects:
        draw_shape(draw, o["shape"], object_box(o["position"], o["size"], image_size), COLOURS[o["colour"]])
    return image


# -- captions ------------------------------------------------------------------------------------------------------


def object_phrase(o: dict, with_size: bool = False) -> str:
    size = f"{o['size']} " if with_size and o.get("size") else ""
    return f"a {size}{o['colour']} {o['shape']}"


def relation_between(a: str, b: str) -> str | None:
    """The relation that holds from position a to position b, if they share a row or a column."""
    (ra, ca), (rb, cb) = cell(a), cell(b)
    if ra == rb and ca != cb:
        return "to the left of" if ca < cb else "to the right of"
    if ca == cb and ra != rb:
        return "above" if ra < rb else "below"
    return None


def relation_holds(relation: str, a: str, b: str) -> bool:
    """Strict grid semantics: "to the left of" = same row, smaller column; "above" = same column, upper row."""
    return relation_between(a, b) == relation


def canonical_caption(objects: Sequence[dict]) -> str:
    """One caption per image: objects in reading order, absolute positions, no sizes."""
    objects = sorted(objects, key=lambda o: POSITIONS.index(o["position"]))
    return " and ".join(f"{object_phrase(o)} {LOCATION_PHRASES[o['position']][0]}" for o in objects)


def make_caption(objects: Sequence[dict], rng: np.random.Generator) -> tuple[str, list[dict]]:
    """A templated caption and the objects in the order it mentions them."""
    objects = [dict(o) for o in objects]
    if len(objects) == 2 and rng.random() < 0.5:
        objects.reverse()
    with_size = bool(rng.random() < SIZE_IN_CAPTION_P)

    def loc(o):
        phrases = LOCATION_PHRASES[o["position"]]
        return phrases[int(rng.integers(len(phrases)))]

    if len(objects) == 1:
        o = objects[0]
        template = int(rng.integers(3))
        if template == 0:
            text = f"{object_phrase(o, with_size)} {loc(o)}"
        elif template == 1:
            text = f"there is {object_phrase(o, with_size)} {loc(o)}"
        else:
            text = f"{loc(o)} there is {object_phrase(o, with_size)}"
        return text, objects
    if len(objects) != 2:
        raise ValueError(f"captions are written for 1 or 2 objects, got {len(objects)}")
    a, b = objects
    relation = relation_between(a["position"], b["position"])
    if relation is not None and rng.random() < RELATIVE_P:
        return f"{object_phrase(a, with_size)} {relation} {object_phrase(b, with_size)}", objects
    lead = "there is " if rng.random() < 0.5 else ""
    return f"{lead}{object_phrase(a, with_size)} {loc(a)} and {object_phrase(b, with_size)} {loc(b)}", objects


_OBJ = r"an? (?:(small|large) )?(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")"
_LOCATION_TO_POSITION = {p: pos for pos, phrases in LOCATION_PHRASES.items() for p in phrases}
_LOC = "(" + "|".join(sorted(map(re.escape, _LOCATION_TO_POSITION), key=len, reverse=True)) + ")"
_REL = "(" + "|".join(RELATIONS) + ")"
_ONE_FORWARD = re.compile(rf"(?:there is )?{_OBJ} {_LOC}")
_ONE_BACKWARD = re.compile(rf"{_LOC} there is {_OBJ}")
_TWO_ABSOLUTE = re.compile(rf"(?:there is )?{_OBJ} {_LOC} and {_OBJ} {_LOC}")
_TWO_RELATIVE = re.compile(rf"{_OBJ} {_REL} {_OBJ}")


def _spec(size, colour, shape, position=None, relation=None) -> dict:
    return {"colour": colour, "shape": shape, "size": size, "position": position, "relation": relation}


def parse_caption(caption: str) -> list[dict]:
    """The objects a caption asks for, in the order it mentions them; raises ValueError if it is not one
    of the templates. Each spec is

        {"colour": str, "shape": str, "size": str | None (not mentioned),
         "position": str | None (relative caption), "relation": None | (relation, j)}

    where (relation, j) means "this object is <relation> object j" (stored on both objects of a relative
    caption, each from its own side: ("to the left of", 1) and ("to the right of", 0)).
    Case, surrounding whitespace, repeated spaces and a final full stop are ignored.
    """
    text = " ".join(str(caption).lower().split()).rstrip(".").strip()
    if m := _ONE_FORWARD.fullmatch(text):
        size, colour, shape, loc = m.groups()
        return [_spec(size, colour, shape, _LOCATION_TO_POSITION[loc])]
    if m := _ONE_BACKWARD.fullmatch(text):
        loc, size, colour, shape = m.groups()
        return [_spec(size, colour, shape, _LOCATION_TO_POSITION[loc])]
    if m := _TWO_ABSOLUTE.fullmatch(text):
        s1, c1, h1, l1, s2, c2, h2, l2 = m.groups()
        return [_spec(s1, c1, h1, _LOCATION_TO_POSITION[l1]), _spec(s2, c2, h2, _LOCATION_TO_POSITION[l2])]
    if m := _TWO_RELATIVE.fullmatch(text):
        s1, c1, h1, rel, s2, c2, h2 = m.groups()
        return [_spec(s1, c1, h1, relation=(rel, 1)), _spec(s2, c2, h2, relation=(INVERSE_RELATION[rel], 0))]
    raise ValueError(f"not a Shapes World caption: {caption!r}")


# -- questions -----------------------------------------------------------------------------------------------------


def questions(objects: Sequence[dict], absent: Sequence[tuple[str, str]] = ()) -> dict[str, list[tuple[str, str]]]:
    """Every question with a unique answer about these objects, by type. `absent`: (colour, shape)
    combinations that may be asked about with the answer "no" (those present are skipped)."""
    present = {(o["colour"], o["shape"]) for o in objects}
    shape_counts = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
    colour_counts = {c: sum(o["colour"] == c for o in objects) for c in COLOURS}
    out: dict[str, list[tuple[str, str]]] = {
        "count": [("how many objects are there?", NUMBERS[len(objects)])],
        "where": [(f"where is the {o['colour']} {o['shape']}?", o["position"]) for o in objects],
        "colour_of_shape": [(f"what colour is the {o['shape']}?", o["colour"])
                            for o in objects if shape_counts[o["shape"]] == 1],
        "shape_of_colour": [(f"what shape is the {o['colour']} object?", o["shape"])
                            for o in objects if colour_counts[o["colour"]] == 1],
        "shape_at": [(f"what shape is {LOCATION_PHRASES[o['position']][0]}?", o["shape"]) for o in objects],
        "colour_at": [(f"what colour is the object {LOCATION_PHRASES[o['position']][0]}?", o["colour"])
                      for o in objects],
        "size_of": [(f"what size is the {o['colour']} {o['shape']}?", o["size"]) for o in objects],
        "exists": [(f"is there a {c} {s}?", "yes") for c, s in sorted(present)]
        + [(f"is there a {c} {s}?", "no") for c, s in absent if (c, s) not in present],
    }
    return {k: v for k, v in out.items() if v}


# -- the world -----------------------------------------------------------------------------------------------------


class ShapesWorld:
    """Deterministic samples of the Shapes World (see the module docstring).

    sample(i, split) -> {"key", "split", "index", "image" (PIL RGB), "caption", "question", "answer",
                         "objects": [{"colour", "shape", "position", "size", "bbox": [x0, y0, x1, y1]}]}
    `objects` are in the order the caption mentions them; bbox ends are exclusive (PIL's getbbox).
    """

    def __init__(self, seed: int = 0, image_size: int = 32, max_objects: int = 2, caption_style: str = "varied"):
        if image_size < 24:
            raise ValueError(f"image_size must be >= 24 (objects need a few pixels), got {image_size}")
        if max_objects not in (1, 2):
            raise ValueError(f"max_objects must be 1 or 2, got {max_objects}")
        if caption_style not in ("varied", "canonical"):
            raise ValueError(f"caption_style must be 'varied' or 'canonical', got {caption_style!r}")
        self.seed, self.image_size, self.max_objects = int(seed), int(image_size), int(max_objects)
        self.caption_style = caption_style

    def __repr__(self) -> str:
        return (f"ShapesWorld(seed={self.seed}, image_size={self.image_size}, max_objects={self.max_objects}, "
                f"caption_style={self.caption_style!r})")

    @staticmethod
    def combos(split: str) -> tuple[tuple[str, str], ...]:
        """The (colour, shape) combinations images of this split may contain."""
        _check_split(split)
        return TRAIN_COMBOS if split == "train" else ALL_COMBOS

    def train(self, i: int) -> dict:
        return self.sample(i, "train")

    def heldout(self, i: int) -> dict:
        return self.sample(i, "heldout")

    def scene(self, i: int, split: str = "train") -> tuple[list[dict], np.random.Generator]:
        """The objects of sample i (before caption ordering) and the generator that continues from them."""
        _check_split(split)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(i)])
        n = 2 if self.max_objects == 2 and rng.random() < TWO_OBJECTS_P else 1
        first_pool = TRAIN_COMBOS if split == "train" else tuple(sorted(HELDOUT_COMBOS))
        first = first_pool[int(rng.integers(len(first_pool)))]
        combos = [first]
        if n == 2:
            pool = [c for c in self.combos(split) if c != first]
            combos.append(pool[int(rng.integers(len(pool)))])
        cells = rng.choice(len(POSITIONS), size=n, replace=False)
        objects = []
        for (colour, shape), c in zip(combos, cells, strict=True):
            size = SIZES[int(rng.integers(len(SIZES)))]
            objects.append({"colour": colour, "shape": shape, "position": POSITIONS[int(c)], "size": size})
        return objects, rng

    def sample(self, i: int, split: str = "train") -> dict:
        objects, rng = self.scene(i, split)
        caption, objects = make_caption(objects, rng)
        if self.caption_style == "canonical":
            caption = canonical_caption(objects)
            objects = sorted(objects, key=lambda o: POSITIONS.index(o["position"]))
        image = render(objects, self.image_size)
        for o in objects:
            o["bbox"] = list(_object_mask(o, self.image_size).getbbox())
        present = {(o["colour"], o["shape"]) for o in objects}
        absent = [c for c in self.combos(split) if c not in present]
        by_type = questions(objects)
        if rng.random() < 0.5:  # yes/no questions: half about a present object, half about an absent one
            yes = by_type["exists"]
            by_type["exists"] = [yes[int(rng.integers(len(yes)))]]
        else:
            colour, shape = absent[int(rng.integers(len(absent)))]
            by_type["exists"] = [(f"is there a {colour} {shape}?", "no")]
        types = sorted(by_type)
        kind = types[int(rng.integers(len(types)))]
        question, answer = by_type[kind][int(rng.integers(len(by_type[kind])))]
        return {"key": f"{split}_{int(i):07d}", "split": split, "index": int(i), "image": image,
                "caption": caption, "question": question, "answer": answer, "objects": objects}

    def prompts(self, split: str = "heldout", n: int = 100, start: int = 0) -> list[str]:
        """n distinct captions of this split, from sample `start` on (duplicates skipped), for evaluating
        text-to-image. `write_shards` uses samples 0..N-1: pass start >= N for train-split prompts whose
        scenes were not drawn for training (the same caption may still occur in training)."""
        out, seen, i = [], set(), int(start)
        limit = int(start) + 1000 * max(n, 1)
        while len(out) < n:
            if i >= limit:
                raise ValueError(f"could not find {n} distinct {split} prompts")
            caption = self.sample(i, split)["caption"]
            if caption not in seen:
                seen.add(caption)
                out.append(caption)
            i += 1
        return out

    def write_shards(self, folder: str | os.PathLike, split: str = "train", n: int = 1000,
                     per_shard: int = 1000) -> str:
        """Samples 0..n-1 of `split` as webdataset tars `folder/shapes-SPLIT-NNN.tar` (KEY.png, KEY.txt = the
        caption, KEY.json = {caption, question, answer, objects, split, index, seed, image_size}); returns
        the brace pattern, e.g. "folder/shapes-train-{000..004}.tar"."""
        _check_split(split)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")

        def record(i: int) -> dict:
            s = self.sample(i, split)
            buf = io.BytesIO()
            s["image"].save(buf, format="PNG")
            meta = {"caption": s["caption"], "question": s["question"], "answer": s["answer"],
                    "objects": s["objects"], "split": split, "index": i, "seed": self.seed,
                    "image_size": self.image_size}
            return {"__key__": s["key"], "png": buf.getvalue(), "txt": s["caption"], "json": json.dumps(meta)}

        return write_tar_shards(folder, f"shapes-{split}", range(n), per_shard, record)


def write_shards(folder: str | os.PathLike, split: str = "train", n: int = 1000, per_shard: int = 1000,
                 seed: int = 0, image_size: int = 32, max_objects: int = 2, caption_style: str = "varied") -> str:
    """`ShapesWorld(seed, image_size, max_objects, caption_style).write_shards(folder, split, n, per_shard)`."""
    return ShapesWorld(seed, image_size, max_objects, caption_style).write_shards(folder, split, n, per_shard)


def _object_mask(o: dict, image_size: int) -> Image.Image:
    mask = Image.new("L", (image_size, image_size), 0)
    draw_shape(ImageDraw.Draw(mask), o["shape"], object_box(o["position"], o["size"], image_size), 255)
    return mask


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
