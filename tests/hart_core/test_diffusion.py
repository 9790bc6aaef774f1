"""Residual diffusion head: parity with the official DiffLoss / iDDPM numbers, plus behaviour."""

from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hart_core.diffusion import GaussianDiffusion, ResidualDiffusionHead, space_timesteps

C_VAE, Z_CH, WIDTH, DEPTH = 8, 64, 64, 2  # both fixture sets: Cvae 8, embed_dim 64, diff 64 x 2


@cache
def _io(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "io" / "transformer_io.safetensors")


def _head(path: Path) -> ResidualDiffusionHead:
    weights = load_file(path / "llm" / "model.safetensors")
    sd = {k.removeprefix("diffloss."): v for k, v in weights.items() if k.startswith("diffloss.")}
    head = ResidualDiffusionHead(C_VAE, Z_CH, WIDTH, DEPTH, num_sampling_steps="8")
    head.load_state_dict(sd, strict=True)  # also proves the parameter names match the official
    return head.eval()


def _check(ours: torch.Tensor, ref: torch.Tensor, name: str, rtol: float | None = None) -> None:
    assert ours.shape == ref.shape, name
    err = (ours.double() - ref.double()).abs()
    if rtol is None:
        tol = 1e-4 * max(1.0, ref.abs().max().item())
        assert err.max().item() <= tol, f"{name}: max err {err.max().item():.3g} > {tol:.3g}"
    else:  # rows of very different magnitude (vb at t=999 is O(1e3)): per-element tolerance
        tol = torch.clamp(rtol * ref.double().abs(), min=1e-4)
        assert (err <= tol).all(), f"{name}: max err {err.max().item():.3g}"


# ---------------------------------------------------------------------------------------------
# Parity with the official code (both fixture sets).


def test_schedule_matches_reference(fixture_dir):
    io, gen = _io(fixture_dir), GaussianDiffusion("8")
    assert torch.equal(gen.timestep_map, io["diff_timestep_map"])
    assert gen.timestep_map.tolist() == [0, 143, 285, 428, 571, 714, 856, 999]
    assert gen.betas.dtype == torch.float64
    _check(gen.betas, io["diff_respaced_betas"], "diff_respaced_betas")


@torch.no_grad()
def test_denoiser_matches_reference(fixture_dir):
    io, net = _io(fixture_dir), _head(fixture_dir).net
    _check(net(io["diff_net_x"], io["diff_net_t"], io["diff_net_c"]), io["diff_net_out"], "net")
    scale = float(io["diff_cfg_scale"])
    out = net.forward_with_cfg(io["diff_cfg_x"], io["diff_cfg_t"], io["diff_cfg_c"], scale)
    _check(out, io["diff_cfg_out"], "diff_cfg_out")


@pytest.mark.parametrize("mode", ["cfg", "nocfg"])
@pytest.mark.parametrize("k", [0, 4, 7])
@torch.no_grad()
def test_p_sample_matches_reference(fixture_dir, mode, k):
    io, head = _io(fixture_dir), _head(fixture_dir)
    p = f"psample_{mode}_t{k}_"
    c, x = io[p + "c"], io[p + "x"]
    seen = []

    def model_fn(x_t, t_orig):
        seen.append(t_orig)
        if mode == "cfg":
            return head.net.forward_with_cfg(x_t, t_orig, c, 1.5)
        return head.net(x_t, t_orig, c)

    t = torch.full((x.shape[0],), k, dtype=torch.long)
    out = head.gen_diffusion.p_sample(model_fn, x, t, io[p + "noise"])
    assert (seen[0] == head.gen_diffusion.timestep_map[k]).all()  # model sees ORIGINAL t
    for key in ("mean", "log_variance", "pred_xstart", "sample"):
        _check(out[key], io[p + key], p + key)


