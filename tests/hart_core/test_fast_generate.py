"""The fast generation path agrees with the eager reference: same draws, same codes, latents within fp32
rounding; its diffusion sampler is bit-exact; its static KV cache is reusable across generations; its VAE
decode (channels_last, optionally bf16) agrees with the tokenizer's, which it leaves untouched."""

import pytest
import torch

from hart_core.debug import debug_configs
from hart_core.fast_blocks import rotate_half_matrix
from hart_core.fast_generate import FastDecoder, FastPath
from hart_core.generate import GenerationTrace, generate_latent
from hart_core.layers import rotate_half
from hart_core.tokenizer import HARTTokenizer
from hart_core.transformer import HARTTransformer

from .test_transformer import random_context

# fp32: the fused norm and addcmul round differently from the reference's separate ops
LOGIT_ATOL = 1e-4
LATENT_ATOL = 1e-3
PIXEL_ATOL = 1e-5  # fp32 channels_last convolutions sum in another order
COMPILED_PIXEL_ATOL = 1e-4  # ... and inductor's fused norms and activations round in theirs


def build(seed: int = 0, **config):
    tok_cfg, tr_cfg = debug_configs(**config)
    torch.manual_seed(seed)
    tokenizer, model = HARTTokenizer(tok_cfg).eval(), HARTTransformer(tr_cfg).eval()
    with torch.no_grad():  # nonzero biases and head layers, so every term of the math matters
        for p in model.diffusion_head.parameters():
            p.normal_(std=0.05)
        for block in model.blocks:
            block.attn.q_bias.normal_(std=0.1)
            block.attn.v_bias.normal_(std=0.1)
    return tokenizer, model


def run(tokenizer, model, context, mask, fast=None, seed=7, **kwargs):
    trace = GenerationTrace()
    f_hat = generate_latent(model, tokenizer, context, mask, generator=torch.Generator().manual_seed(seed),
                            trace=trace, fast=fast, **kwargs)
    return f_hat, trace


def assert_agree(reference, fast):
    (f_ref, t_ref), (f_fast, t_fast) = reference, fast
    for k, (a, b) in enumerate(zip(t_ref.indices, t_fast.indices, strict=True)):
        assert torch.equal(a, b), f"scale {k}: the fast path drew other codes"
    for a, b in zip(t_ref.logits, t_fast.logits, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=LOGIT_ATOL)
    torch.testing.assert_close(f_fast, f_ref, rtol=0, atol=LATENT_ATOL)


def test_rotation_matrix_is_rotate_half_exactly():
    x = torch.randn(3, 2, 5, 8)
    assert torch.equal(x @ rotate_half_matrix(8), rotate_half(x))


@pytest.mark.parametrize("config", [
    {"shared_aln": True},  # the released 0.7B layout: shared modulation table
    {"shared_aln": False},  # per-block AdaLN
    {"shared_aln": True, "depth": 3, "patch_nums": (1, 2, 4, 5)},
])
def test_fast_path_draws_what_the_eager_path_draws(config):
    tokenizer, model = build(**config)
    context, mask = random_context(model, 3)
    with torch.inference_mode():
        assert_agree(run(tokenizer, model, context, mask), run(tokenizer, model, context, mask, FastPath(model)))


def test_fast_path_without_cosine_attention_or_guidance():
    tokenizer, model = build()
    for block in model.blocks:
        block.attn.l2_norm, block.attn.scale = False, 0.25 / block.attn.head_dim ** 0.5
    context, mask = random_context(model, 2)
    fast = FastPath(model)
    with torch.inference_mode():
        for cfg in (1.0, 3.0):  # cfg 1.0: the diffusion head samples unguided
            assert_agree(run(tokenizer, model, context, mask, cfg=cfg, top_k=5),
                         run(tokenizer, model, context, mask, fast, cfg=cfg, top_k=5))


def test_diffusion_sampler_is_bit_exact():
    _, model = build()
    head = model.diffusion_head
    fast = FastPath(model).diffusion
    z = torch.randn(12, model.config.embed_dim)
    for cfg, temperature in ((1.0, 1.0), (2.5, 1.0), (4.0, 0.7)):
        expected = head.sample(z, cfg=cfg, temperature=temperature, generator=torch.Generator().manual_seed(3))
        got = fast.sample(z, cfg=cfg, temperature=temperature, generator=torch.Generator().manual_seed(3))
        assert torch.equal(got, expected)
    head.set_sampling_steps(3)  # respaced: the fast sampler follows the new schedule
    expected = head.sample(z, cfg=2.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fast.sample(z, cfg=2.0, generator=torch.Generator().manual_seed(4)), expected)


