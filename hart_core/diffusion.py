"""HART's residual diffusion head: a small AdaLN MLP denoiser plus an iDDPM Gaussian diffusion.

The transformer predicts discrete tokens; whatever the codebook cannot express at the last scale
(the continuous residual, 8 channels per token) is produced by this head, conditioned per token
on the transformer's hidden state z. Only the slice of iDDPM that HART uses is implemented:
cosine schedule, epsilon prediction, LEARNED_RANGE variance, MSE + variational-bound loss and
respacing by section counts ("8" -> 8 evenly spread steps).

Numerics follow the official code: schedule tables in float64, gathered per timestep and rounded
to float32 (the official `_extract_into_tensor` calls `.float()`), so fp32 results match the
reference bit-for-bit up to reduction order. bf16 activations are upcast to fp32 for the
diffusion arithmetic and the results rounded back to the activation dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

Tensor = torch.Tensor
ModelFn = Callable[[Tensor, Tensor], Tensor]  # (x_t, original timesteps) -> [N, 2C] = [eps, var]
NoiseFn = Callable[[tuple[int, ...]], Tensor]

# ---------------------------------------------------------------------------------------------
# Denoiser (official SimpleMLPAdaLN). Attribute names mirror the checkpoint keys.


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos | sin] (cos first, as in GLIDE/DiT) computed in fp32."""
    half = dim // 2
    # same op order as the official code so the fp32 frequencies round identically
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        # the embedding is built in fp32; hand it to the MLP in the weights' dtype so a pure-bf16
        # module works without autocast (under autocast the Linear recasts anyway)
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(ch, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(ch, ch), nn.SiLU(), nn.Linear(ch, ch))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(ch, 3 * ch))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, ch: int, out_ch: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(ch, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(ch, out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(ch, 2 * ch))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MLPAdaLNDenoiser(nn.Module):
    """Official `SimpleMLPAdaLN`: per-token MLP whose residual blocks are modulated by
    y = time_embed(t) + cond_embed(c). Outputs [eps, var_values], 2 * in_channels channels."""

    def __init__(self, in_channels: int, model_channels: int, z_channels: int, num_res_blocks: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList(ResBlock(model_channels) for _ in range(num_res_blocks))
        self.final_layer = FinalLayer(model_channels, 2 * in_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """Official init: xavier-uniform Linears, N(0, 0.02) time MLP, and every AdaLN modulation
        plus the output projection zeroed, so an untrained head predicts eps = 0, var_values = 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02, generator=generator)
        for lin in [b.adaLN_modulation[1] for b in self.res_blocks] + [
            self.final_layer.adaLN_modulation[1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """x [N, in_channels] noisy residual, t [N] ORIGINAL (1000-step) timesteps, c [N, z]."""
        return self.denoise(x, self.time_embed(t) + self.cond_embed(c))

    def denoise(self, x: Tensor, y: Tensor) -> Tensor:
        """The network after its conditioning: y = time_embed(t) + cond_embed(c) given."""
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)

    def forward_with_cfg(self, x: Tensor, t: Tensor, c: Tensor, cfg_scale: float) -> Tensor:
        """Classifier-free guidance, official semantics: rows [:N/2] of c are conditional, rows
        [N/2:] unconditional; only x[:N/2] is read (both halves denoise the same sample). The
        guided eps (1+s)*cond - s*uncond fills both halves; var channels stay per-row, unguided."""
        return self.guide(self.forward(self.halves(x), t, c), cfg_scale)

    @staticmethod
    def halves(x: Tensor) -> Tensor:
        """Both CFG halves denoise the first half's sample (the official reads only x[:N/2])."""
        half = x[: len(x) // 2]
        return torch.cat([half, half])

    def guide(self, out: Tensor, cfg_scale: float | Tensor) -> Tensor:
        """[eps, var] of [cond; uncond] rows -> the guided eps in both halves, each row's own var."""
        eps, var = out[:, : self.in_channels], out[:, self.in_channels :]
        cond, uncond = eps.chunk(2)
        guided = cond * (1 + cfg_scale) - cfg_scale * uncond
        return torch.cat([torch.cat([guided, guided]), var], dim=1)


# ---------------------------------------------------------------------------------------------
# Gaussian diffusion (iDDPM), respaced.


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal cosine schedule, in Python float64 exactly like the official loop."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_timesteps
    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
        dtype=torch.float64,
        device="cpu",  # plain attributes, not buffers: keep them off a `torch.device("meta")` context
    )


def space_timesteps(num_timesteps: int, section_counts: str) -> list[int]:
    """Kept timesteps for a respacing like "8" or "10,15,20": the process is cut into equal
    sections and each section is strided to its count (Python round(), as the official)."""
    counts = [int(s) for s in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1:
            raise ValueError(f"each section needs at least 1 sampling step, got {count}")
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(steps))


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def _discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """iDDPM's decoder term: Gaussian mass of the 1/255-wide bin around x (an image-pixel
    assumption HART inherits unchanged for its latent residuals; only used at t == 0)."""
    centered, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


POSTERIOR_TABLES = ("sqrt_recip_abar", "sqrt_recipm1_abar", "post_coef1", "post_coef2", "post_logvar", "log_betas")


def posterior(model_output: Tensor, x: Tensor, coef: Mapping[str, Tensor | float],
              clip: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The iDDPM reverse-step Gaussian (mean, log variance) and the predicted x_0, from the model's [eps,
    var_values] and the schedule entries `coef` (POSTERIOR_TABLES; [N, 1] columns, or one step's numbers).
    The log variance interpolates between the posterior's (var_values = -1) and beta's (+1)."""
    eps, var_values = model_output.split(x.shape[1], dim=1)
    frac = (var_values + 1) / 2
    log_variance = frac * coef["log_betas"] + (1 - frac) * coef["post_logvar"]
    pred_xstart = coef["sqrt_recip_abar"] * x - coef["sqrt_recipm1_abar"] * eps
    if clip:
        pred_xstart = pred_xstart.clamp(-1, 1)
    mean = coef["post_coef1"] * pred_xstart + coef["post_coef2"] * x
    return mean, log_variance, pred_xstart


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # the official rounds every table to fp32; keep fp64 only if the caller works in fp64
    return torch.float64 if dtype == torch.float64 else torch.float32


class GaussianDiffusion:
    """iDDPM with cosine schedule over `num_timesteps` steps, eps prediction and learned-range
    variance, optionally respaced to a subset of its timesteps.

    Indices `t` passed to the methods are RESPACED indices; the model is always called with the
    original timestep `timestep_map[t]`. Even without respacing the official rebuilds betas from
    the cumulative alphas (1 - abar_i / abar_{i-1}), which changes them by a few ulp; so do we.
    """

    def __init__(self, respacing: str | None = None, num_timesteps: int = 1000):
        base_betas = cosine_betas(num_timesteps)
        keep = space_timesteps(num_timesteps, respacing or str(num_timesteps))
        base_abar = torch.cumprod(1.0 - base_betas, 0)
        kept_abar = base_abar[keep]
        prev = torch.cat([kept_abar.new_ones(1), kept_abar[:-1]])

        self.timestep_map = torch.tensor(keep, dtype=torch.long, device="cpu")
        self.num_timesteps = len(keep)
        self.betas = betas = 1 - kept_abar / prev
        abar = torch.cumprod(1.0 - betas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # the posterior variance is 0 at step 0; its log is clipped by reusing step 1's value
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        tables = {
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1.0 - abar).sqrt(),
            "sqrt_recip_abar": (1.0 / abar).sqrt(),
            "sqrt_recipm1_abar": (1.0 / abar - 1).sqrt(),
            "post_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "post_coef2": (1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar),
            "post_logvar": post_logvar,
            "log_betas": betas.log(),
        }
        self.alphas_cumprod, self.posterior_variance = abar, post_var
        self._names = {name: i for i, name in enumerate(tables)}
        self._tables = torch.stack(list(tables.values()))  # [n_tables, K] float64, CPU
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _coef(self, name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
        """Table entries at respaced steps t as a [N, 1] column; rounding the float64 table to
        `dtype` before or after the gather is the same, so cast copies are cached per device
        (this also keeps float64 off devices that lack it)."""
        key = (t.device, dtype)
        if key not in self._cache:
            self._cache[key] = self._tables.to(dtype).to(t.device)
        return self._cache[key][self._names[name]][t].unsqueeze(-1)

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        cd = _compute_dtype(x_start.dtype)
        return self._coef("sqrt_abar", t, cd) * x_start.to(cd) + self._coef(
            "sqrt_one_minus_abar", t, cd
        ) * noise.to(cd)

    def q_posterior_mean(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        cd = x_t.dtype
        return self._coef("post_coef1", t, cd) * x_start + self._coef("post_coef2", t, cd) * x_t

    def p_mean_variance(
        self, model_output: Tensor, x: Tensor, t: Tensor, clip: bool = True
    ) -> dict[str, Tensor]:
        """Reverse-step Gaussian from the model's [eps, var_values] at respaced steps t."""
        cd = _compute_dtype(x.dtype)
        x, model_output = x.to(cd), model_output.to(cd)
        coef = {name: self._coef(name, t, cd) for name in POSTERIOR_TABLES}
        mean, log_variance, pred_xstart = posterior(model_output, x, coef, clip)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
        }

    def p_sample(
        self, model_fn: ModelFn, x: Tensor, t: Tensor, noise: Tensor, temperature: float = 1.0
    ) -> dict[str, Tensor]:
        """One ancestral step x_t -> x_{t-1} at respaced steps t (noise switched off where t == 0).
        Results come back in x's dtype."""
        out = self.p_mean_variance(model_fn(x, self.timestep_map.to(t.device)[t]), x, t)
        nonzero = (t != 0).to(out["mean"].dtype).unsqueeze(-1)
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise.to(
            out["mean"].dtype
        ) * temperature
        out["sample"] = sample
        return {k: out[k].to(x.dtype) for k in ("sample", "mean", "log_variance", "pred_xstart")}

    @torch.no_grad()
    def sample_loop(
        self, model_fn: ModelFn, x_T: Tensor, noise_fn: NoiseFn, temperature: float = 1.0
    ) -> Tensor:
        """Ancestral sampling k = K-1 .. 0. noise_fn(shape) is called once per step with k > 0; the
        last step is noiseless, so its draw (made and zeroed by the official) is skipped."""
        x = x_T
        for k in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            noise = noise_fn(tuple(x.shape)) if k > 0 else torch.zeros_like(x)
            x = self.p_sample(model_fn, x, t, noise, temperature)["sample"]
        return x

    def training_losses(
        self, model_fn: ModelFn, x_start: Tensor, t: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        """Per-row losses [N] (fp32, or fp64 for fp64 inputs): mse on eps plus the variational
        bound in bits, which trains var_values only (eps is detached inside it)."""
        x_t = self.q_sample(x_start, t, noise)
        cd = x_t.dtype
        out = model_fn(x_t.to(x_start.dtype), self.timestep_map.to(t.device)[t]).to(cd)
        eps, var_values = out.split(x_start.shape[1], dim=1)
        x_start, noise = x_start.to(cd), noise.to(cd)

        frozen = torch.cat([eps.detach(), var_values], dim=1)
        p = self.p_mean_variance(frozen, x_t, t, clip=False)
        true_mean = self.q_posterior_mean(x_start, x_t, t)
        true_logvar = self._coef("post_logvar", t, cd).expand_as(x_t)
        kl = _normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"]).mean(1)
        nll = -_discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"])
        # step 0 has no posterior to match: score the decoder likelihood instead
        vb = torch.where(t == 0, nll.mean(1), kl) / math.log(2.0)

        mse = ((noise - eps) ** 2).mean(1)
        return {"loss": mse + vb, "mse": mse, "vb": vb}


# ---------------------------------------------------------------------------------------------
# The head (official DiffLoss).


class ResidualDiffusionHead(nn.Module):
    """Per-token diffusion model for the continuous residual of the last scale, conditioned on z.
    Residuals are divided by `vae_scale` for training and multiplied back after sampling (HART's 0.6
    suits its image latents; another modality's latents may want another scale)."""

    def __init__(
        self,
        target_channels: int,
        z_channels: int,
        width: int,
        depth: int,
        num_sampling_steps: str | int = "8",
        vae_scale: float = 0.6,
    ):
        super().__init__()
        self.vae_scale = float(vae_scale)
        self.in_channels = target_channels
        self.net = MLPAdaLNDenoiser(target_channels, width, z_channels, depth)
        self.train_diffusion = GaussianDiffusion(None)
        self.gen_diffusion = GaussianDiffusion(str(num_sampling_steps))

    def set_sampling_steps(self, steps: int | str) -> None:
        """Respace the sampler (e.g. 8 as released, more for quality, fewer for speed)."""
        self.gen_diffusion = GaussianDiffusion(str(steps))

    def loss(
        self,
        target: Tensor,
        z: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        reduce: bool = True,
    ) -> Tensor:
        """Diffusion loss for residuals target [N, C] (raw, not yet /vae_scale) given z [N, Z].
        Draw order as the official: t ~ U{0..999} first, then the noise."""
        x_start = target / self.vae_scale
        if t is None:
            n_steps = self.train_diffusion.num_timesteps
            t = torch.randint(0, n_steps, (len(target),), generator=generator, device=target.device)
        if noise is None:
            noise = torch.randn(
                x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype
            )
        terms = self.train_diffusion.training_losses(
            lambda x, ts: self.net(x, ts, z), x_start, t, noise
        )
        return terms["loss"].mean() if reduce else terms["loss"]

    @torch.no_grad()
    def sample(
        self,
        z: Tensor,
        *,
        cfg: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise_fn: NoiseFn | None = None,
    ) -> Tensor:
        """Sample residuals [rows, C] for conditions z [rows, Z] (already scaled by vae_scale).

        With cfg != 1.0, z is [cond; uncond] and the official quirks hold: x_T is drawn for
        rows/2 and duplicated, and forward_with_cfg reads only x[:rows/2], so the first half is
        the guided sample. The second half is NOT a copy of it: its x drifts away through its
        own per-row step noise and unguided variance, and its last step re-reads its own x.
        HART throws that half away; we return it anyway so all rows of the reference match.
        cfg == 1.0 exactly means no guidance (plain forward on every row): the official treats
        guidance weight 1.0 as "off" although (1+s)c - s*u at s=1 is not the unguided eps.
        """
        if noise_fn is None:

            def noise_fn(shape: tuple[int, ...]) -> Tensor:
                return torch.randn(shape, generator=generator, device=z.device, dtype=z.dtype)

        rows = z.shape[0]
        if cfg != 1.0:
            half = noise_fn((rows // 2, self.in_channels))
            x_T = torch.cat([half, half])

            def model_fn(x: Tensor, t: Tensor) -> Tensor:
                return self.net.forward_with_cfg(x, t, z, cfg)
        else:
            x_T = noise_fn((rows, self.in_channels))

            def model_fn(x: Tensor, t: Tensor) -> Tensor:
                return self.net(x, t, z)

        x0 = self.gen_diffusion.sample_loop(model_fn, x_T, noise_fn, temperature)
        return x0 * self.vae_scale


__all__ = [
    "GaussianDiffusion",
    "MLPAdaLNDenoiser",
    "ResidualDiffusionHead",
    "cosine_betas",
    "space_timesteps",
    "timestep_embedding",
]
