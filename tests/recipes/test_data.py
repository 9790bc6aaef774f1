"""The data layer: indexed tar/jsonl readers, decoding, rank-independent resumable batches,
bad-sample accounting, mixtures and the token cache. Shards are written with webdataset's own
TarWriter, so the reader is checked against the real format."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image, ImageDraw, ImageFile

from modalities import debug_image_codec
from recipes.data import (
    BadSample,
    GlobalBatchLoader,
    JsonlSource,
    MixtureSource,
    TarShardSource,
    TokenCache,
    decode_sample,
    open_source,
)

SIZE = 16
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40),
           "white": (250, 250, 250), "black": (5, 5, 5)}
SHAPES = ("circle", "square", "triangle")
N_SHARDS, PER_SHARD = 3, 8
BAD_GARBAGE, BAD_TRUNCATED = "s1_003", "s2_005"


def draw(n: int) -> tuple[Image.Image, str]:
    names = list(COLOURS)
    bg, fg = names[n % len(names)], names[(n * 5 + 1) % len(names)]
    if fg == bg:
        fg = names[(n + 2) % len(names)]
    shape = SHAPES[n % len(SHAPES)]
    im = Image.new("RGB", (SIZE, SIZE), COLOURS[bg])
    d = ImageDraw.Draw(im)
    box = (3 + n % 3, 2, 12, 13 - n % 2)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[fg])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[fg])
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLOURS[fg])
    return im, f"a {fg} {shape} on {bg}"


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """3 webdataset shards x 8 samples (2 bad) and a jsonl manifest (2 bad of 7)."""
    root = tmp_path_factory.mktemp("data")
    expected = {}  # key -> (pixels, caption, question, answer)
    for s in range(N_SHARDS):
        samples = []
        for i in range(PER_SHARD):
            key, n = f"s{s}_{i:03d}", s * PER_SHARD + i
            im, caption = draw(n)
            sample = {"__key__": key, "png": png(im)}
            question = answer = None
            if n % 4 == 1:  # caption and question/answer in the json, no .txt
                question, answer = "what shape is it?", caption.split()[2]
                sample["json"] = json.dumps({"caption": caption, "question": question, "answer": answer})
            else:
                sample["txt"] = caption
                if n % 4 == 2:
                    sample["json"] = json.dumps({"url": "http://example.com", "width": SIZE})
            if key == BAD_GARBAGE:
                sample["png"] = b"\x89PNG this is not an image at all" * 3
            if key == BAD_TRUNCATED:
                sample["png"] = sample["png"][: len(sample["png"]) // 2]
            samples.append(sample)
            expected[key] = (np.asarray(im), caption, question, answer)
        if s == 1:
            samples.reverse()  # written out of order: the index sorts by key within a shard
        with wds.TarWriter(str(root / f"shard-{s:03d}.tar")) as sink:
            for sample in samples:
                sink.write(sample)

    jdir = root / "jsonl"
    (jdir / "images").mkdir(parents=True)
    lines, jexpected = [], {}
    for i in range(5):
        im, caption = draw(100 + i)
        path = jdir / "images" / f"{i}.png"
        im.save(path)
        record = {"image": f"images/{i}.png" if i != 3 else str(path), "caption": caption}  # 3: absolute
        if i == 4:
            record.update(question="what colour is the background?", answer=caption.split()[-1])
        lines.append(json.dumps(record))
        jexpected[f"manifest.jsonl:{len(lines)}"] = (np.asarray(im), caption)
    lines.insert(2, '{"image": "images/0.png", "caption": "broken')  # malformed: line 3
    lines.append(json.dumps({"image": "images/missing.png", "caption": "gone"}))  # line 7
    lines.append("")  # blank lines are not samples
    (jdir / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    jexpected = {(f"manifest.jsonl:{int(k.split(':')[1]) + (int(k.split(':')[1]) >= 3)}"): v
                 for k, v in jexpected.items()}
    return {"root": root, "tar": str(root / "shard-{000..002}.tar"), "expected": expected,
            "jsonl": str(jdir / "manifest.jsonl"), "jexpected": jexpected,
            "jbad": {"manifest.jsonl:3", "manifest.jsonl:7"}}


def keys(mbs) -> list[tuple[int, list[str]]]:
    return [(j, [s["key"] for s in samples]) for j, samples in mbs]


# ---------------------------------------------------------------------------------------------- readers


def test_tar_index_and_decode_round_trip(data):
    src = TarShardSource(data["tar"])
    assert len(src) == N_SHARDS * PER_SHARD
    assert [src.key(i) for i in range(len(src))] == sorted(data["expected"])  # sorted in shard, shards in order
    assert src.index_errors == []
    for i in range(len(src)):
        key = src.key(i)
        raw = src.raw(i)
        assert raw["__key__"] == key and raw["__url__"].endswith(f"shard-{key[1]:0>3}.tar")
        if key in (BAD_GARBAGE, BAD_TRUNCATED):
            with pytest.raises(BadSample, match="undecodable image") as e:
                decode_sample(raw, SIZE)
            assert e.value.key == key
            continue
        sample = decode_sample(raw, SIZE)
        pixels, caption, question, answer = data["expected"][key]
        assert sample["key"] == key and sample["image"].mode == "RGB"
        np.testing.assert_array_equal(np.asarray(sample["image"]), pixels)
        assert (sample["caption"], sample["question"], sample["answer"]) == (caption, question, answer)
    # globs, lists and open_source agree with the brace pattern
    same = [src.key(i) for i in range(len(src))]
    glob_src = TarShardSource(str(data["root"] / "shard-*.tar"))
    assert [glob_src.key(i) for i in range(len(glob_src))] == same
    listed = open_source([str(data["root"] / f"shard-{s:03d}.tar") for s in range(N_SHARDS)])
    assert isinstance(listed, TarShardSource) and len(listed) == len(src)
    assert isinstance(open_source(data["tar"]), TarShardSource)
    # overlapping patterns name a shard twice: it is indexed once
    assert len(TarShardSource([data["tar"], str(data["root"] / "shard-000.tar")])) == len(src)


def test_truncated_and_damaged_shards_index_their_complete_members(data, tmp_path):
    shard = data["root"] / "shard-000.tar"
    blob = shard.read_bytes()
    with tarfile.open(shard) as tf:
        members = {m.name: m for m in tf.getmembers()}
    cut_png = members["s0_004.png"]
    # cut in the middle of a member's data
    (tmp_path / "cut-data.tar").write_bytes(blob[: cut_png.offset_data + cut_png.size // 2])
    src = TarShardSource(str(tmp_path / "cut-data.tar"))
    assert [src.key(i) for i in range(len(src))] == [f"s0_{i:03d}" for i in range(5)]
    assert len(src.index_errors) == 1 and "cut" in src.index_errors[0]
    for i in range(4):
        assert decode_sample(src.raw(i), SIZE)["caption"] == data["expected"][src.key(i)][1]
    with pytest.raises(BadSample, match="truncated shard"):
        decode_sample(src.raw(4), SIZE)
    # cut in the middle of a header: tarfile would end quietly; the index notices
    next_header = min(m.offset for name, m in members.items() if name.startswith("s0_005."))
    (tmp_path / "cut-header.tar").write_bytes(blob[: next_header + 100])
    src = TarShardSource(str(tmp_path / "cut-header.tar"))
    assert len(src) == 5 and len(src.index_errors) == 1
    # a file that is not a tar at all, next to a good shard: no crash, reported
    (tmp_path / "junk.tar").write_bytes(b"<html>502 bad gateway</html>" * 40)
    src = TarShardSource([str(tmp_path / "junk.tar"), str(shard)])
    assert len(src) == PER_SHARD and len(src.index_errors) == 1
    with pytest.raises(ValueError, match="no samples"):
        TarShardSource(str(tmp_path / "junk.tar"))


def test_duplicate_keys_across_shards_are_refused_or_qualified(data, tmp_path):
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"d{s}.tar")) as sink:
            sink.write({"__key__": "000", "png": png(draw(s)[0]), "txt": "x"})
    with pytest.raises(ValueError, match="qualify_keys"):
        TarShardSource(str(tmp_path / "d*.tar"))
    src = open_source({"path": str(tmp_path / "d*.tar"), "qualify_keys": True})
    assert [src.key(i) for i in range(2)] == ["d0.tar/000", "d1.tar/000"]


def test_jsonl_manifest(data):
    src = open_source(data["jsonl"])
    assert isinstance(src, JsonlSource) and len(src) == 7  # 5 good + malformed + missing file; blank skipped
    good = 0
    for i in range(len(src)):
        key = src.key(i)
        if key in data["jbad"]:
            with pytest.raises(BadSample, match="invalid JSON|cannot read image file"):
                decode_sample(src.raw(i), SIZE)
            continue
        sample = decode_sample(src.raw(i), SIZE)
        pixels, caption = data["jexpected"][key]
        np.testing.assert_array_equal(np.asarray(sample["image"]), pixels)
        assert sample["caption"] == caption
        good += 1
    assert good == 5
    qa = next(i for i in range(len(src)) if src.key(i) == "manifest.jsonl:6")
    assert decode_sample(src.raw(qa), SIZE)["question"] == "what colour is the background?"


# ---------------------------------------------------------------------------------------------- decoding


def encoded(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("make, centre", [
    (lambda: Image.new("L", (SIZE, SIZE), 128), (128, 128, 128)),
    (lambda: Image.new("LA", (SIZE, SIZE), (128, 255)), (128, 128, 128)),
    (lambda: Image.new("RGBA", (SIZE, SIZE), (10, 200, 30, 255)), (10, 200, 30)),
    (lambda: Image.new("P", (SIZE, SIZE), 3), None),
    (lambda: Image.fromarray(np.full((SIZE, SIZE), 40000, dtype=np.uint16)), (156, 156, 156)),  # 16-bit
    (lambda: Image.new("RGB", (32, 24), (200, 10, 10)), (200, 10, 10)),
    (lambda: Image.new("L", (20, 40), 90), (90, 90, 90)),
], ids=["L", "LA", "RGBA", "P", "I16", "32x24", "20x40-L"])
def test_any_mode_and_size_comes_out_rgb_at_image_size(make, centre):
    raw = {"__key__": "k", "png": encoded(make()), "txt": b"a caption"}
    image = decode_sample(raw, SIZE)["image"]
    assert image.mode == "RGB" and image.size == (SIZE, SIZE)
    if centre is not None:
        assert tuple(np.asarray(image)[SIZE // 2, SIZE // 2]) == centre
    assert decode_sample(raw, (8, 12), resize="stretch")["image"].size == (12, 8)


def test_alpha_is_composited_on_white_and_jpeg_decodes():
    im = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 8, SIZE))
    out = np.asarray(decode_sample({"__key__": "k", "png": encoded(im), "txt": "c"}, SIZE)["image"])
    assert (out[:, :8] == (255, 0, 0)).all() and (out[:, 8:] == 255).all()
    jpg = encoded(Image.new("RGB", (SIZE, SIZE), (0, 128, 255)), "JPEG")
    assert decode_sample({"__key__": "k", "jpg": jpg, "txt": "c"}, SIZE)["image"].size == (SIZE, SIZE)


IMG = encoded(Image.new("RGB", (SIZE, SIZE), (1, 2, 3)))


@pytest.mark.parametrize("raw, reason", [
    ({"png": IMG, "txt": b"caf\xe9"}, "not UTF-8"),
    ({"png": IMG, "json": b'{"caption": "x"'}, "invalid JSON"),
    ({"png": IMG, "json": b'["x"]'}, "expected an object"),
    ({"png": IMG, "json": b'{"caption": 3}'}, "expected a string"),
    ({"png": IMG}, "missing caption"),
    ({"png": IMG, "txt": b"  \n"}, "empty caption"),
    ({"png": IMG, "json": b'{"question": "why?"}'}, "question without answer"),
    ({"txt": b"a caption"}, "missing image"),
    ({"png": b"", "txt": b"a caption"}, "empty image"),
    ({"png": IMG[: len(IMG) // 2], "txt": b"a caption"}, "undecodable image"),
    ({"png": IMG, "txt": b"c", "__error__": "cannot read image file"}, "cannot read image file"),
])
def test_bad_samples_raise_bad_sample(raw, reason):
    with pytest.raises(BadSample, match=reason) as e:
        decode_sample({"__key__": "the-key", **raw}, SIZE)
    assert e.value.key == "the-key" and reason in e.value.reason


def test_question_answer_without_caption_is_a_sample():
    s = decode_sample({"__key__": "k", "png": IMG, "json": b'{"question": "q?", "answer": "a"}'}, SIZE)
    assert (s["caption"], s["question"], s["answer"]) == (None, "q?", "a")


def test_truncated_images_are_never_loaded_silently(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_sample({"__key__": "k", "png": IMG, "txt": b"c"}, SIZE)


# ---------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("drop_last", [True, False])
def test_micro_batches_do_not_depend_on_world_size(data, drop_last):
    src = TarShardSource(data["tar"])  # 24 samples; 16 a step: step 1 crosses the epoch boundary
    steps = range(5)
    runs, bad = {}, {}
    for ws in (1, 2, 4):
        loaders = [GlobalBatchLoader(src, 16, 4, seed=3, image_size=SIZE, drop_last=drop_last) for _ in range(ws)]
        per_step = []
        for step in steps:
            merged = {}
            for rank, loader in enumerate(loaders):
                mbs = loader.micro_batches(step, rank, ws)
                assert [j for j, _ in mbs] == list(range(rank, 4, ws))
                merged.update(dict(keys(mbs)))
            per_step.append(sorted(merged.items()))
        runs[ws] = per_step
        bad[ws] = sum(lo.bad_count for lo in loaders)  # per-rank counts add up to the single-rank count
    assert runs[1] == runs[2] == runs[4]
    assert bad[1] == bad[2] == bad[4] > 0

    # the order is the documented one: concatenated randperm(seed + epoch), cut to 16 with drop_last
    loader = GlobalBatchLoader(src, 16, 4, seed=3, image_size=SIZE, drop_last=drop_last)
    perm = [torch.randperm(24, generator=torch.Generator().manual_seed(3 + e)).tolist() for e in range(3)]
    stream = sum((p[:16] if drop_last else p for p in perm), [])
    for step in steps[:3]:
        assert loader.global_indices(step) == stream[step * 16 : (step + 1) * 16]
    assert loader.micro_batch_indices(1, 2) == stream[16 + 8 : 16 + 12]


def test_resume_at_a_step_gives_the_same_micro_batches(data):
    src = TarShardSource(data["tar"])
    first = GlobalBatchLoader(src, 8, 2, seed=11, image_size=SIZE, drop_last=False)
    history = [first.micro_batches(step) for step in range(6)]
    for k in (0, 3, 5):
        resumed = GlobalBatchLoader(TarShardSource(data["tar"]), 8, 2, seed=11, image_size=SIZE, drop_last=False)
        again = resumed.micro_batches(step=k)
        assert keys(again) == keys(history[k])
        for (_, a), (_, b) in zip(again, history[k], strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
    other_seed = GlobalBatchLoader(src, 8, 2, seed=12, image_size=SIZE, drop_last=False)
    assert keys(other_seed.micro_batches(0)) != keys(history[0])


def test_bad_samples_are_skipped_counted_and_logged_once(data, caplog):
    src = TarShardSource(data["tar"])
    loader = GlobalBatchLoader(src, 8, 2, seed=0, image_size=SIZE, workers=2)  # 3 steps an epoch
    assert loader.describe()["steps_per_epoch"] == 3
    caplog.set_level(logging.WARNING, logger="recipes.data")
    seen = []
    for step in range(3):
        for _, samples in loader.micro_batches(step):
            seen += [s["key"] for s in samples]
    assert loader.bad_count == 2 and loader.bad_keys == {BAD_GARBAGE, BAD_TRUNCATED}
    assert sorted(seen) == sorted(set(data["expected"]) - {BAD_GARBAGE, BAD_TRUNCATED})  # the rest flows
    for step in range(3, 6):  # the next epoch draws both again
        loader.micro_batches(step)
    assert loader.bad_count == 4 and len(loader.bad_keys) == 2
    for key in (BAD_GARBAGE, BAD_TRUNCATED):
        assert sum(key in r.getMessage() for r in caplog.records) == 1
    assert "undecodable image" in loader.bad_reasons[BAD_GARBAGE]
    assert "truncated" in loader.bad_reasons[BAD_TRUNCATED]  # caught by Image.load(), not just open()


def test_jsonl_bad_lines_are_counted_not_fatal(data):
    loader = GlobalBatchLoader(open_source(data["jsonl"]), 7, 7, seed=0, image_size=SIZE)
    (_, samples), = loader.micro_batches(0)
    assert len(samples) == 5 and loader.bad_count == 2 and loader.bad_keys == data["jbad"]
    assert "invalid JSON" in loader.bad_reasons["manifest.jsonl:3"]
    assert "cannot read image file" in loader.bad_reasons["manifest.jsonl:7"]


def test_an_all_bad_micro_batch_is_empty(data):
    src = TarShardSource(data["tar"])
    loader = GlobalBatchLoader(src, 24, 1, seed=5, image_size=SIZE)
    bad = [j for j, i in enumerate(loader.global_indices(0)) if src.key(i) in (BAD_GARBAGE, BAD_TRUNCATED)]
    mbs = dict(loader.micro_batches(0))
    assert [j for j, s in mbs.items() if not s] == bad and len(mbs) == 24


def test_configuration_errors_are_clear(data):
    src = TarShardSource(data["tar"])
    with pytest.raises(ValueError, match="not a multiple of micro_batch"):
        GlobalBatchLoader(src, 10, 4, seed=0, image_size=SIZE)
    with pytest.raises(ValueError, match="do not split evenly over 3 ranks"):
        GlobalBatchLoader(src, 8, 2, seed=0, image_size=SIZE).micro_batches(0, 0, 3)
    with pytest.raises(ValueError, match="fewer than global_batch"):
        GlobalBatchLoader(src, 32, 2, seed=0, image_size=SIZE)
    assert len(GlobalBatchLoader(src, 32, 2, seed=0, image_size=SIZE, drop_last=False).global_indices(0)) == 32
    with pytest.raises(ValueError, match="cannot tell the format"):
        open_source("data/images.zip")


# ---------------------------------------------------------------------------------------------- mixtures


def test_mixture_follows_the_weights_deterministically(data):
    spec = {"mix": [{"source": data["tar"], "weight": 0.7, "name": "shapes"},
                    {"source": data["jsonl"], "weight": 0.3}]}
    mix = open_source(spec)
    assert isinstance(mix, MixtureSource) and len(mix) == 24 + 7
    order = mix.order(seed=4)
    idx = order.indices(0, 20_000)
    frac = np.mean([mix.source_of(i) == 0 for i in idx])
    assert abs(frac - 0.7) < 0.01
    window = np.mean([mix.source_of(i) == 0 for i in idx[5000:5500]])  # also locally, not just on average
    assert abs(window - 0.7) < 0.08
    assert open_source(spec).order(seed=4).indices(0, 20_000) == idx
    assert mix.order(seed=5).indices(0, 200) != idx[:200]
    # each part walks its own permutations: its first len(part) draws are all of its samples once
    tar_draws = [i for i in idx if mix.source_of(i) == 0][:24]
    assert sorted(tar_draws) == list(range(24))
    assert mix.key(0).startswith("shapes/") and mix.key(24) == "manifest.jsonl/manifest.jsonl:1"

    single = GlobalBatchLoader(mix, 12, 3, seed=4, image_size=SIZE)
    pair = [GlobalBatchLoader(open_source(spec), 12, 3, seed=4, image_size=SIZE) for _ in range(2)]
    for step in (0, 7):
        merged = sorted(keys(pair[0].micro_batches(step, 0, 2)) + keys(pair[1].micro_batches(step, 1, 2)))
        assert merged == keys(single.micro_batches(step))
    sample = next(s for _, b in single.micro_batches(0) for s in b)
    assert sample["source"] in ("shapes", "manifest.jsonl") and sample["key"].startswith(sample["source"] + "/")
    assert [p["name"] for p in single.describe()["mixture"]] == ["shapes", "manifest.jsonl"]


# ---------------------------------------------------------------------------------------------- token cache


def test_token_cache_reuses_and_invalidates(tmp_path):
    codec = debug_image_codec(image_size=SIZE)
    image, _ = draw(7)
    sample = decode_sample({"__key__": "k1", "png": png(image), "txt": "c"}, SIZE)
    item, digest = sample["image"], sample["digests"]["image"]
    direct = codec.encode([item])
    calls = []
    encode = codec.encode
    codec.encode = lambda images: calls.append(len(images)) or encode(images)

    cache = TokenCache(tmp_path, codec)
    first = cache.get(item, digest)
    assert calls == [1] and first.batch_size == 1
    for a, b in zip(first.indices, direct.indices, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.residual, direct.residual)
    second = cache.get(item, digest)
    later_run = TokenCache(tmp_path, codec).get(item, digest)
    assert calls == [1] and cache.hits == 1
    for t in (second, later_run):
        assert t.grids == first.grids and torch.equal(t.residual, first.residual)
        assert all(torch.equal(a, b) for a, b in zip(t.indices, first.indices, strict=True))
    assert not list(tmp_path.rglob("*.tmp"))

    # the key is the raw bytes + decode settings: the same bytes under another sample key are a hit,
    # other bytes or another resize mode are recomputed, never stale
    again = decode_sample({"__key__": "another-key", "png": png(image), "txt": "c"}, SIZE)["digests"]["image"]
    assert again == digest
    other = decode_sample({"__key__": "k1", "png": png(draw(8)[0]), "txt": "c"}, SIZE)
    stretched = decode_sample({"__key__": "k1", "png": png(image), "txt": "c"}, SIZE, resize="stretch")
    assert len({digest, other["digests"]["image"], stretched["digests"]["image"]}) == 3
    cache.get(other["image"], other["digests"]["image"])
    assert calls == [1, 1]
    cache.get(item, digest)
    assert calls == [1, 1]

    # an entry whose metadata does not match (here: a corrupt file) is recomputed and rewritten
    cache.path(digest).write_bytes(b"not safetensors")
    assert torch.equal(cache.get(item, digest).residual, first.residual) and calls == [1, 1, 1]

    with torch.no_grad():
        codec.codebook.add_(0.5)  # another codec: another fingerprint
    changed = TokenCache(tmp_path, codec)
    assert changed.fingerprint != cache.fingerprint
    changed.get(item, digest)
    assert calls == [1, 1, 1, 1]


def test_loader_attaches_cached_tokens(data, tmp_path):
    codec = debug_image_codec(image_size=SIZE)
    cache = TokenCache(tmp_path, codec)
    loader = GlobalBatchLoader(TarShardSource(data["tar"]), 8, 4, seed=0, image_size=SIZE, cache=cache)
    batches = loader.micro_batches(0)
    samples = [s for _, b in batches for s in b]
    # the shards repeat some images byte for byte: those are one entry (keyed by the bytes)
    distinct = len({s["digests"]["image"] for s in samples})
    assert cache.misses == distinct and cache.hits == len(samples) - distinct
    assert all(s["tokens"].batch_size == 1 and s["tokens"].grids == codec.grids for s in samples)
    assert all(s["modality"] == "image" for s in samples)
    hits = cache.hits
    again = GlobalBatchLoader(TarShardSource(data["tar"]), 8, 4, seed=0, image_size=SIZE, cache={"image": cache})
    again.micro_batches(0)
    assert cache.hits == hits + len(samples) and cache.misses == distinct
    with pytest.raises(ValueError, match="image_size"):
        GlobalBatchLoader(TarShardSource(data["tar"]), 8, 4, seed=0, image_size=32, cache=cache)


def test_describe(data):
    d = GlobalBatchLoader(TarShardSource(data["tar"]), 16, 4, seed=0, image_size=SIZE).describe()
    assert d["samples"] == 24 and d["samples_per_epoch"] == 16 and d["left_out_per_epoch"] == 8
    assert d["micro_batches_per_step"] == 4 and d["epochs_per_step"] == 1.0
    json.dumps(d)
    assert Path(data["jsonl"]).exists()
