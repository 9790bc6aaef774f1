"""The one scale loop over any grid, and HybridTokens' row operations."""

import pytest
import torch

from hart_core.quantizer import HybridTokens, MultiScaleResidualQuantizer
from hart_core.scale_loop import ScaleSampling, ScaleTrace, sample_scales

GRIDS = {"non-square 2-D": ((1, 2), (2, 3), (3, 5)), "1-D": ((1,), (3,), (6,))}


@pytest.mark.parametrize("name", list(GRIDS))
def test_given_codes_rebuild_the_quantizers_latent(name):
    """With every scale given and no residual, the loop's f_hat is the quantizer's own decode of those
    codes, every step reads the downsampled latent so far, and the trace records what was drawn."""
    grids = GRIDS[name]
    torch.manual_seed(0)
    q = MultiScaleResidualQuantizer(vocab_size=16, dim=4, grids=grids).eval()
    B, V = 2, 16
    truth = q.encode(torch.randn(B, 4, *grids[-1]))
    seen = []

    def step(si, x):
        seen.append(None if x is None else x.clone())
        n = truth.indices[si].shape[1]
        return torch.zeros(2 * B, n, 8)

    trace = ScaleTrace()
    with torch.no_grad():
        f_hat, codes = sample_scales(q, grids, B, step, lambda h: torch.zeros(*h.shape[:2], V),
                                     lambda *a: pytest.fail("no residual was asked for"),
                                     ScaleSampling(cfg=2.0, top_k=4, use_residual=False),
                                     prefix=truth.indices, generator=torch.Generator().manual_seed(0), trace=trace)
        expected = q.decode_fhat(HybridTokens(truth.indices, None, grids), with_residual=False)
        inputs = q.teacher_forcing_input(truth.indices)
    torch.testing.assert_close(f_hat, expected)
    assert all(torch.equal(a, b) for a, b in zip(codes, truth.indices, strict=True))
    assert seen[0] is None
    # both CFG streams read the same input, the teacher-forcing input of training
    got = torch.cat([x[:B] for x in seen[1:]], dim=1)
    torch.testing.assert_close(got, inputs)
    assert all(torch.equal(x[:B], x[B:]) for x in seen[1:])
    assert trace.guidance == [0.0, 1.0, 1.0] and trace.f_hat is f_hat


def test_residual_is_added_at_the_last_scale_only():
    grids = GRIDS["1-D"]
    q = MultiScaleResidualQuantizer(vocab_size=8, dim=2, grids=grids).eval()
    calls = []

    def residual(hidden, codes, guidance):
        calls.append((hidden.shape, codes.shape, guidance))
        return torch.ones(codes.shape[0] * codes.shape[1], 2)

    def step(si, x):
        return torch.zeros(2, q.grids[si][0], 3)

    def logits(hidden):
        return torch.zeros(*hidden.shape[:2], 8)

    with torch.no_grad():
        plain, _ = sample_scales(q, grids, 1, step, logits, residual, ScaleSampling(top_k=1, use_residual=False))
        full, _ = sample_scales(q, grids, 1, step, logits, residual, ScaleSampling(top_k=1))
    # once, for both streams, with the last scale's CFG weight (HART: it reuses scale K-2's, 4.5 * 1/2)
    assert calls == [(torch.Size([2, 6, 3]), torch.Size([2, 6, 2]), 2.25)]
    torch.testing.assert_close(full, plain + 1)


def test_hybrid_tokens_rows_concat_split():
    g = torch.Generator().manual_seed(0)
    grids = ((1,), (2,))
    t = HybridTokens([torch.randint(0, 9, (5, 1), generator=g), torch.randint(0, 9, (5, 2), generator=g)],
                     torch.randn(5, 2, 3, generator=g), grids)
    rows = t.rows()
    assert len(rows) == 5 and all(r.batch_size == 1 for r in rows)
    rows[0].indices[0].fill_(-1)  # rows own their memory
    assert t.indices[0][0, 0] != -1
    again = HybridTokens.concat(t.split([2, 3]))
    assert all(torch.equal(a, b) for a, b in zip(again.indices, t.indices, strict=True))
    assert torch.equal(again.residual, t.residual)
    assert HybridTokens.concat([t, HybridTokens(t.indices, None, grids)]).residual is None
    with pytest.raises(ValueError, match="grids"):
        HybridTokens.concat([t, HybridTokens([i[:, :1] for i in t.indices], None, ((1,), (1,)))])
    with pytest.raises(ValueError, match="add up"):
        t.split([2, 2])
