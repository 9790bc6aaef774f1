"""TextEncoder on real (tiny, random) Hugging Face LMs saved to disk and loaded back offline."""

from __future__ import annotations

import pytest
import torch

from hart_core.debug import byte_level_tokenizer, tiny_qwen2
from hart_core.text_encoder import HART_SYSTEM_PROMPT, TextEncoder

MAX_LEN = 24
HIDDEN = 32
SYSTEM = "Describe:\n"
PROMPTS = ["a red fox", "two cats on a mat", "x"]


def _save_lm(folder, model) -> None:
    model.save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    _save_lm(folder, tiny_qwen2(hidden_size=HIDDEN, seed=3))
    return folder


@pytest.fixture(scope="module")
def encoder(qwen_dir):
    return TextEncoder.from_pretrained(qwen_dir, max_length=MAX_LEN, system_prompt=None)


@pytest.fixture(scope="module")
def sys_encoder(qwen_dir):
    return TextEncoder.from_pretrained(qwen_dir, max_length=MAX_LEN, system_prompt=SYSTEM)


def _ids(enc: TextEncoder, text: str) -> list[int]:
    return enc.tokenizer(text, add_special_tokens=True)["input_ids"]


@torch.no_grad()
def _lm_states(enc: TextEncoder, ids: list[int]) -> torch.Tensor:
    """last_hidden_state of the LM on exactly these tokens (no padding, no mask), [len, hidden]."""
    return enc.model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()


def test_loaded_from_folder(encoder, qwen_dir):
    assert type(encoder.model).__name__ == "Qwen2Model"
    assert encoder.hidden_size == HIDDEN
    assert encoder.tokenizer.padding_side == "right"
    assert encoder.tokenizer.pad_token_id == encoder.tokenizer.convert_tokens_to_ids("<pad>")
    assert not encoder.model.training
    # the released sampler's system prompt is the default
    assert TextEncoder.from_pretrained(qwen_dir, max_length=MAX_LEN).system_prompt == HART_SYSTEM_PROMPT


def test_shapes_mask_positions(encoder):
    context, mask, positions = encoder(PROMPTS)
    assert context.shape == (len(PROMPTS), MAX_LEN, HIDDEN)
    assert context.dtype == torch.float32
    assert mask.shape == positions.shape == (len(PROMPTS), MAX_LEN)
    assert mask.dtype == torch.bool
    assert torch.isfinite(context).all()  # padded slots too: they are masked, never NaN
    for row, prompt in enumerate(PROMPTS):
        n = len(_ids(encoder, prompt))
        assert n == len(prompt.encode())  # byte-level tokenizer, no special tokens
        expected = torch.zeros(MAX_LEN, dtype=torch.bool)
        expected[:n] = True
        assert torch.equal(mask[row], expected), prompt
    assert torch.equal(positions, mask.long().cumsum(1) - 1)
    assert positions[0, : len("a red fox")].tolist() == list(range(len("a red fox")))


def test_valid_slots_equal_unpadded_lm_states(encoder):
    context, mask, _ = encoder(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        ref = _lm_states(encoder, _ids(encoder, prompt))
        n = len(ref)
        assert mask[row].sum() == n
        torch.testing.assert_close(context[row, :n], ref, atol=1e-5, rtol=1e-5)


def test_system_prompt_states(encoder, sys_encoder):
    plain, plain_mask, plain_pos = encoder(PROMPTS)
    context, mask, positions = sys_encoder(PROMPTS)
    assert context.shape == (len(PROMPTS), MAX_LEN, HIDDEN)
    # mask and positions describe the prompt only; the system prompt does not take slots
    assert torch.equal(mask, plain_mask)
    assert torch.equal(positions, plain_pos)
    sys_ids = _ids(sys_encoder, SYSTEM)
    assert len(sys_ids) > 0
    for row, prompt in enumerate(PROMPTS):
        ids = _ids(sys_encoder, prompt)
        ref = _lm_states(sys_encoder, sys_ids + ids)[len(sys_ids) :]
        torch.testing.assert_close(context[row, : len(ids)], ref, atol=1e-5, rtol=1e-5)
        assert (context[row, : len(ids)] - plain[row, : len(ids)]).abs().max() > 1e-3


def test_batch_equals_one_by_one(encoder, sys_encoder):
    for enc in (encoder, sys_encoder):
        context, mask, positions = enc(PROMPTS)
        for row, prompt in enumerate(PROMPTS):
            c1, m1, p1 = enc([prompt])
            assert torch.equal(m1[0], mask[row]) and torch.equal(p1[0], positions[row])
            n = int(m1.sum())
            torch.testing.assert_close(c1[0, :n], context[row, :n], atol=1e-5, rtol=1e-5)
    # a bare string is one prompt
    c_str, _, _ = encoder(PROMPTS[0])
    assert c_str.shape == (1, MAX_LEN, HIDDEN)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_prompt_rejected(encoder, bad):
    with pytest.raises(ValueError, match="empty prompt"):
        encoder([bad])
    with pytest.raises(ValueError, match="empty prompt"):
        encoder(["a fine prompt", bad])


def test_prompt_length_limit(encoder):
    _, mask, _ = encoder(["y" * MAX_LEN])  # exactly max_length tokens fits
    assert mask.all()
    with pytest.raises(ValueError, match=rf"{MAX_LEN + 1} tokens.*{MAX_LEN}-token"):
        encoder(["ok", "z" * (MAX_LEN + 1)])
    with pytest.raises(ValueError, match=rf"{3 * MAX_LEN} tokens"):
        encoder(["z" * 3 * MAX_LEN])


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder.from_pretrained(tmp_path / "nope", max_length=MAX_LEN)


def test_load_dtype(qwen_dir):
    enc = TextEncoder.from_pretrained(qwen_dir, max_length=MAX_LEN, system_prompt=None, dtype=torch.bfloat16)
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    context, _, _ = enc(["a red fox"])
    assert context.dtype == torch.float32  # always handed out in fp32


def test_llama_backbone(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=258, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )
    _save_lm(tmp_path, LlamaModel(cfg))
    enc = TextEncoder.from_pretrained(tmp_path, max_length=16, system_prompt=SYSTEM)
    assert type(enc.model).__name__ == "LlamaModel"
    assert enc.hidden_size == 48
    context, mask, positions = enc(["a lemur", "hat"])
    assert context.shape == (2, 16, 48)
    assert mask.sum(1).tolist() == [7, 3]
    assert torch.equal(positions, mask.long().cumsum(1) - 1)
    sys_ids = _ids(enc, SYSTEM)
    ids = _ids(enc, "a lemur")
    ref = _lm_states(enc, sys_ids + ids)[len(sys_ids) :]
    torch.testing.assert_close(context[0, :7], ref, atol=1e-5, rtol=1e-5)
