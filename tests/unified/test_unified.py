"""The unified model: one backbone, text-to-image and captioning, on tiny configs."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from hart_core.quantizer import HybridTokens
from modalities import TextTokenizer, debug_image_codec
from unified import Example, HeadConfig, UnifiedConfig, UnifiedModel
from unified.heads import ConvReader
from unified.sequence import Item, Text

SHAPES = {
    "a red circle": ((220, 40, 40), "circle"),
    "a blue square": ((40, 60, 220), "square"),
    "a green triangle": ((40, 200, 60), "triangle"),
    "a yellow bar": ((230, 210, 40), "bar"),
}


def draw(colour, shape, size=16) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse((3, 3, 12, 12), fill=colour)
    elif shape == "square":
        d.rectangle((3, 3, 12, 12), fill=colour)
    elif shape == "triangle":
        d.polygon([(8, 2), (14, 13), (2, 13)], fill=colour)
    else:
        d.rectangle((2, 6, 13, 9), fill=colour)
    return img


def backbone_config(kind: str, vocab: int) -> dict:
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return {"model_type": kind, **common}


def tiny_model(kind: str = "qwen2", seed: int = 0) -> UnifiedModel:
    text = TextTokenizer.train(list(SHAPES) * 4 + ["what shape is it", "what colour is it"], vocab_size=320)
    torch.manual_seed(seed)
    return UnifiedModel.build(text, {"image": debug_image_codec(seed)}, backbone_config(kind, text.vocab_size),
                              heads=[HeadConfig(diff_width=64, diff_depth=2)], max_length=256)


@pytest.fixture(params=["qwen2", "llama"])
def model(request):
    return tiny_model(request.param).eval()


def images_and_tokens(model):
    images = [draw(*spec) for spec in SHAPES.values()]
    return images, model.codecs["image"].encode(images)


def separate_shapes_in_codebook(model, images):
    """A random tokenizer maps all four shapes to the same coarse codes; make code i the mean latent
    of image i (a crude stand-in for a trained codebook) so that even scale 0 tells them apart."""
    codec = model.codecs["image"]
    with torch.no_grad():
        latents = codec.tokenizer.encode_latent(codec.preprocess(images))
        codec.codebook[: len(images)] = latents.mean(dim=(2, 3))


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_text_path_of_the_backbone_is_the_plain_llm(kind):
    """Multi-axis RoPE with text at (p, p, p) equals the LM's own 1-D RoPE: a pretrained LLM reads text
    exactly as before."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tiny_model(kind).eval()
    cfg = dict(model.config.backbone)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()
    plain.load_state_dict(model.backbone.lm.state_dict())
    ids = torch.tensor([model.text.encode("a red circle and a blue square")])
    rows = [[Text(ids[0].tolist())]]
    batch = model.builder.build(rows)
    with torch.no_grad():
        ours = model.backbone(model.embed(batch), batch.positions, batch.attention_mask())
        ref = plain.get_decoder()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_block_causal_mask(model):
    """Perturbing scale k's inputs changes no logit of an earlier scale and changes later ones."""
    _, tokens = images_and_tokens(model)
    rows = [model.row("t2i", t, "a red circle") for t in tokens.rows()[:2]]
    batch = model.builder.build(rows)
    head, n = model.heads["image"], model.codecs["image"].tokens_per_scale

    def logits(hs):
        return head.logits(hs, model.codecs["image"].codebook)

    with torch.no_grad():
        x = model.embed(batch)
        base = model.backbone(x, batch.positions, batch.attention_mask())
        item = batch.items[0]
        starts = np.cumsum([0, *n])
        for k in range(1, len(n)):
            x2 = x.clone()
            x2[item.row, item.start + starts[k] : item.start + starts[k + 1]] += 0.5
            h = model.backbone(x2, batch.positions, batch.attention_mask())
            lo, hi = item.start, item.start + starts[k]
            torch.testing.assert_close(logits(h[item.row, lo:hi]), logits(base[item.row, lo:hi]),
                                       rtol=0, atol=1e-6)
            later = slice(item.start + starts[k], item.start + starts[-1])
            assert (logits(h[item.row, later]) - logits(base[item.row, later])).abs().max() > 1e-4
            torch.testing.assert_close(h[1 - item.row], base[1 - item.row], rtol=0, atol=0)  # other row untouched


