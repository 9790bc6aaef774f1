"""The reference-check tool must pass on the official fixtures and fail on a tampered checkpoint."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hart_core import parity

from ..conftest import parity_dir


def test_every_reference_check_passes(fixture_dir):
    checks = parity.run_checks(fixture_dir)
    failed = [str(c) for c in checks if not c.passed]
    assert not failed, "\n".join(failed)
    names = {c.name for c in checks}
    # every part of the model is exercised, discrete outputs exactly
    for expected in ("tokenizer.idx_3", "transformer.tf_logits", "diffusion.sample_out", "inference.idx_3",
                     "inference.image"):
        assert expected in names
    assert len(checks) >= 70


def test_eager_path_is_bit_exact_and_fast_path_within_tolerance(fixture_dir):
    """The eager generation reproduces the reference's latent exactly; the fast path within the fp32 tolerance,
    with every greedy code the same."""
    eager = {c.name: c for c in parity.run_checks(fixture_dir)}
    assert eager["inference.fhat"].error == 0 and eager["diffusion.sample_out"].error == 0
    fast = parity.run_checks(fixture_dir, path="fast")
    failed = [str(c) for c in fast if not c.passed]
    assert not failed, "\n".join(failed)
    assert {c.name: c for c in fast}["inference.fhat"].error < 1e-4


def test_fast_decode_in_bf16_stays_within_a_few_levels(fixture_dir):
    """The fast paths' VAE decode in bf16 misses the fp32 tolerance on pixels, by a few 8-bit levels at most."""
    checks = {c.name: c for c in parity.run_checks(fixture_dir, path="fast", decode_dtype=torch.bfloat16)}
    assert checks["inference.fhat"].passed  # the decode's precision changes nothing upstream
    assert checks["inference.image"].error < 8 / 255
    with pytest.raises(ValueError, match="decode dtype needs"):
        parity.run_checks(fixture_dir, decode_dtype=torch.bfloat16)


def test_cli_exit_codes(tmp_path, capsys):
    fixture = parity_dir("hart_tiny_a")
    assert parity.main([str(fixture)]) == 0
    assert "0 failed" in capsys.readouterr().out

    tampered = tmp_path / "tampered"
    shutil.copytree(fixture, tampered)
    weights = tampered / "llm" / "model.safetensors"
    state = load_file(weights)
    state["blocks.1.ffn.down_proj.weight"] = state["blocks.1.ffn.down_proj.weight"] * 1.01
    save_file(state, weights, metadata={"format": "pt"})
    assert parity.main([str(tampered)]) == 1
    out = capsys.readouterr().out
    assert "FAIL transformer.tf_logits" in out
    assert "FAIL tokenizer" not in out  # the tokenizer was not touched

    assert parity.main([str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("rows, asked", [(4, 4), (6, 3)])
def test_noise_tape_hands_out_draws_in_order(rows, asked):
    draws = [torch.randn(rows, 2), torch.randn(rows, 2)]
    tape = parity.NoiseTape(draws)
    assert torch.equal(tape((asked, 2)), draws[0][:asked])
    assert torch.equal(tape((asked, 2)), draws[1][:asked])
    with pytest.raises(RuntimeError, match="exhausted"):
        tape((asked, 2))


def test_cli_refuses_a_device_it_cannot_use(capsys):
    fixture = str(parity_dir("hart_tiny_a"))
    with pytest.raises(SystemExit) as e:
        parity.main([fixture, "--device", "nonsense"])
    assert e.value.code == 2 and "--device 'nonsense'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            parity.main([fixture, "--device", "cuda"])
        assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err
