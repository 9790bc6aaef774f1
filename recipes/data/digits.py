"""Real handwritten digits for training and evaluation: scikit-learn's bundled `load_digits()`
(1,797 8x8 scans, intensities 0..16, shipped inside the wheel, nothing is downloaded).

    digits = Digits(image_size=32, seed=0)         # fixed, seeded, stratified 80/20 split
    len(digits.train), len(digits.test)            # 1438, 359
    s = digits.train(0)                            # == digits.train[0] == digits.sample(0, "train")
    s["image"], s["caption"], s["question"], s["answer"], s["label"]
    pattern = digits.write_shards("shards/digits", "train", repeat=4)   # webdataset tars for the trainer
    digits.prompts("test", 100)                    # [(caption, label), ...] for text-to-image eval
    parse_caption("the number seven")              # 7

Rendering: the 0..16 intensities are scaled to 0..255 and the 8x8 grid is upsampled to
image_size x image_size with bicubic filtering (computed in float, rounded once), then shown as
a dark digit on a light background (ink on paper: value 255 - v), as an RGB image. `to_grid` is
the inverse used by the evaluator: luminance, box-filtered back to 8x8, ink on the 0..16 scale.
For a rendered real digit the round trip is within ~0.7 (mean) of the original grid.

Captions vary over `TEMPLATES` ("the digit 7", "a handwritten 7", "the number seven", ...); the
question is always "which digit is this?" and the answer the single character "7".
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .shards import write_shards

SPLITS = ("train", "test")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("the digit {d}", "a handwritten {d}", "the number {w}", "a handwritten {w}")
QUESTION = "which digit is this?"
_TOKENS = re.compile(r"[a-z]+|\d+")


def caption_for(label: int, variant: int = 0) -> str:
    """The caption of digit `label` in template `variant` (taken modulo the number of templates)."""
    label = int(label)
    if not 0 <= label <= 9:
        raise ValueError(f"a digit label is 0..9, got {label}")
    return TEMPLATES[int(variant) % len(TEMPLATES)].format(d=label, w=WORDS[label])


def parse_caption(caption: str) -> int:
    """The digit a caption (or an answer) names: exact inverse of `caption_for` for every template,
    and lenient with free text (case, punctuation, extra words: "A handwritten 7." -> 7).

    Raises ValueError when it names no digit or two different ones ("a 3 or a five"); numbers
    of several digits ("10") are not digits.
    """
    found = set()
    for token in _TOKENS.findall(str(caption).lower()):
        if token.isdigit():
            if len(token) == 1:
                found.add(int(token))
        elif token in WORDS:
            found.add(WORDS.index(token))
    if len(found) != 1:
        what = "no digit" if not found else f"several digits {sorted(found)}"
        raise ValueError(f"caption {caption!r} names {what}")
    return found.pop()


def render(grid: np.ndarray, image_size: int = 32) -> Image.Image:
    """An 8x8 grid on the 0..16 scale -> a dark-on-light RGB PIL image of image_size x image_size."""
    grid = np.asarray(grid, dtype=np.float32)
    if grid.shape != (8, 8):
        grid = grid.reshape(8, 8)
    up = Image.fromarray(grid * np.float32(255.0 / 16.0)).resize((image_size, image_size), Image.Resampling.BICUBIC)
    ink = np.clip(np.rint(np.asarray(up)), 0, 255).astype(np.uint8)
    paper = 255 - ink
    return Image.fromarray(np.stack([paper] * 3, axis=-1))


def to_grid(image: Image.Image | np.ndarray) -> np.ndarray:
    """A rendered (or generated) image -> its 8x8 grid on the 0..16 scale (float32), the inverse
    of `render`: luminance (ITU-R 601), box-filtered to 8x8, ink = 255 - luminance, scaled by 16/255.

    Accepts a PIL image of any size and mode, or an (H, W) / (H, W, 3) array on the 0..255 scale.
    """
    if isinstance(image, Image.Image):
        a = np.asarray(image.convert("RGB"), dtype=np.float32)
    else:
        a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        if a.shape[-1] != 3:
            raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
        a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    small = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((8, 8), Image.Resampling.BOX))
    return ((255.0 - small) * (16.0 / 255.0)).astype(np.float32)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


class DigitSplit:
    """One split: `len(split)`, `split(i)` / `split[i]` -> sample dict, and the arrays `indices`
    (rows of `load_digits()`), `labels` and `grids` ([N, 8, 8] on the 0..16 scale)."""

    def __init__(self, digits: Digits, name: str, indices: np.ndarray):
        self.digits, self.name, self.indices = digits, name, indices
        self.labels = digits.all_labels[indices]
        self.grids = digits.all_grids[indices]
        rng = np.random.default_rng([digits.seed, SPLITS.index(name), 1])
        self.variants = rng.integers(len(TEMPLATES), size=len(indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __call__(self, i: int, rep: int = 0) -> dict:
        return self.digits.sample(i, self.name, rep)

    def __getitem__(self, i: int) -> dict:
        return self.digits.sample(i, self.name)

    def __iter__(self):
        return (self.digits.sample(i, self.name) for i in range(len(self)))

    def images(self) -> list[Image.Image]:
        return [render(g, self.digits.image_size) for g in self.grids]


class Digits:
    """scikit-learn's handwritten digits with a fixed, seeded, stratified train/test split.

    Per class c with n_c images, round(test_fraction * n_c) (half up) go to test, chosen by a
    permutation from `np.random.default_rng(seed)` drawn class by class in order 0..9; split
    rows keep the original `load_digits()` order. Seed 0, test_fraction 0.2: 1438 train, 359 test.

    A sample is {"key", "image" (PIL RGB image_size^2), "caption", "question", "answer", "label",
    "index" (row of load_digits())}. Its caption template is drawn once per (seed, split, i);
    `rep` (the copy number when a split is written several times) shifts it, so copies of one
    image carry different captions.
    """

    def __init__(self, image_size: int = 32, seed: int = 0, test_fraction: float = 0.2):
        from sklearn.datasets import load_digits

        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.image_size, self.seed, self.test_fraction = int(image_size), int(seed), float(test_fraction)
        data = load_digits()
        self.all_grids = np.asarray(data.images, dtype=np.float32)  # [1797, 8, 8], 0..16
        self.all_labels = np.asarray(data.target, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        test = []
        for c in range(10):
            rows = np.flatnonzero(self.all_labels == c)
            test.append(rng.permutation(rows)[:_round_half_up(self.test_fraction * len(rows))])
        test_rows = np.sort(np.concatenate(test))
        train_rows = np.setdiff1d(np.arange(len(self.all_labels)), test_rows)
        self.train = DigitSplit(self, "train", train_rows)
        self.test = DigitSplit(self, "test", test_rows)

    def split(self, name: str) -> DigitSplit:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.train if name == "train" else self.test

    def sample(self, i: int, split: str = "train", rep: int = 0) -> dict:
        part = self.split(split)
        i = int(i)
        if not 0 <= i < len(part):
            raise IndexError(f"sample {i} out of range for the {split} split of {len(part)}")
        label = int(part.labels[i])
        key = f"digits_{split}_{i:04d}" + (f"_r{rep}" if rep else "")
        return {"key": key, "image": render(part.grids[i], self.image_size),
                "caption": caption_for(label, int(part.variants[i]) + rep), "question": QUESTION,
                "answer": str(label), "label": label, "index": int(part.indices[i])}

    def prompts(self, split: str = "test", n: int = 100) -> list[tuple[str, int]]:
        """n (caption, label) pairs, balanced: labels cycle 0, 1, ..., 9; the m-th prompt of digit d
        is the caption of the split's m-th sample of d (wrapping, with the next template on each
        wrap), so the templates vary as they do in the split."""
        part = self.split(split)
        by_label = [np.flatnonzero(part.labels == d) for d in range(10)]
        out = []
        for j in range(int(n)):
            d, m = j % 10, j // 10
            rows = by_label[d]
            i = int(rows[m % len(rows)])
            out.append((caption_for(d, int(part.variants[i]) + m // len(rows)), d))
        return out

    def write_shards(self, folder: str | os.PathLike, split: str = "train", per_shard: int = 1000,
                     repeat: int = 1, seed: int | None = None) -> str:
        """Write the split as webdataset tar shards `folder/digits-{split}-NNN.tar`, each sample
        `KEY.png` (image_size RGB), `KEY.txt` (caption) and `KEY.json` {caption, question, answer,
        label, index}; returns the brace pattern (`.../digits-train-{000..001}.tar`).

        `repeat` writes every image that many times (keys `..._rK` for copy K > 0), each copy with
        the next caption template. `seed` (None: the Digits seed) shuffles which shard a sample
        lands in (the reader orders samples by key within a shard). Members carry a fixed mtime,
        so the same arguments give byte-identical shards.
        """
        part = self.split(split)
        if per_shard < 1 or repeat < 1:
            raise ValueError(f"per_shard and repeat must be >= 1, got {per_shard}, {repeat}")
        items = [(i, r) for r in range(repeat) for i in range(len(part))]
        order = np.random.default_rng([self.seed if seed is None else int(seed), SPLITS.index(split), 2])
        items = [items[k] for k in order.permutation(len(items))]

        def record(item: tuple[int, int]) -> dict:
            x = self.sample(item[0], split, item[1])
            meta = {k: x[k] for k in ("caption", "question", "answer", "label", "index")}
            return {"__key__": x["key"], "png": _png(x["image"]), "txt": x["caption"], "json": json.dumps(meta)}

        return write_shards(folder, f"digits-{split}", items, per_shard, record)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="write scikit-learn's digits as webdataset shards")
    p.add_argument("out", help="folder for the shards")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args(argv)
    print(Digits(a.image_size, a.seed).write_shards(a.out, a.split, a.per_shard, a.repeat))


if __name__ == "__main__":
    main()