@pytest.mark.parametrize("use_residual", [False, True])
def test_kv_cached_image_generation_equals_uncached(model, use_residual):
    prompts = ["a red circle", "a green triangle"]
    kw = dict(cfg=2.0, top_k=20, seed=3, use_residual=use_residual, return_tokens=True)
    img_c, tok_c = model.generate_image(prompts, use_cache=True, **kw)
    img_u, tok_u = model.generate_image(prompts, use_cache=False, **kw)
    for a, b in zip(tok_c, tok_u, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(img_c, img_u, rtol=0, atol=1e-4)


def test_kv_cached_text_generation_equals_uncached(model):
    images, _ = images_and_tokens(model)
    kw = dict(max_new_tokens=6, temperature=1.0, top_k=50, seed=5)
    assert model.caption(images, use_cache=True, **kw) == model.caption(images, use_cache=False, **kw)
    q = ["what shape is it", "what colour is it", "what shape is it", "what colour is it"]
    assert model.answer(images, q, use_cache=True, **kw) == model.answer(images, q, use_cache=False, **kw)


def test_static_kv_cache_generates_what_the_growing_one_does(model):
    """A cache allocated once for prompt + reserve (masked beyond what is written) changes no draw."""
    images, _ = images_and_tokens(model)
    prompts = ["a red circle", "a green triangle"]
    kw = dict(cfg=2.0, top_k=20, seed=3, return_tokens=True)
    text_kw = dict(max_new_tokens=6, temperature=1.0, top_k=50, seed=5)
    img_d, tok_d = model.generate_image(prompts, **kw)
    captions = model.caption(images, **text_kw)
    model.cache_implementation = "static"
    try:
        img_s, tok_s = model.generate_image(prompts, **kw)
        assert model.caption(images, **text_kw) == captions
    finally:
        model.cache_implementation = "dynamic"
    for a, b in zip(tok_d, tok_s, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(img_s, img_d, rtol=0, atol=1e-4)


def test_generation_is_seeded(model):
    a = model.generate_image(["a blue square"], cfg=1.0, top_k=30, seed=0)
    assert torch.equal(a, model.generate_image(["a blue square"], cfg=1.0, top_k=30, seed=0))
    assert not torch.equal(a, model.generate_image(["a blue square"], cfg=1.0, top_k=30, seed=1))
    previews = []
    b = model.generate_image(["a blue square"], cfg=1.0, top_k=30, seed=0,
                             callback=lambda k, n, img: previews.append((k, n, img)))
    assert [p[0] for p in previews] == list(range(4)) and previews[-1][1] == 4
    torch.testing.assert_close(previews[-1][2], b)
    # without a cfg the image head's own default_cfg is used
    model.config.head("image").default_cfg = 1000.0  # far from 1.0, so the samples must differ
    c = model.generate_image(["a blue square"], top_k=30, seed=0)
    assert torch.equal(c, model.generate_image(["a blue square"], cfg=1000.0, top_k=30, seed=0))
    assert not torch.equal(c, a)
    # without a top_k the model's own default_top_k is used: greedy codes make the seed irrelevant
    plain = {"cfg": 1.0, "use_residual": False}
    assert not torch.equal(model.generate_image(["a blue square"], seed=0, **plain),
                           model.generate_image(["a blue square"], seed=1, **plain))
    model.config.head("image").default_top_k = 1
    d = model.generate_image(["a blue square"], seed=0, **plain)
    assert torch.equal(d, model.generate_image(["a blue square"], seed=1, **plain))
    assert torch.equal(d, model.generate_image(["a blue square"], top_k=1, seed=5, **plain))


def test_generation_continues_a_given_prefix(model):
    """Codes given for the first scales are kept and continued from: with every scale given and no residual
    the image is the codec's discrete decode of those codes; with some given, those come back unchanged
    and a different prefix changes what the model writes after it."""
    images, tokens = images_and_tokens(model)
    codec, prompts, K = model.codecs["image"], list(SHAPES)[:2], model.codecs["image"].num_scales
    truth = [t[:2] for t in tokens.indices]
    full = model.generate_image(prompts, cfg=1.0, top_k=30, prefix=truth, use_residual=False)
    expected = codec.decode_latent(codec.fhat(HybridTokens([t[:2] for t in tokens.indices], None, tokens.grids),
                                              with_residual=False))
    torch.testing.assert_close(full, expected)
    _, drawn = model.generate_image(prompts, cfg=1.0, top_k=1, prefix=truth[:2], return_tokens=True)
    assert all(torch.equal(a, b) for a, b in zip(drawn[:2], truth[:2], strict=True))
    g = torch.Generator().manual_seed(0)
    scrambled = [torch.randint(0, codec.codebook_size, t.shape, generator=g) for t in truth[:2]]
    _, other = model.generate_image(prompts, cfg=1.0, top_k=1, prefix=scrambled, return_tokens=True)
    assert any(not torch.equal(a, b) for a, b in zip(drawn[2:], other[2:], strict=True)) and len(drawn) == K
    with pytest.raises(ValueError, match="prefix"):
        model.generate_image(prompts, prefix=[truth[0][:1]])
    with pytest.raises(ValueError, match="prefix"):
        model.generate_image(prompts, prefix=truth + truth)


def test_learns_both_directions_and_round_trips(tmp_path):
    """A few hundred steps on four shape/caption pairs: the model captions the images, answers a
    question about them, and writes images whose codes at every scale are the training images' codes
    for their captions, from one checkpoint that survives save -> load unchanged."""
    model = tiny_model("qwen2")
    images, _ = images_and_tokens(model)
    separate_shapes_in_codebook(model, images)
    images, tokens = images_and_tokens(model)
    assert len({t[0] for t in tokens.indices[0].tolist()}) == 4
    rows = tokens.rows()
    captions = list(SHAPES)
    examples = [Example("t2i", r, c) for r, c in zip(rows, captions, strict=True)]
    examples += [Example("caption", r, c) for r, c in zip(rows, captions, strict=True)]
    examples += [Example("qa", r, SHAPES[c][1], "what shape is it") for r, c in zip(rows, captions, strict=True)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    steps = 400
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 5e-3 * (1 - step / steps)
        out = model(model.training_batch(examples, g), g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    assert out["text_acc"] == 1.0 and out["image_acc_scale0"] == 1.0

    model.save_pretrained(tmp_path / "model")
    loaded = UnifiedModel.from_pretrained(tmp_path / "model")
    for m in (model, loaded):
        assert m.caption(images, max_new_tokens=8) == captions
        assert m.answer(images, ["what shape is it"] * 4) == [s for _, s in SHAPES.values()]
        _, gen_tokens = m.generate_image(captions, cfg=0.0, top_k=1, seed=0, return_tokens=True)
        for k in range(len(gen_tokens)):  # every scale, not only the coarse ones
            assert torch.equal(gen_tokens[k], tokens.indices[k]), f"scale {k}"
    # identical generations after the round trip
    a = model.generate_image(captions[:2], cfg=2.0, top_k=10, seed=7)
    b = loaded.generate_image(captions[:2], cfg=2.0, top_k=10, seed=7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_save_load_round_trip_untrained(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "hart_unified"
    assert loaded.caption([draw(*SHAPES["a red circle"])], max_new_tokens=4) == \
        model.caption([draw(*SHAPES["a red circle"])], max_new_tokens=4)


def test_bad_inputs(tmp_path, model):
    with pytest.raises(ValueError, match="mode 'L'"):
        model.caption([draw(*SHAPES["a red circle"]).convert("L")])
    with pytest.raises(ValueError, match="expects 16x16"):
        model.caption([draw(*SHAPES["a red circle"], size=20)])
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate_image([" "])
    with pytest.raises(ValueError, match="max_length"):
        model.generate_image(["a red circle " * 100])
    with pytest.raises(ValueError, match="2 items but 1 questions"):
        model.answer([draw(*SHAPES["a red circle"])] * 2, ["what shape is it"])
    with pytest.raises(ValueError, match="unknown task"):
        model.row("video", None)
    with pytest.raises(ValueError, match="no 'video' head"):
        model.row("t2i", None, "a red circle", modality="video")
    model.save_pretrained(tmp_path / "m")
    import shutil

    shutil.rmtree(tmp_path / "m" / "text_tokenizer")
    with pytest.raises(ValueError, match="missing text_tokenizer/"):
        UnifiedModel.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        UnifiedModel.from_pretrained(tmp_path / "nope")


def test_training_batches_split_by_task_give_the_same_loss_and_gradients(model):
    """t2i rows and caption / QA rows in separate batches: shorter padding, same loss, same gradients,
    the same random draws (caption dropout, diffusion noise) as one mixed batch."""
    _, tokens = images_and_tokens(model)
    rows, names = tokens.rows(), list(SHAPES)
    examples = [Example("t2i", rows[0], names[0]), Example("caption", rows[1], names[1]),
                Example("t2i", rows[2], names[2]), Example("qa", rows[3], "yes", "shape?"),
                Example("caption", rows[0], names[0])]

    def loss_and_grads(batches, g):
        model.zero_grad()
        loss = sum(model(b, g)["loss"] for b in batches)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    mixed = model.training_batch(examples, torch.Generator().manual_seed(3))
    split = model.training_batches(examples, torch.Generator().manual_seed(3))
    assert [len(b.text_ids) for b in split] == [2, 3]
    assert sum(b.text_ids.numel() for b in split) < mixed.text_ids.numel()  # fewer padded positions
    ref_loss, ref_grads = loss_and_grads([mixed], torch.Generator().manual_seed(4))
    loss, grads = loss_and_grads(split, torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    only_text = model.training_batches([e for e in examples if e.task != "t2i"])
    assert len(only_text) == 1 and len(only_text[0].text_ids) == 3


@pytest.mark.parametrize("weighting", ["token", "scale"])
def test_token_loss_weighting(weighting):
    """"token" averages the code CE over all codes of an item; "scale" averages each scale first."""
    model = tiny_model()
    model.config.token_loss_weighting = weighting
    model.config.caption_dropout = 0.0
    images, tokens = images_and_tokens(model)
    examples = [Example("t2i", t, name) for t, name in zip(tokens.rows(), SHAPES, strict=True)]
    batch = model.training_batch(examples, torch.Generator().manual_seed(0))
    losses = model(batch, torch.Generator().manual_seed(0))
    hidden = model.backbone(model.embed(batch), batch.positions, batch.attention_mask())
    n = model.codecs["image"].tokens_per_scale
    h = torch.stack([hidden[it.row, it.start : it.start + sum(n)] for it in batch.items])
    logits = model.heads["image"].logits(h, model.codecs["image"].codebook)
    ce = F.cross_entropy(logits.transpose(1, 2), torch.cat(tokens.indices, 1), reduction="none")
    expected = ce.mean() if weighting == "token" else torch.stack([c.mean() for c in ce.split(list(n), 1)]).mean()
    assert torch.allclose(losses["token_ce"], expected, atol=1e-6)
    if weighting == "scale":  # the two differ, or the option would do nothing
        assert not torch.allclose(expected, ce.mean(), atol=1e-4)
    with pytest.raises(ValueError, match="token_loss_weighting"):
        UnifiedConfig.from_dict({**model.config.to_dict(), "token_loss_weighting": "codes"})


def test_codebook_tied_logits(tmp_path):
    """With codebook_logits the head adds (W h) . e_k to its free logits: codes with the same latent
    get the same tied score, and the option survives save/load."""
    text = TextTokenizer.train(list(SHAPES) * 4, vocab_size=300)
    torch.manual_seed(0)
    model = UnifiedModel.build(text, {"image": debug_image_codec(0)}, backbone_config("qwen2", text.vocab_size),
                               heads=[HeadConfig(diff_width=64, diff_depth=2, codebook_logits=True)]).eval()
    head, book = model.heads["image"], model.codecs["image"].codebook
    h = torch.randn(3, 5, model.backbone.hidden_size)
    expected = head.head(h) + head.code_query(h) @ book.T
    torch.testing.assert_close(head.logits(h, book), expected)
    with torch.no_grad():
        head.head.weight.zero_()
        head.head.bias.zero_()
        twin = book.clone()
        twin[7] = twin[3]
        tied = head.logits(h, twin)
    torch.testing.assert_close(tied[..., 7], tied[..., 3])
    assert (tied[..., 7] - tied[..., 4]).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "m")
    again = UnifiedModel.from_pretrained(tmp_path / "m")
    assert again.heads["image"].code_query is not None
    torch.testing.assert_close(again.heads["image"].logits(h, book), head.logits(h, book))


def test_sequence_layout_positions_and_blocks(model):
    """Image cells sit on the final grid after the text; text after an item continues past it. An
    image the model writes has its scale groups; an image it only reads is its complete latent."""
    _, tokens = images_and_tokens(model)
    one = tokens.rows()[0]
    grids = model.codecs["image"].grids
    G = grids[-1][0]

    written = model.builder.build([model.row("t2i", one, "a red circle")])
    item, pos, block = written.items[0], written.positions[0], written.block[0]
    p0 = item.start  # <bos> caption <boi>
    assert [g.size for g in item.pattern.groups] == [1, 4, 9, 16]
    assert torch.equal(pos[item.start], torch.tensor([p0, p0, p0], dtype=torch.float))  # scale 0: one cell
    # scale 1 (2x2) is stretched to the 4x4 grid: rows/cols 0 and 2
    s1 = pos[item.start + 1 : item.start + 5]
    assert s1[:, 1].tolist() == [p0, p0, p0 + 2, p0 + 2] and s1[:, 2].tolist() == [p0, p0 + 2, p0, p0 + 2]
    assert len(set(block[item.start + 1 : item.start + 5].tolist())) == 1  # one block per scale group
    assert block[item.start + 5] == block[item.start + 4] + 1

    row = model.row("caption", one, "a red circle")
    read = model.builder.build([row])
    item, pos, block = read.items[0], read.positions[0], read.block[0]
    assert isinstance(row[1], Item) and row[1].read and not row[1].written
    assert item.start == 2 and [g.size for g in item.pattern.groups] == [G * G]  # <bos> <boi>, the latent alone
    assert pos[2 : 2 + G * G, 1].tolist() == [2 + r for r in range(G) for _ in range(G)]
    assert len(set(block[2 : 2 + G * G].tolist())) == 1
    after = item.start + item.length
    assert pos[after].tolist() == [2 + G] * 3  # <eoi>
    assert block[after] == block[after - 1] + 1
    # the latent group's inputs are the complete latent's, as in a written item followed by a reader
    both = model.builder.build([[model.row("t2i", one, "a red circle")[0], Item("image", one, loss=True, read=True)]])
    x_both, x_read = model.embed(both.to(model.device)), model.embed(read.to(model.device))
    last = both.items[0].start + both.items[0].length
    assert torch.allclose(x_both[0, last - G * G : last], x_read[0, 2 : 2 + G * G])


def test_build_from_a_local_pretrained_llm_and_hf_tokenizer(tmp_path):
    """A local LLM folder + its HF tokenizer: specials are appended, the embedding table grows, and
    the pretrained rows are kept."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from hart_core.debug import byte_level_tokenizer

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    llm = AutoModelForCausalLM.from_config(cfg)
    llm.save_pretrained(tmp_path / "llm")
    byte_level_tokenizer().save_pretrained(tmp_path / "llm")

    text = TextTokenizer.from_hf(tmp_path / "llm")
    assert text.vocab_size > 258  # <boi>, <eoi>, ... were added
    model = UnifiedModel.build(text, {"image": debug_image_codec(0)}, tmp_path / "llm",
                               heads=[HeadConfig(diff_width=64, diff_depth=2)], max_length=256).eval()
    table = model.backbone.embed_tokens.weight
    assert table.shape[0] == text.vocab_size
    torch.testing.assert_close(table[:258], llm.get_input_embeddings().weight, rtol=0, atol=0)
    images = [draw(*spec) for spec in SHAPES.values()]
    assert len(model.caption(images[:2], max_new_tokens=3)) == 2
    assert model.generate_image(["a red circle"], cfg=1.5, seed=0).shape == (1, 3, 16, 16)
    model.save_pretrained(tmp_path / "unified")
    again = UnifiedModel.from_pretrained(tmp_path / "unified")
    assert again.caption(images[:2], max_new_tokens=3) == model.caption(images[:2], max_new_tokens=3)


def test_bf16_model_keeps_its_rotary_frequencies_in_fp32(model):
    """Casting the model must not round the rotary frequencies (bf16 would move 0.3162 to 0.3164)."""
    import copy

    from unified.backbone import MultiAxisRotaryEmbedding

    rotary = next(m for m in model.modules() if isinstance(m, MultiAxisRotaryEmbedding))
    before = rotary.inv_freq.clone()
    cast = copy.deepcopy(model).to(torch.bfloat16)
    rotary_bf16 = next(m for m in cast.modules() if isinstance(m, MultiAxisRotaryEmbedding))
    assert rotary_bf16.inv_freq.dtype == torch.float32 and torch.equal(rotary_bf16.inv_freq, before)
    assert next(cast.backbone.parameters()).dtype == torch.bfloat16


def test_conv_reader(tmp_path):
    """reader="conv" adds a convolution over the complete latent's grid to what captioning reads: it starts at
    zero (a "linear" model's weights give the same embeddings), then each position sees its neighbours but
    not far positions, the scale groups are untouched, and the option survives save/load and adopt_weights."""
    text = TextTokenizer.train(list(SHAPES) * 4, vocab_size=300)
    codec = debug_image_codec(0)
    torch.manual_seed(0)
    linear = UnifiedModel.build(text, {"image": codec}, backbone_config("qwen2", text.vocab_size),
                                heads=[HeadConfig(diff_width=64, diff_depth=2)]).eval()
    linear.save_pretrained(tmp_path / "linear")
    conv = UnifiedModel.build(text, {"image": codec}, backbone_config("qwen2", text.vocab_size),
                              heads=[HeadConfig(diff_width=64, diff_depth=2, reader="conv", reader_width=16)]).eval()
    fresh = conv.adopt_weights(tmp_path / "linear")
    assert fresh and all(name.startswith("heads.image.reader.") for name in fresh)
    head, K = conv.heads["image"], codec.num_scales
    h, w = codec.grids[-1]
    latent = torch.randn(2, h * w, codec.latent_dim)
    torch.testing.assert_close(head.embed(K, latent, 2, h * w), linear.heads["image"].embed(K, latent, 2, h * w))
    with torch.no_grad():
        torch.nn.init.normal_(head.reader.conv_out.weight, std=0.1)
    edited = latent.clone()
    edited[:, 0] += 1.0  # the top-left position
    moved = (head.embed(K, edited, 2, h * w) - head.embed(K, latent, 2, h * w)).abs().amax(dim=(0, 2))
    neighbours = {0, 1, 2, w, w + 1, w + 2, 2 * w, 2 * w + 1, 2 * w + 2}  # two 3x3 convolutions reach 2 away
    assert all(moved[i] > 0 for i in (1, w, w + 1)) and all(moved[i] == 0 for i in range(h * w) if i not in neighbours)
    scale_latent = torch.randn(2, 4, codec.latent_dim)
    torch.testing.assert_close(head.embed(1, scale_latent, 2, 4), linear.heads["image"].embed(1, scale_latent, 2, 4))
    conv.save_pretrained(tmp_path / "conv")
    again = UnifiedModel.from_pretrained(tmp_path / "conv")
    torch.testing.assert_close(again.heads["image"].embed(K, latent, 2, h * w), head.embed(K, latent, 2, h * w))
    with pytest.raises(ValueError, match="reader"):
        HeadConfig(reader="attention")
    row = ConvReader(latent_dim=8, hidden=16, width=8, grid=(6,))  # a 1-D latent (audio) reads as one row
    with torch.no_grad():
        torch.nn.init.normal_(row.conv_out.weight, std=0.1)
        tokens = torch.randn(1, 6, 8)
        far = tokens.clone()
        far[:, 5] += 1.0
        assert row(tokens).shape == (1, 6, 16) and torch.equal(row(tokens)[:, :3], row(far)[:, :3])


def test_self_correction_reads_erroneous_codes_and_learns_the_correcting_ones():
    """With self_correction p, a written item's earlier scales reach the backbone with errors (the codes
    `encode_correcting` subtracted), its targets are the codes that correct them, and a read item is left alone."""
    model = tiny_model()
    model.config.caption_dropout = 0.0
    images, tokens = images_and_tokens(model)
    codec = model.codecs["image"]
    examples = [Example("t2i", t, name) for t, name in zip(tokens.rows(), SHAPES, strict=True)]
    examples.append(Example("caption", tokens.rows()[0], "a red circle"))
    clean = model.training_batch(examples, torch.Generator().manual_seed(0))
    assert all(it.item.inputs is None for it in clean.items)

    model.config.self_correction = 0.5
    batch = model.training_batch(examples, torch.Generator().manual_seed(0))
    written = [it for it in batch.items if it.item.loss]
    assert len(written) == 4 and all(it.item.inputs is not None for it in written)
    assert [it for it in batch.items if not it.item.loss][0].item.inputs is None  # read items keep their codes
    inputs = [torch.cat(per_scale) for per_scale in zip(*(it.item.inputs for it in written), strict=True)]
    labels = HybridTokens.concat([it.item.tokens for it in written])
    assert any(not torch.equal(a, b) for a, b in zip(inputs[:-1], labels.indices[:-1], strict=True))
    # what the backbone reads is built from the erroneous codes, not from the labels
    embedded = model.embed(batch)
    n = codec.tokens_per_scale
    got = torch.stack([embedded[it.row, it.start : it.start + sum(n)] for it in written])
    expected = model.segment_inputs("image", labels, inputs)[:, : sum(n)]
    from_labels = model.segment_inputs("image", labels)[:, : sum(n)]
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, from_labels)
    # inputs and residual still sum to each image's latent: the residual target stays honest
    latent = codec.fhat(tokens)
    torch.testing.assert_close(codec.fhat(HybridTokens(inputs, labels.residual, labels.grids)), latent,
                               rtol=0, atol=1e-5)
    losses = model(batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(losses["loss"]) and losses["token_ce"] > 0
    losses["loss"].backward()
    with pytest.raises(ValueError, match="self_correction"):
        UnifiedConfig.from_dict({**model.config.to_dict(), "self_correction": 1.0})
