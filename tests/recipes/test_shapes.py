"""Shapes World (recipes.data.shapes) and its analytic detector / GenEval-style scorer (recipes.eval.detector):
determinism, the held-out split, exact ground truth, captions that parse back, questions with the right
answers, shards read through the trainer's own data path, and the detector against the ground truth on
clean and degraded images."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.data import decode_sample, open_source
from recipes.data.shapes import (
    BACKGROUND,
    COLOURS,
    HELDOUT_COMBOS,
    POSITIONS,
    SHAPES,
    SIZES,
    TRAIN_COMBOS,
    ShapesWorld,
    canonical_caption,
    cell,
    parse_caption,
    relation_holds,
    write_shards,
)
from recipes.eval.detector import DEGRADATIONS, agreement, caption_correct, degrade, detect, score

N_CHECK = 1500  # samples per split for the cheap checks (~0.1 ms each)


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(seed=0)


@pytest.fixture(scope="module")
def samples(world) -> dict[str, list[dict]]:
    return {split: [world.sample(i, split) for i in range(N_CHECK)] for split in ("train", "heldout")}


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def combos(sample: dict) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in sample["objects"]}


# -- the world ---------------------------------------------------------------------------------------------------


def test_deterministic_from_the_seed():
    a, b, c = ShapesWorld(seed=0), ShapesWorld(seed=0), ShapesWorld(seed=1)
    order = [7, 3, 0, 42, 3]  # any order of access gives the same sample
    for split in ("train", "heldout"):
        for i in order:
            x, y = a.sample(i, split), b.sample(i, split)
            assert png_bytes(x["image"]) == png_bytes(y["image"])
            assert (x["caption"], x["question"], x["answer"], x["objects"]) == \
                (y["caption"], y["question"], y["answer"], y["objects"])
        differ = sum(a.sample(i, split)["caption"] != c.sample(i, split)["caption"] for i in range(20))
        assert differ >= 15
    assert a.train(5)["caption"] == a.sample(5, "train")["caption"]
    assert a.heldout(5)["caption"] == a.sample(5, "heldout")["caption"]
    assert a.train(5)["caption"] != a.heldout(5)["caption"] or a.train(5)["objects"] != a.heldout(5)["objects"]


def test_heldout_combinations_never_in_training(samples):
    assert len(HELDOUT_COMBOS) == 4 and {s for _, s in HELDOUT_COMBOS} == set(SHAPES)
    seen_train = set()
    for s in samples["train"]:
        assert not combos(s) & HELDOUT_COMBOS, s["caption"]
        seen_train |= combos(s)
        for c, h in HELDOUT_COMBOS:  # nor in the training texts
            assert f"{c} {h}" not in s["caption"] and f"{c} {h}" not in s["question"]
    assert seen_train == set(TRAIN_COMBOS)  # every other combination is trained
    for s in samples["heldout"]:
        assert combos(s) & HELDOUT_COMBOS, s["caption"]
    seen_heldout = set().union(*(combos(s) for s in samples["heldout"]))
    assert HELDOUT_COMBOS <= seen_heldout


def test_scenes_are_exact_and_varied(world, samples):
    counts = {1: 0, 2: 0}
    attrs = {"colour": set(), "shape": set(), "position": set(), "size": set()}
    for s in samples["train"][:400] + samples["heldout"][:400]:
        objs = s["objects"]
        counts[len(objs)] += 1
        assert len({o["position"] for o in objs}) == len(objs)  # different cells
        assert len(combos(s)) == len(objs)  # never the same (colour, shape) twice
        a = np.asarray(s["image"])
        assert s["image"].size == (32, 32) and s["image"].mode == "RGB"
        allowed = {BACKGROUND} | {COLOURS[o["colour"]] for o in objs}
        assert {tuple(int(v) for v in p) for p in np.unique(a.reshape(-1, 3), axis=0)} == allowed  # no blending
        for o in objs:
            for k in attrs:
                attrs[k].add(o[k])
            x0, y0, x1, y1 = o["bbox"]
            mask = np.all(a == COLOURS[o["colour"]], axis=2)
            inside = mask[y0:y1, x0:x1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            side = x1 - x0
            assert side == y1 - y0 and side == (6 if o["size"] == "small" else 8)
            row, col = cell(o["position"])
            assert int((x0 + x1) / 2 * 3 / 32) == col and int((y0 + y1) / 2 * 3 / 32) == row
    assert counts[1] > 100 and counts[2] > 100
    assert attrs == {"colour": set(COLOURS), "shape": set(SHAPES), "position": set(POSITIONS), "size": set(SIZES)}
    assert all(len(ShapesWorld(3, max_objects=1).train(i)["objects"]) == 1 for i in range(50))
    big = ShapesWorld(0, image_size=64).train(1)
    assert big["image"].size == (64, 64) and big["objects"][0]["bbox"][2] - big["objects"][0]["bbox"][0] in (12, 16)


def test_captions_parse_back_exactly(samples):
    forms = set()
    for s in samples["train"] + samples["heldout"]:
        specs = parse_caption(s["caption"])
        objs = s["objects"]
        assert len(specs) == len(objs), s["caption"]
        for spec, o in zip(specs, objs, strict=True):
            assert (spec["colour"], spec["shape"]) == (o["colour"], o["shape"]), s["caption"]
            assert spec["size"] in (None, o["size"]), s["caption"]
            if spec["relation"] is None:
                assert spec["position"] == o["position"], s["caption"]
            else:
                rel, j = spec["relation"]
                assert spec["position"] is None and relation_holds(rel, o["position"], objs[j]["position"])
        assert score(specs, objs)["overall"] == 1.0
        assert caption_correct(s["caption"], objs)
        text = s["caption"]
        forms.add("relative" if specs[0]["relation"] else f"{len(specs)}:{text.split()[0]}")
        forms.add("size" if specs[0]["size"] else "no size")
    assert {"relative", "1:a", "1:there", "1:in", "1:on", "1:at", "2:a", "2:there", "size", "no size"} <= forms
    assert parse_caption("  A Red Circle  in the middle. ") == [
        {"colour": "red", "shape": "circle", "size": None, "position": "center", "relation": None}]
    assert parse_caption("a small red circle above a large blue square") == [
        {"colour": "red", "shape": "circle", "size": "small", "position": None, "relation": ("above", 1)},
        {"colour": "blue", "shape": "square", "size": "large", "position": None, "relation": ("below", 0)}]
    for bad in ("a red circle", "a pink circle in the center", "a red hexagon at the top", "", "red circle left"):
        with pytest.raises(ValueError):
            parse_caption(bad)
    assert not caption_correct("nonsense", samples["train"][0]["objects"])


def test_canonical_captions():
    world = ShapesWorld(seed=0, caption_style="canonical")
    for i in range(200):
        s = world.train(i)
        assert s["caption"] == canonical_caption(s["objects"])
        assert [p["position"] for p in parse_caption(s["caption"])] == [o["position"] for o in s["objects"]]
        assert [POSITIONS.index(o["position"]) for o in s["objects"]] == \
            sorted(POSITIONS.index(o["position"]) for o in s["objects"])


def _answer(question: str, objs: list[dict]) -> str:
    """Answer a question from the objects, independently of the generator; asserts it is unambiguous."""
    phrase = {"in the top left": "top left", "at the top": "top", "in the top right": "top right",
              "on the left": "left", "in the center": "center", "on the right": "right",
              "in the bottom left": "bottom left", "at the bottom": "bottom", "in the bottom right": "bottom right"}

    def one(pred):
        hits = [o for o in objs if pred(o)]
        assert len(hits) == 1, (question, objs)
        return hits[0]

    if question == "how many objects are there?":
        return ["one", "two"][len(objs) - 1]
    if m := re.fullmatch(r"where is the (\w+) (\w+)\?", question):
        return one(lambda o: (o["colour"], o["shape"]) == m.groups())["position"]
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        return one(lambda o: (o["colour"], o["shape"]) == m.groups())["size"]
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        return one(lambda o: o["shape"] == m[1])["colour"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return one(lambda o: o["colour"] == m[1])["shape"]
    if m := re.fullmatch(r"what shape is (.+)\?", question):
        return one(lambda o: o["position"] == phrase[m[1]])["shape"]
    if m := re.fullmatch(r"what colour is the object (.+)\?", question):
        return one(lambda o: o["position"] == phrase[m[1]])["colour"]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if any((o["colour"], o["shape"]) == m.groups() for o in objs) else "no"
    raise AssertionError(f"unknown question {question!r}")


def test_questions_have_the_right_unique_answers(samples):
    kinds = set()
    for s in samples["train"] + samples["heldout"]:
        assert _answer(s["question"], s["objects"]) == s["answer"], (s["question"], s["objects"])
        kinds.add(" ".join(s["question"].split()[:3]) + ("/" + s["answer"] if s["answer"] in ("yes", "no") else ""))
    assert {"how many objects", "where is the", "what colour is", "what shape is", "what size is",
            "is there a/yes", "is there a/no"} <= kinds


def test_shards_read_back_through_the_trainer_path(tmp_path, world):
    pattern = write_shards(tmp_path / "shards", "train", n=25, per_shard=10, seed=0)
    assert pattern == str(tmp_path / "shards" / "shapes-train-{000..002}.tar")
    assert world.write_shards(tmp_path / "again", "heldout", n=3).endswith("shapes-heldout-{000..000}.tar")
    write_shards(tmp_path / "twice", "train", n=25, per_shard=10, seed=0)
    for k in range(3):  # byte-identical shards
        name = f"shapes-train-{k:03d}.tar"
        assert (tmp_path / "shards" / name).read_bytes() == (tmp_path / "twice" / name).read_bytes()
    source = open_source(pattern)
    assert len(source) == 25
    for i in range(25):
        raw = source.raw(i)
        got = decode_sample(raw, 32)
        want = world.train(i)
        assert got["key"] == want["key"] == f"train_{i:07d}"
        assert (got["caption"], got["question"], got["answer"]) == (want["caption"], want["question"], want["answer"])
        assert np.array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
        meta = json.loads(raw["json"])
        assert meta["objects"] == want["objects"] and meta["split"] == "train" and meta["index"] == i


def test_prompts_are_distinct_captions_of_the_split(world):
    prompts = world.prompts("heldout", 50)
    assert len(set(prompts)) == 50 and prompts == world.prompts("heldout", 50)
    for p in prompts:
        assert {(s["colour"], s["shape"]) for s in parse_caption(p)} & HELDOUT_COMBOS
    assert world.prompts("train", 5, start=10_000)[0] == world.train(10_000)["caption"]


# -- the detector ------------------------------------------------------------------------------------------------


def _eval_set(n: int) -> list[dict]:
    world = ShapesWorld(seed=7)  # not the seed the rest of the tests look at
    return [world.train(i) for i in range(n)] + [world.heldout(i) for i in range(n)]


def test_detector_agrees_with_ground_truth_on_clean_images():
    r = agreement(_eval_set(250))  # 500 images, ~800 objects
    assert r["images"] == 500
    for key in ("colour", "shape", "position", "size", "count"):
        assert r[key] >= 0.99, r


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_detector_is_robust_to_mild_degradation(kind):
    r = agreement(_eval_set(100), lambda im, n: degrade(im, kind, seed=n))
    for key in ("colour", "shape", "position", "count"):
        assert r[key] >= 0.95, (kind, r)


def test_detect_inputs_and_output():
    s = ShapesWorld(seed=0).train(1)
    found = detect(s["image"])
    a = np.asarray(s["image"])
    assert detect(a) == found
    assert detect(torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255) == found  # [3, H, W] in [0, 1]
    for f, o in zip(found, sorted(s["objects"], key=lambda o: POSITIONS.index(o["position"])), strict=True):
        x0, y0, x1, y1 = o["bbox"]
        assert f["bbox"] == (x0, y0, x1, y1)
        assert f["pixels"] == int(np.all(a[y0:y1, x0:x1] == COLOURS[o["colour"]], axis=2).sum())
    assert detect(Image.new("RGB", (32, 32), BACKGROUND)) == []
    grey = Image.new("RGB", (32, 32), BACKGROUND)
    grey.paste((90, 90, 90), (12, 12, 20, 20))  # no palette colour: not an object of this world
    assert detect(grey) == []


def test_score_rules():
    red_tl = {"colour": "red", "shape": "circle", "position": "top left", "size": "small"}
    blue_br = {"colour": "blue", "shape": "square", "position": "bottom right", "size": "large"}
    asked = parse_caption("a red circle in the top left and a blue square in the bottom right")
    right = score(asked, [blue_br, red_tl])  # order of found objects does not matter
    assert right == {"colour": 1.0, "shape": 1.0, "position": 1.0, "size": None, "count": 1.0, "overall": 1.0}

    wrong_colour = score(asked, [{**red_tl, "colour": "green"}, blue_br])
    assert wrong_colour["colour"] == 0.5 and wrong_colour["shape"] == 1.0 and wrong_colour["overall"] == 0.0

    extra = score(asked, [red_tl, blue_br, {**red_tl, "position": "center"}])
    assert extra["count"] == 0.0 and extra["colour"] == 1.0 and extra["overall"] == 0.0
    missing = score(asked, [red_tl])
    assert missing["count"] == 0.0 and missing["colour"] == 0.5 and missing["position"] == 0.5
    assert score(asked, [])["overall"] == 0.0

    swapped = score(asked, [{**red_tl, "position": "bottom right"}, {**blue_br, "position": "top left"}])
    assert swapped["position"] == 0.0 and swapped["colour"] == swapped["shape"] == 1.0 and swapped["overall"] == 0

    rel = parse_caption("a red circle to the left of a blue square")
    left, right_ = {**red_tl, "position": "left"}, {**blue_br, "position": "right"}
    assert score(rel, [right_, left])["overall"] == 1.0
    flipped = score(rel, [{**left, "position": "right"}, {**right_, "position": "left"}])
    assert flipped["position"] == 0.0 and flipped["overall"] == 0.0
    other_row = score(rel, [left, {**right_, "position": "bottom right"}])  # strict: same row
    assert other_row["position"] == 0.0

    sized = parse_caption("a large red circle in the top left")
    assert score(sized, [red_tl])["size"] == 0.0 and score(sized, [red_tl])["overall"] == 0.0
    assert score(sized, [{**red_tl, "size": "large"}])["overall"] == 1.0