def test_static_cache_is_reused_without_leaking_between_generations():
    tokenizer, model = build()
    fast = FastPath(model)
    (ctx_a, mask_a), (ctx_b, mask_b) = random_context(model, 2, seed=1), random_context(model, 2, seed=2)
    with torch.inference_mode():
        first, _ = run(tokenizer, model, ctx_a, mask_a, fast)
        run(tokenizer, model, ctx_b, mask_b, fast)  # fills the same cache with other keys
        again, _ = run(tokenizer, model, ctx_a, mask_a, fast)
        single, _ = run(tokenizer, model, ctx_a[:1], mask_a[:1], fast)  # another row count: its own cache
    assert torch.equal(again, first)
    assert {rows for rows, _, _ in fast._blocks} == {4, 2}
    assert single.shape[0] == 1


def test_model_cast_after_a_generation_gets_fresh_caches():
    tokenizer, model = build()
    fast = FastPath(model)
    context, mask = random_context(model, 1)
    with torch.inference_mode():
        run(tokenizer, model, context, mask, fast)
        model.to(torch.float64)
        model.diffusion_head.float()
        f_hat, _ = run(tokenizer, model, context.double(), mask, fast)
    assert torch.isfinite(f_hat).all()
    assert {dtype for _, _, dtype in fast._blocks} == {torch.float32, torch.float64}


def test_fast_path_in_bf16_stays_close_to_eager_in_bf16():
    tokenizer, model = build()
    model.to(torch.bfloat16)
    model.diffusion_head.float()
    context, mask = random_context(model, 2)
    with torch.inference_mode():
        (_, ref), (f_fast, fast) = run(tokenizer, model, context, mask, top_k=1), \
            run(tokenizer, model, context, mask, FastPath(model), top_k=1)
    assert torch.isfinite(f_fast).all()
    agree = torch.cat([(a == b).flatten() for a, b in zip(ref.indices, fast.indices, strict=True)]).float().mean()
    assert agree > 0.9  # greedy codes; bf16 rounding may flip near-ties


def test_pipeline_path_switch_and_bad_name():
    from hart_core.debug import debug_pipeline

    pipe = debug_pipeline()
    eager = pipe(["a red circle"], cfg=2.0, progress=False)
    fast = pipe.use_path("fast")(["a red circle"], cfg=2.0, progress=False)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-3)
    assert pipe.use_path("eager").fast is None
    with pytest.raises(ValueError, match="unknown generation path"):
        pipe.use_path("turbo")


def test_compiled_path_agrees_and_launches_fewer_ops():
    """One tiny model through torch.compile (each scale step and diffusion step one graph)."""
    tokenizer, model = build(depth=1, patch_nums=(1, 2))
    context, mask = random_context(model, 1)
    compiled = FastPath(model, compile=True)
    with torch.inference_mode():
        reference = run(tokenizer, model, context, mask)
        assert_agree(reference, run(tokenizer, model, context, mask, compiled))
        assert_agree(reference, run(tokenizer, model, context, mask, compiled))  # replayed, not recompiled
        f_hat = reference[0]
        torch.testing.assert_close(compiled.decoder(tokenizer)(f_hat), tokenizer.decode_latent(f_hat),
                                   rtol=0, atol=COMPILED_PIXEL_ATOL)


def test_fast_decoder_matches_the_tokenizer_and_leaves_it_untouched():
    tokenizer, _ = build()
    f_hat = torch.randn(3, tokenizer.config.z_channels, *tokenizer.grids[-1])
    reference = tokenizer.decode_latent(f_hat)
    decoder = FastDecoder(tokenizer)
    images = decoder(f_hat)
    torch.testing.assert_close(images, reference, rtol=0, atol=PIXEL_ATOL)
    assert images.is_contiguous() and images.dtype == torch.float32
    assert images.abs().max() <= 1.0
    assert decoder.net[1].conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert tokenizer.decoder.conv_in.weight.is_contiguous()  # the reference keeps its layout and its result
    assert torch.equal(tokenizer.decode_latent(f_hat), reference)

    half = FastDecoder(tokenizer, dtype=torch.bfloat16)(f_hat)
    assert half.dtype == torch.float32
    assert (half - reference).abs().mean() < 0.02  # bf16: ~3 significant digits per conv


def test_fast_path_decodes_with_a_decoder_per_tokenizer_and_device_state():
    tokenizer, model = build()
    fast = FastPath(model)
    first = fast.decoder(tokenizer)
    assert fast.decoder(tokenizer) is first  # made once, kept for later generations
    tokenizer.double()  # a cast tokenizer gets a new copy in its new dtype
    second = fast.decoder(tokenizer)
    assert second is not first and second.dtype == torch.float64
    fast.release()
    assert fast.decoder(tokenizer) is not second
