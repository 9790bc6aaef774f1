"""Recipes by modality: codecs named in the recipe, data decoders registered by field, token-cache keys
from the raw bytes, evaluation suites in a registry, `generate --modality`. A second modality is a toy
1-D latent codec ("depth", 3 segments an item) next to the image codec."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import modalities
from recipes.codecs import codec_folder, codec_specs
from recipes.config import TrainConfig, load_config
from recipes.data import BadSample, TokenCache, decode_sample
from recipes.data.decode import DECODERS, decode_array, register_decoder, sample_modality
from recipes.tasks import UnifiedTask

from .conftest import shape_png

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
BACKBONE = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=512)
needs_latent = pytest.mark.skipif(not hasattr(modalities, "debug_latent_codec"),
                                  reason="modalities.debug_latent_codec is not there yet")


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def depth_latent(n: int, segments: int = 3) -> np.ndarray:
    """A toy [segments, C=8, 4] latent: segment s+1 is segment s shifted."""
    base = np.random.default_rng(n).standard_normal((8, 4)).astype(np.float32)
    return np.stack([np.roll(base, s, axis=1) for s in range(segments)])


def raw_samples() -> list[dict]:
    """Shape images and depth latents, each with a caption; one sample holds both."""
    out = []
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "circle")]):
        out.append({"__key__": f"img{i}", "png": shape_png(colour, shape), "txt": f"a {colour} {shape}".encode()})
    for i in range(3):
        out.append({"__key__": f"dep{i}", "depth.npy": npy(depth_latent(i)), "txt": f"a depth map of {i}".encode(),
                    "json": json.dumps({"question": "how loud", "answer": "soft"}).encode()})
    out.append({"__key__": "both", "png": shape_png("red", "square"), "depth.npy": npy(depth_latent(9)),
                "txt": b"a red square"})
    return out


# -------------------------------------------------------------------------------------- codecs in the recipe


def test_legacy_codec_and_head_mean_an_image_codec():
    shipped = load_config(CONFIGS / "shapes_unified.yaml")
    [spec] = codec_specs(shipped.model)
    assert (spec.modality, spec.codec) == ("image", "tokenizer/final")
    # the model-level default_cfg is the image head's default, as before
    assert spec.head == {"diff_width": 128, "diff_depth": 2, "codebook_logits": True, "default_cfg": 1.0}
    [debug] = codec_specs(load_config(CONFIGS / "unified_debug.yaml").model)
    assert (debug.modality, debug.codec, debug.head) == ("image", "debug", {"diff_width": 64, "diff_depth": 2})
    named = codec_specs({"codecs": {"image": {"codec": "debug", "head": {"diff_width": 64, "diff_depth": 2}}}})
    assert named == [debug]


def test_named_codecs_and_their_errors():
    specs = codec_specs({"default_top_k": 5, "codecs": {"image": "debug",
                                                        "depth": {"codec": "debug", "head": {"default_top_k": 2}}}})
    assert [(s.modality, s.codec, s.head) for s in specs] == [("image", "debug", {"default_top_k": 5}),
                                                              ("depth", "debug", {"default_top_k": 2})]
    with pytest.raises(ValueError, match="replaces model.codec"):
        codec_specs({"codec": "debug", "codecs": {"image": "debug"}})
    with pytest.raises(ValueError, match="unknown keys"):
        codec_specs({"codecs": {"depth": {"codec": "debug", "heads": {}}}})
    with pytest.raises(ValueError, match="codec spec"):
        codec_specs({"codecs": {"depth": {"head": {}}}})


def test_an_old_run_keeps_its_artifacts_codec_folder(tmp_path):
    assert codec_folder(tmp_path, "image") == tmp_path / "codecs" / "image"
    modalities.debug_image_codec().save_pretrained(tmp_path / "codec")  # a run from before named codecs
    assert codec_folder(tmp_path, "image") == tmp_path / "codec"
    assert codec_folder(tmp_path, "depth") == tmp_path / "codecs" / "depth"


# -------------------------------------------------------------------------------------- data decoders


def test_decoders_by_field_put_each_item_under_its_modality():
    raw = raw_samples()
    image_only = decode_sample(raw[0], 16)
    assert isinstance(image_only["image"], Image.Image) and set(image_only["digests"]) == {"image"}
    # NAME.npy decodes for a modality the caller asks for: a float tensor, segments first
    both = decode_sample(raw[-1], 16, modalities=("depth", "image"))
    assert both["depth"].shape == (3, 8, 4) and both["depth"].dtype == torch.float32
    assert sample_modality(both, ("depth", "image")) == "depth" and sample_modality(both, ("image", "depth")) == "image"
    assert "depth" not in decode_sample(raw[-1], 16)  # not asked for: not decoded
    with pytest.raises(BadSample, match="missing image"):
        decode_sample(raw[3], 16)
    with pytest.raises(BadSample, match="missing image or depth"):
        decode_sample({"__key__": "k", "txt": b"c"}, 16, modalities=("image", "depth"))
    with pytest.raises(BadSample, match="undecodable array"):
        decode_sample({"__key__": "k", "depth.npy": b"nope", "txt": b"c"}, 16, modalities=("depth",))
    with pytest.raises(BadSample, match="expected floats"):
        decode_sample({"__key__": "k", "depth.npy": npy(np.arange(6).reshape(2, 3)), "txt": b"c"}, 16,
                      modalities=("depth",))


def test_a_new_decoder_is_one_registration():
    def decode_wave(key, data, field, settings):
        return torch.from_numpy(np.frombuffer(bytes(data), dtype=np.float32).copy()).view(-1, 1, 4)

    register_decoder("wave", ("wav32",), describe=lambda settings: "float32")(decode_wave)
    try:
        data = np.arange(8, dtype=np.float32).tobytes()
        sample = decode_sample({"__key__": "k", "wav32": data, "txt": b"c"}, 16, modalities=("wave",))
        assert sample["wave"].shape == (2, 1, 4)
        with pytest.raises(ValueError, match="already has a decoder"):
            register_decoder("other", ("wav32",))(decode_array)
    finally:
        DECODERS.pop("wav32")


@needs_latent
def test_token_cache_of_a_multi_segment_modality(tmp_path):
    codec = modalities.debug_latent_codec(grids=((1,), (2,), (4,)), dim=8)
    raws = raw_samples()
    samples = [decode_sample(r, 16, modalities=("depth",)) for r in raws[3:]]
    items, digests = [s["depth"] for s in samples], [s["digests"]["depth"] for s in samples]
    direct = [codec.encode(x) for x in items]
    cache = TokenCache(tmp_path, codec)
    for _ in range(2):
        got = cache.get_many(items, digests)
        for g, d in zip(got, direct, strict=True):
            assert g.batch_size == 3  # one row per segment
            assert all(torch.equal(a, b) for a, b in zip(g.indices, d.indices, strict=True))
            torch.testing.assert_close(g.residual, d.residual)
    assert (cache.misses, cache.hits) == (4, 4) and len(list(tmp_path.rglob("*.safetensors"))) == 4
    # batched encoding of several items == one item at a time (segments split back)
    for g, d in zip(codec.encode_items(items), direct, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(g.indices, d.indices, strict=True))


# -------------------------------------------------------------------------------------- a two-modality task


@needs_latent
def test_a_recipe_with_an_image_and_a_depth_codec(tmp_path):
    cfg = TrainConfig(task_weights={"t2i": 1.0, "caption": 1.0, "qa": 1.0}, image_size=16, model={
        "codecs": {"image": "debug", "depth": {"codec": "debug", "head": {"diff_width": 16, "diff_depth": 1}}},
        "backbone": BACKBONE, "text_vocab_size": 300, "max_length": 256})
    task = UnifiedTask(cfg, tmp_path)
    assert task.modalities == ("image", "depth")
    raws = raw_samples()
    task.prepare(lambda: [decode_sample(r, 16, modalities=task.modalities) for r in raws])
    assert sorted(p.name for p in (tmp_path / "codecs").iterdir()) == ["depth", "image"]
    torch.manual_seed(0)
    model = task.build()
    assert {"<bo:depth>", "<eo:depth>", "<boi>", "<eoi>"} <= set(model.text.specials)
    assert model.config.head("depth").diff_width == 16 and model.config.head("image").diff_width == 256
    assert set(task.rebuild().codecs) == {"image", "depth"}

    samples = [decode_sample(r, 16, modalities=task.modalities) for r in raws]
    g = torch.Generator().manual_seed(0)
    examples = task.examples(model, samples, g)
    assert [e.modality for e in examples] == ["image"] * 3 + ["depth"] * 3 + ["image"]
    assert [e.tokens.batch_size for e in examples] == [1] * 3 + [3] * 3 + [1]
    loss, metrics, tokens = task.loss(model, samples, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and tokens > 0
    # pre-tokenised samples (the token cache's) give the same examples and draws
    cached = [{**s, "tokens": e.tokens, "modality": e.modality} for s, e in zip(samples, examples, strict=True)]
    again = task.examples(model, cached, torch.Generator().manual_seed(0))
    assert [(e.task, e.modality, e.text) for e in again] == [(e.task, e.modality, e.text) for e in examples]
    # sample grids are images: a model with an image codec writes them
    task.samples(model, ["a red circle"], tmp_path / "grid.png", write=True)
    assert Image.open(tmp_path / "grid.png").size == (16, 16)


# -------------------------------------------------------------------------------------- eval suites and the CLI


@pytest.fixture(scope="module")
def depth_model_dir(tmp_path_factory):
    if not hasattr(modalities, "debug_latent_codec"):
        pytest.skip("modalities.debug_latent_codec is not there yet")
    from unified import HeadConfig, UnifiedModel

    text = modalities.TextTokenizer.train(["a hum", "a buzz", "a click"] * 4, vocab_size=300,
                                          specials=modalities.specials_for(["depth"]))
    torch.manual_seed(0)
    model = UnifiedModel.build(text, {"depth": modalities.debug_latent_codec(name="depth")},
                               {**BACKBONE, "vocab_size": text.vocab_size},
                               heads=[HeadConfig(modality="depth", diff_width=16, diff_depth=1)], max_length=256)
    folder = tmp_path_factory.mktemp("depth") / "model"
    model.save_pretrained(folder)
    return folder


def test_eval_suites_registry(depth_model_dir, capsys):
    from recipes.eval.evaluate import EVAL_SUITES, applicable_suites, choose_suites, evaluate, register_suite
    from recipes.eval.evaluate import table as eval_table
    from unified import UnifiedModel

    assert list(EVAL_SUITES)[:3] == ["shapes", "digits", "speed"]
    model = UnifiedModel.from_pretrained(depth_model_dir)
    assert applicable_suites(model) == []  # the image suites need images, moving_shapes needs video
    assert EVAL_SUITES["moving_shapes"].modalities == ("video",)
    with pytest.raises(ValueError, match="needs a model with image"):
        choose_suites(model, ["digits"])
    with pytest.raises(ValueError, match="unknown evaluation suite"):
        choose_suites(model, ["nope"])

    def hums(model, ctx):
        out = model.generate(["a hum"] * ctx.n, modality="depth", segments=3, seed=ctx.seed)
        return {"hums": {"shape": list(out.shape)}}

    register_suite("test_hums", modalities=("depth",),
                   table=lambda r, which: [("hum tensor", str(r["hums"]["shape"]))])(hums)
    try:
        assert "test_hums" in applicable_suites(model)
        results = evaluate(model, n=2, progress=False, suites=["test_hums"])
        assert results["hums"]["shape"] == [2, 3, 8, 4]
        assert results["settings"]["suites"] == ["test_hums"] and "image_size" not in results["settings"]
        assert "hum tensor" in eval_table(results)
    finally:
        EVAL_SUITES.pop("test_hums")


def test_generate_a_modality_without_a_writer_is_one_error_line(depth_model_dir, tmp_path, capsys):
    from recipes.cli import main

    assert main(["generate", "--model", str(depth_model_dir), "--modality", "depth", "--segments", "3",
                 "--prompt", "a hum", "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no writer for 'depth'"), err
    (tmp_path / "x.png").write_bytes(shape_png("red", "circle"))
    assert main(["caption", "--model", str(depth_model_dir), str(tmp_path / "x.png")]) == 2
    assert "no image codec" in capsys.readouterr().err
    assert main(["eval", "--model", str(depth_model_dir), "--suite", "shapes", "--quiet"]) == 2
    assert "needs a model with image" in capsys.readouterr().err
