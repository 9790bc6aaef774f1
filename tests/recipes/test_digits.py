"""Real handwritten digits (scikit-learn's bundled set): the seeded stratified split, rendering,
captions and their parser, webdataset shards read back through the trainer's own path, and the
classifier that judges generated digits by their pixels."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from recipes.data import decode_sample, open_source
from recipes.data.digits import QUESTION, TEMPLATES, WORDS, Digits, caption_for, parse_caption, render, to_grid
from recipes.eval.digits_classifier import DigitClassifier


@pytest.fixture(scope="module")
def digits():
    return Digits(image_size=32, seed=0)


@pytest.fixture(scope="module")
def clf(digits):
    return DigitClassifier().fit(digits)


def test_split_is_deterministic_disjoint_and_stratified(digits):
    again = Digits(image_size=32, seed=0)
    assert np.array_equal(again.train.indices, digits.train.indices)
    assert np.array_equal(again.test.indices, digits.test.indices)
    assert not np.array_equal(Digits(seed=1).test.indices, digits.test.indices)
    train, test = set(digits.train.indices.tolist()), set(digits.test.indices.tolist())
    assert not train & test and len(train | test) == 1797
    assert (len(digits.train), len(digits.test)) == (1438, 359)
    counts = np.bincount(digits.all_labels, minlength=10)
    assert np.array_equal(np.bincount(digits.test.labels, minlength=10), np.floor(0.2 * counts + 0.5).astype(int))
    assert np.array_equal(digits.test.labels, digits.all_labels[digits.test.indices])


def test_sample_fields_and_rendering(digits):
    s = digits.train(5)
    assert s == {**digits.sample(5, "train"), "image": s["image"]}
    assert s["key"] == "digits_train_0005" and s["question"] == QUESTION
    assert s["answer"] == str(s["label"]) and parse_caption(s["caption"]) == s["label"]
    im = s["image"]
    assert im.mode == "RGB" and im.size == (32, 32)
    a = np.asarray(im)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    assert a[0, 0, 0] > 200 and a.min() < 60  # dark ink on light paper
    assert np.array_equal(np.asarray(digits.train[5]["image"]), a)
    with pytest.raises(IndexError):
        digits.test(len(digits.test))
    # rendering -> back to 8x8 stays close to the real grid
    back = np.stack([to_grid(x) for x in digits.test.images()])
    assert np.abs(back - digits.test.grids).mean() < 1.0
    assert np.abs(to_grid(render(digits.test.grids[0], 64)) - digits.test.grids[0]).mean() < 1.0


def test_captions_parse_back_exactly():
    for label in range(10):
        for v in range(len(TEMPLATES)):
            assert parse_caption(caption_for(label, v)) == label
        assert parse_caption(str(label)) == label
    assert caption_for(7, 0) == "the digit 7" and caption_for(7, 1) == "a handwritten 7"
    assert caption_for(7, 2) == "the number seven"
    assert parse_caption("A handwritten SEVEN.") == 7 and parse_caption("the number 3!") == 3
    for bad in ("a red circle", "the digit 12", "a 3 or a five", ""):
        with pytest.raises(ValueError):
            parse_caption(bad)
    assert len(set(WORDS)) == 10


def test_prompts_balanced_and_varied(digits):
    prompts = digits.prompts("test", 40)
    assert [label for _, label in prompts] == [j % 10 for j in range(40)]
    assert all(parse_caption(c) == label for c, label in prompts)
    assert len({c for c, _ in prompts}) > 10
    assert digits.prompts("test", 40) == prompts


def test_shards_read_back_through_the_trainer(digits, tmp_path):
    pattern = digits.write_shards(tmp_path / "d", "test", per_shard=300, repeat=2, seed=0)
    assert pattern == str(tmp_path / "d" / "digits-test-{000..002}.tar")
    source = open_source(pattern)
    assert len(source) == 2 * len(digits.test)
    keys = [source.key(i) for i in range(len(source))]
    assert len(set(keys)) == len(keys) and "digits_test_0007" in keys and "digits_test_0007_r1" in keys
    for i in range(0, len(source), 37):
        raw = source.raw(i)
        got = decode_sample(raw, 32)
        n = int(got["key"].split("_")[2])
        rep = 1 if got["key"].endswith("_r1") else 0
        want = digits.sample(n, "test", rep)
        assert np.array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
        assert (got["caption"], got["question"], got["answer"]) == (want["caption"], QUESTION, want["answer"])
        meta = json.loads(raw["json"])
        assert meta["label"] == want["label"] == parse_caption(got["caption"]) and meta["index"] == want["index"]
    # the two copies of one image carry different captions
    a, b = digits.sample(7, "test", 0), digits.sample(7, "test", 1)
    assert a["caption"] != b["caption"] and parse_caption(a["caption"]) == parse_caption(b["caption"])
    # same arguments -> byte-identical shards
    again = digits.write_shards(tmp_path / "e", "test", per_shard=300, repeat=2, seed=0)
    for x, y in zip(sorted((tmp_path / "d").iterdir()), sorted((tmp_path / "e").iterdir()), strict=True):
        assert x.read_bytes() == y.read_bytes()
    assert again.endswith("{000..002}.tar")


def test_classifier_heldout_accuracy(digits, clf):
    assert clf.heldout_accuracy >= 0.93 and clf.heldout_accuracy_raw >= 0.93
    rendered = clf.predict(digits.test.images())
    raw = clf.predict_grids(digits.test.grids)
    assert np.mean(rendered == raw) >= 0.98
    assert clf.heldout_accuracy == pytest.approx(np.mean(rendered == digits.test.labels))


def test_classifier_input_forms_agree(digits, clf):
    ims = digits.test.images()[:20]
    want = clf.predict(ims)
    arr = np.stack([np.asarray(x) for x in ims])
    assert np.array_equal(clf.predict(arr), want)
    assert np.array_equal(clf.predict(arr.transpose(0, 3, 1, 2).astype(np.float32) / 255.0), want)
    assert np.array_equal(clf.predict([x.convert("L") for x in ims]), want)
    assert np.array_equal(clf.predict([x.resize((64, 64), Image.Resampling.BICUBIC) for x in ims]), want)
    with pytest.raises(ValueError):
        clf.predict(arr.astype(np.float32))  # floats on the 0..255 scale are refused


def test_save_load_round_trip(digits, clf, tmp_path):
    path = tmp_path / "digits.safetensors"
    clf.save(path)
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    back = DigitClassifier.load(path)
    ims = digits.test.images()
    assert np.array_equal(back.predict(ims), clf.predict(ims))
    assert back.heldout_accuracy == clf.heldout_accuracy and back.image_size == 32
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do
        DigitClassifier.load(tmp_path / "other.safetensors")


def test_judges_pixels_not_captions(digits, clf, tmp_path):
    """Test images of a 3 written with the caption "the digit 8" are still judged 3."""
    import webdataset as wds

    rows = [i for i in range(len(digits.test)) if digits.test.labels[i] == 3][:10]
    shard = tmp_path / "wrong.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i in rows:
            s = digits.test(i)
            buf = io.BytesIO()
            s["image"].save(buf, format="PNG")
            sink.write({"__key__": s["key"], "png": buf.getvalue(), "txt": caption_for(8)})
    source = open_source(str(shard))
    decoded = [decode_sample(source.raw(i), 32) for i in range(len(source))]
    assert all(parse_caption(d["caption"]) == 8 for d in decoded)
    pred = clf.predict([d["image"] for d in decoded])
    assert np.mean(pred == 3) >= 0.9 and not (pred == 8).any()
