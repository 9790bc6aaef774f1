"""Items made of segments, through the public API only: a 1-D toy codec ("audio", 3 segments of a
1-2-4 ladder) next to the image codec, in one tiny model."""

import pytest
import torch

from modalities import debug_latent_codec
from unified import Example, ItemPattern
from unified.debug import debug_model, fit

SEGMENTS = 3


@pytest.fixture(scope="module")
def model():
    return debug_model(["image", "audio"], seed=0)


def clips(model, n: int, seed: int = 0):
    """n toy clips of SEGMENTS segments (one HybridTokens each, a row per segment)."""
    codec = model.codecs["audio"]
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, SEGMENTS, codec.latent_dim, *codec.grids[-1], generator=g)
    return [codec.encode(x) for x in latents]


def test_pattern_layout():
    grids = ((1,), (2,), (4,))
    written = ItemPattern(grids, segments=3, written=True)
    # each segment: its scales (1, 2, 4), then its complete latent (4) if a later segment reads it
    assert [(g.segment, g.scale, g.size) for g in written.groups] == [
        (0, 0, 1), (0, 1, 2), (0, 2, 4), (0, 3, 4),
        (1, 0, 1), (1, 1, 2), (1, 2, 4), (1, 3, 4),
        (2, 0, 1), (2, 1, 2), (2, 2, 4)]
    assert [g.block for g in written.groups] == list(range(11)) and written.length == 29
    read_after = ItemPattern(grids, segments=3, written=True, read=True)
    assert read_after.groups[-1].complete and read_after.length == 33
    only_read = ItemPattern(grids, segments=3, written=False, read=True)
    assert [(g.segment, g.complete) for g in only_read.groups] == [(0, True), (1, True), (2, True)]
    # t = segment; 1-D grids stretch over the final grid on w, h = 0
    pos = written.positions(10.0)
    assert pos[:, 0].tolist() == [10.0] * 11 + [11.0] * 11 + [12.0] * 7
    assert pos[1:3, 2].tolist() == [10.0, 12.0] and pos[:, 1].eq(10.0).all()
    assert written.extent == 4 and ItemPattern(grids, segments=7).extent == 7
    image = ItemPattern(((1, 1), (2, 2), (4, 4)), segments=1, written=True)
    assert [g.size for g in image.groups] == [1, 4, 16]  # an image is one segment: no complete group


def test_later_segments_do_not_change_earlier_ones_and_scales_are_block_causal(model):
    """Changing segment 3 leaves every hidden state of segments 1-2 (and the text before) bit-identical;
    inside a segment a scale sees only the scales <= its own."""
    (a,) = clips(model, 1)
    V = model.codecs["audio"].codebook_size
    changed = a.clone()
    for idx in changed.indices:
        idx[2] = (idx[2] + 1) % V  # every code of segment 3
    batch = model.builder.build([model.row("t2i", t, "a rising tone", modality="audio") for t in (a, changed)])
    hidden = model.backbone(model.embed(batch), batch.positions, batch.attention_mask())
    item = batch.items[0]
    seg2 = item.start + item.pattern.segment_start(2)
    assert torch.equal(hidden[0, :seg2], hidden[1, :seg2])
    assert not torch.allclose(hidden[0, seg2:item.start + item.length], hidden[1, seg2:item.start + item.length])
    # perturb scale 1 of segment 1: scale 0 of that segment and everything before are untouched
    x = model.embed(batch)
    g1 = item.pattern.group(1, 1)
    x2 = x.clone()
    x2[0, item.start + g1.start : item.start + g1.start + g1.size] += 1.0
    h2 = model.backbone(x2, batch.positions, batch.attention_mask())
    before = item.start + g1.start
    assert torch.equal(h2[0, :before], hidden[0, :before])
    assert not torch.allclose(h2[0, before : before + g1.size], hidden[0, before : before + g1.size])


@pytest.mark.parametrize("given", [0, 1])
def test_multi_segment_generation_cached_equals_uncached(model, given):
    prompts = ["a rising tone", "a falling tone"]
    kw = dict(modality="audio", segments=SEGMENTS, cfg=2.0, top_k=8, seed=3, return_tokens=True)
    if given:
        kw["given"] = [c.select(slice(0, given)) for c in clips(model, 2)]
    out_c, tok_c = model.generate(prompts, use_cache=True, **kw)
    out_u, tok_u = model.generate(prompts, use_cache=False, **kw)
    assert out_c.shape == (2, SEGMENTS, 8, 4)
    for a, b in zip(tok_c, tok_u, strict=True):
        assert a.batch_size == SEGMENTS and all(torch.equal(x, y) for x, y in zip(a.indices, b.indices, strict=True))
    torch.testing.assert_close(out_c, out_u, rtol=0, atol=1e-4)
    if given:  # the given segment comes back as it was given
        for t, g in zip(tok_c, kw["given"], strict=True):
            assert all(torch.equal(x[:given], y) for x, y in zip(t.indices, g.indices, strict=True))


def test_text_after_a_generated_item_cached_equals_uncached(model):
    for modality, segments in (("image", 1), ("audio", SEGMENTS)):
        kw = dict(modality=modality, segments=segments, cfg=1.5, top_k=8, seed=1, then_text=5)
        out_c, text_c = model.generate(["a red circle"], use_cache=True, **kw)
        out_u, text_u = model.generate(["a red circle"], use_cache=False, **kw)
        assert text_c == text_u and len(text_c) == 1
        torch.testing.assert_close(out_c, out_u, rtol=0, atol=1e-4)