@torch.no_grad()
def test_training_losses_match_reference(fixture_dir):
    io, head = _io(fixture_dir), _head(fixture_dir)
    z = io["diff_train_z"]
    terms = head.train_diffusion.training_losses(
        lambda x, t: head.net(x, t, z),
        io["diff_train_target"] / 0.6,
        io["diff_train_t"],
        io["diff_train_noise"],
    )
    _check(terms["mse"], io["diff_train_mse"], "diff_train_mse")
    _check(terms["vb"], io["diff_train_vb"], "diff_train_vb", rtol=1e-5)
    _check(terms["loss"], io["diff_train_loss"], "diff_train_loss", rtol=1e-5)
    # the head's loss() is the same computation on the raw (un-divided) residual
    per_row = head.loss(
        io["diff_train_target"], z, t=io["diff_train_t"], noise=io["diff_train_noise"], reduce=False
    )
    _check(per_row, io["diff_train_loss"], "loss(reduce=False)", rtol=1e-5)


@torch.no_grad()
def test_full_sample_matches_reference(fixture_dir):
    io, head = _io(fixture_dir), _head(fixture_dir)
    tape = [io[f"diffsample_noise_{i:03d}"] for i in range(9)]
    shapes = []

    def noise_fn(shape):
        shapes.append(shape)
        return tape[len(shapes) - 1][: shape[0]]

    z = io["diffsample_z"]
    out = head.sample(z, cfg=float(io["diffsample_cfg"]), noise_fn=noise_fn)
    _check(out, io["diffsample_out"], "diffsample_out")
    # x_T for half the rows, then one draw per step except the noiseless last one
    assert shapes == [(3, C_VAE)] + [(6, C_VAE)] * 7


# ---------------------------------------------------------------------------------------------
# Behaviour (no fixtures needed).


def test_space_timesteps_and_unspaced_process():
    assert space_timesteps(1000, "8") == [0, 143, 285, 428, 571, 714, 856, 999]
    assert space_timesteps(100, "2,3") == [0, 49, 50, 74, 99]
    full = GaussianDiffusion(None)
    assert torch.equal(full.timestep_map, torch.arange(1000))
    assert torch.equal(GaussianDiffusion("").betas, full.betas)
    # rebuilding betas from the cumulative alphas only moves them by float64 rounding
    assert full.betas.max().item() == pytest.approx(0.999)
    assert (full.alphas_cumprod.diff() < 0).all()


def _toy_problem(n_cond=4, z_ch=16):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n_cond, z_ch, generator=g)
    target = (torch.rand(n_cond, C_VAE, generator=g) - 0.5) * 0.8  # residuals in [-0.4, 0.4]
    head = ResidualDiffusionHead(C_VAE, z_ch, width=64, depth=2, num_sampling_steps="8")
    head.net.initialize_weights(torch.Generator().manual_seed(1))
    return head, z, target


