"""One seed per row (`generate(..., seed=[...])`, hart_core's RowGenerators): each row of a batch gets what
it gets alone with its seed, so a server can batch independent requests and keep them reproducible."""

import pytest
import torch

from hart_core.sampling import RowGenerators, sample_tokens
from unified.debug import debug_model


def _gens(*seeds):
    return RowGenerators([torch.Generator().manual_seed(s) for s in seeds])


def test_row_generators_draw_what_each_row_draws_alone():
    logits = torch.randn(3, 5, 40)
    batched, _ = sample_tokens(logits, 0, 0.0, _gens(1, 2, 3))
    for b, s in enumerate((1, 2, 3)):
        alone, _ = sample_tokens(logits[b : b + 1], 0, 0.0, torch.Generator().manual_seed(s))
        assert torch.equal(batched[b : b + 1], alone)
    # [stream][row][cell] noise: row b's blocks equal a batch of one's
    noise = _gens(4, 5).randn((2 * 2 * 3, 7), group=3).view(2, 2, 3, 7)
    for b, s in enumerate((4, 5)):
        assert torch.equal(noise[:, b], torch.randn((2, 3, 7), generator=torch.Generator().manual_seed(s)))
    with pytest.raises(ValueError, match="row generators"):
        sample_tokens(logits, 0, 0.0, _gens(1, 2))


@pytest.mark.parametrize("cfg", [1.0, 3.0])  # 1.0: no guidance, the diffusion head draws for both streams
def test_batched_rows_equal_rows_alone(cfg):
    model = debug_model()
    prompts, seeds = ["a red circle", "a blue square in the middle", "a red circle"], [7, 8, 9]
    images, items = model.generate(prompts, seed=seeds, cfg=cfg, return_tokens=True)
    for b, (p, s) in enumerate(zip(prompts, seeds, strict=True)):
        alone, (item,) = model.generate([p], seed=s, cfg=cfg, return_tokens=True)
        # codes are drawn identically; the residual and pixels only differ by batched-matmul rounding
        assert all(torch.equal(x, y) for x, y in zip(items[b].indices, item.indices, strict=True))
        torch.testing.assert_close(items[b].residual, item.residual, atol=1e-4, rtol=0)
        torch.testing.assert_close(images[b : b + 1], alone, atol=1e-4, rtol=0)
        # a list of one seed is exactly the plain seed
        assert torch.equal(model.generate([p], seed=[s], cfg=cfg), alone)
    assert not torch.equal(images[0], images[2])  # same prompt, other seed
    with pytest.raises(ValueError, match="seeds for"):
        model.generate(prompts, seed=[1, 2])