def test_describe_a_multi_segment_item(model):
    items = clips(model, 2)
    kw = dict(modality="audio", max_new_tokens=4, temperature=1.0, top_k=20, seed=2)
    assert model.describe(items, use_cache=True, **kw) == model.describe(items, use_cache=False, **kw)
    answers = model.describe(items, question="what colour is it", **kw)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_learns_a_segment_to_segment_pattern():
    """Segment s+1 is segment s rolled by one cell: trained through examples, training batches and
    forward only (with image examples in the same batches), the model continues the first segment of
    each clip with the right codes at >= 0.9 token accuracy."""
    audio = debug_latent_codec(grids=((1,), (2,), (4,)), dim=8, vocab_size=32, seed=0, name="audio")
    model = debug_model({"image": debug_model().codecs["image"], "audio": audio}, seed=0,
                        caption_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    first = torch.randn(8, audio.latent_dim, 4, generator=g)  # 8 distinct first segments
    clip_latents = torch.stack([first.roll(s, dims=-1) for s in range(SEGMENTS)], dim=1)  # [8, 3, C, 4]
    clip_tokens = [audio.encode(x) for x in clip_latents]
    images = model.codecs["image"].encode(torch.rand(4, 3, 16, 16, generator=g) * 2 - 1).rows()
    examples = [Example("continuation", t, None, modality="audio") for t in clip_tokens]
    examples += [Example("t2i", t, "a red circle") for t in images[:2]]
    examples.append(Example("caption", images[2], "a blue square"))
    fit(model, examples, 300, lr=3e-3, generator=g)
    given = [t.select(slice(0, 1)) for t in clip_tokens]
    _, written = model.generate(None, modality="audio", segments=SEGMENTS, given=given, cfg=0.0, top_k=1, seed=0,
                                return_tokens=True)
    hits = total = 0
    for got, truth in zip(written, clip_tokens, strict=True):
        for a, b in zip(got.indices, truth.indices, strict=True):
            hits += int((a[1:] == b[1:]).sum())
            total += b[1:].numel()
    print(f"continuation token accuracy {hits / total:.3f}")
    assert hits / total >= 0.9, f"continuation token accuracy {hits / total:.3f}"


def test_configs_and_specials(tmp_path):
    """Sampling defaults are per modality (older config.json files with model-level ones are migrated);
    a text tokenizer without a head's specials is refused with a clear message."""
    from modalities import TextTokenizer
    from unified import HeadConfig, UnifiedConfig, UnifiedModel

    legacy = UnifiedConfig.from_dict({"backbone": {}, "heads": [{"modality": "image"}, {"modality": "audio"}],
                                      "default_cfg": 1.0, "default_top_k": 1})
    assert [(h.default_cfg, h.default_top_k) for h in legacy.heads] == [(1.0, 1), (1.0, 1)]
    assert (legacy.head("audio").begin, legacy.head("audio").end) == ("<boa>", "<eoa>")
    assert "default_cfg" not in legacy.to_dict()
    with pytest.raises(ValueError, match="no 'video' head"):
        legacy.head("video")
    model = debug_model(["image", "audio"])
    text = TextTokenizer.train(["a red circle"] * 8, vocab_size=300)  # image specials only
    with pytest.raises(ValueError, match=r"lacks the specials \['<boa>', '<eoa>'\]"):
        UnifiedModel.build(text, model.codecs, {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
                                                "num_hidden_layers": 1, "num_attention_heads": 2,
                                                "num_key_value_heads": 1, "vocab_size": 400},
                           heads=[HeadConfig("image"), HeadConfig("audio")])
    model.save_pretrained(tmp_path / "m")  # the latent codec round-trips with the model
    again = UnifiedModel.from_pretrained(tmp_path / "m")
    kw = dict(modality="audio", segments=2, seed=0, top_k=4)
    torch.testing.assert_close(again.generate(["a rising tone"], **kw), model.generate(["a rising tone"], **kw))


def test_adopt_weights_grows_a_modality(tmp_path):
    """A video model starts from an image model: the backbone, the shared text rows, and its video head
    from the image head (same codec); a different text tokenizer is refused."""
    from modalities import TextTokenizer, VideoCodec
    from unified import HeadConfig, UnifiedModel

    source = debug_model(["image"])
    source.save_pretrained(tmp_path / "image_model")
    text = TextTokenizer.from_pretrained(tmp_path / "image_model" / "text_tokenizer")
    text.add_specials(["<bov>", "<eov>"])
    image = source.codecs["image"]
    backbone = {**source.config.backbone, "vocab_size": text.vocab_size}
    grown = UnifiedModel.build(text, {"video": VideoCodec(image)}, backbone,
                               heads=[HeadConfig("video", diff_width=64, diff_depth=2)])
    assert grown.adopt_weights(tmp_path / "image_model", {"video": "image"}) == []
    theirs, ours = source.state_dict(), grown.state_dict()
    for name, w in theirs.items():
        mine = ours[name.replace("heads.image.", "heads.video.")]
        torch.testing.assert_close(mine[: w.shape[0]], w, rtol=0, atol=0)
    table = "backbone.lm.model.embed_tokens.weight"
    assert ours[table].shape[0] == theirs[table].shape[0] + 2  # the two video specials, fresh
    other = debug_model(["image"], texts=["completely different words here"] * 50, vocab_size=400)
    with pytest.raises(ValueError, match="text tokenizer is not this model's"):
        other.adopt_weights(tmp_path / "image_model")