@pytest.fixture
def single_thread():
    # tiny matmuls gain nothing from threads, and on a busy CPU intra-op thread contention
    # turns this ~2 s loop into a minute
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_fits_constant_residual_per_condition(single_thread):
    head, z, target = _toy_problem()
    n_cond = len(z)
    # fixed evaluation draws so "before" and "after" are comparable
    g = torch.Generator().manual_seed(123)
    ev_idx = torch.arange(1024) % n_cond
    ev_t = torch.randint(0, 1000, (1024,), generator=g)
    ev_noise = torch.randn(1024, C_VAE, generator=g)

    def eval_loss():
        with torch.no_grad():
            return head.loss(target[ev_idx], z[ev_idx], t=ev_t, noise=ev_noise).item()

    before = eval_loss()
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.0)
    idx, gen = torch.arange(256) % n_cond, torch.Generator().manual_seed(7)
    for _ in range(250):
        loss = head.loss(target[idx], z[idx], generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.1 * before, (before, after)

    samples = head.sample(z.repeat(64, 1), generator=torch.Generator().manual_seed(0))
    samples = samples.view(64, n_cond, C_VAE)
    # targets span [-0.4, 0.4]; observed: 0.037 worst per-condition median error, 0.029 typical
    assert (samples.median(0).values - target).abs().max() < 0.08
    assert (samples - target).abs().median() < 0.06


def _random_head():
    head, z, _ = _toy_problem()
    with torch.no_grad():  # non-zero output layers so the sample depends on every draw
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return head, z


def test_sampling_is_seeded_by_the_generator_only():
    head, z = _random_head()

    def draw(seed, z=z, cfg=1.0):
        torch.manual_seed(seed + 1000)  # the global RNG must not matter
        return head.sample(z, cfg=cfg, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    assert not torch.allclose(draw(0), draw(1))
    zz = torch.cat([z, torch.zeros_like(z)])
    assert torch.equal(draw(3, z=zz, cfg=2.0), draw(3, z=zz, cfg=2.0))
    assert not torch.allclose(draw(3, z=zz, cfg=2.0), draw(4, z=zz, cfg=2.0))

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    tgt = torch.randn(z.shape[0], C_VAE, generator=torch.Generator().manual_seed(9)) * 0.3
    torch.manual_seed(1)
    a = head.loss(tgt, z, generator=g1)
    torch.manual_seed(2)
    b = head.loss(tgt, z, generator=g2)
    assert torch.equal(a, b)
    assert not torch.equal(a, head.loss(tgt, z, generator=torch.Generator().manual_seed(6)))


def test_cfg_one_means_unguided_and_temperature_zero_ignores_step_noise():
    head, z = _random_head()
    zz = torch.cat([z, torch.randn(z.shape, generator=torch.Generator().manual_seed(2))])
    shapes = []

    def noise_fn(shape):
        shapes.append(shape)
        return torch.randn(shape, generator=torch.Generator().manual_seed(len(shapes)))

    out = head.sample(zz, cfg=1.0, noise_fn=noise_fn)
    assert shapes == [(8, C_VAE)] * 8  # full-batch x_T: plain forward on every row
    assert not torch.allclose(out[:4], out[4:])

    def same_x_T_then_seeded(seed):
        gen, calls = torch.Generator().manual_seed(seed), []

        def noise_fn(shape):
            calls.append(shape)
            return torch.ones(shape) if len(calls) == 1 else torch.randn(shape, generator=gen)

        return noise_fn

    # temperature 0: only x_T matters, the per-step noise is scaled away
    cold = [head.sample(z, temperature=0.0, noise_fn=same_x_T_then_seeded(s)) for s in (0, 1)]
    assert torch.equal(cold[0], cold[1])
    warm = [head.sample(z, temperature=1.0, noise_fn=same_x_T_then_seeded(s)) for s in (0, 1)]
    assert not torch.allclose(warm[0], warm[1])


def test_cfg_half_rows_drive_the_guided_sample():
    head, z = _random_head()
    n = len(z)
    zz = torch.cat([z, torch.randn(z.shape, generator=torch.Generator().manual_seed(2))])

    def tape(seed, scale_second_half=1.0):
        gen, calls = torch.Generator().manual_seed(seed), []

        def noise_fn(shape):
            calls.append(shape)
            eps = torch.randn(shape, generator=gen)
            if len(calls) > 1:  # per-step draws: rows [n:] belong to the uncond half
                eps[n:] *= scale_second_half
            return eps

        return noise_fn

    out = head.sample(zz, cfg=2.0, noise_fn=tape(0))
    # the uncond half's own noise never reaches the guided (first) half ...
    other = head.sample(zz, cfg=2.0, noise_fn=tape(0, scale_second_half=5.0))
    assert torch.equal(out[:n], other[:n])
    assert not torch.allclose(out[n:], other[n:])
    # ... but the uncond condition does (guidance), and halves differ as in the official
    zz2 = torch.cat([z, torch.zeros_like(z)])
    assert not torch.allclose(out[:n], head.sample(zz2, cfg=2.0, noise_fn=tape(0))[:n])
    assert not torch.allclose(out[:n], out[n:])


def test_bf16_runs_and_stays_close_to_fp32():
    head, z = _random_head()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(4, C_VAE, generator=g)
    steps = [torch.randn(4, C_VAE, generator=g) for _ in range(7)]

    def tape(dtype):
        it = iter([x_T, *steps])
        return lambda shape: next(it).to(dtype)

    ref = head.sample(z, noise_fn=tape(torch.float32), temperature=0.5)
    head_bf = head.to(torch.bfloat16)
    out = head_bf.sample(z.bfloat16(), noise_fn=tape(torch.bfloat16), temperature=0.5)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1
    loss = head_bf.loss(torch.zeros(4, C_VAE, dtype=torch.bfloat16), z.bfloat16(), generator=g)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
