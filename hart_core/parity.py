"""Replay reference HART calls and compare: `python -m hart_core.parity FIXTURE_DIR`.

FIXTURE_DIR holds `tokenizer/` and `llm/` in the released layout (loaded through this project's
`from_official` loaders) and `io/` with the recorded inputs and outputs (see its README.md). Discrete
outputs must match exactly; floats must satisfy max|ours - ref| <= 1e-4 * max(1, max|ref|).
Exit status 1 if any check fails.

`--path fast|compiled` replays the inference checks (and the diffusion sampler's) through the fast
generation path instead of the eager reference; `--dtype bf16` runs the generating transformer in bf16
(diffusion head fp32, as HARTPipeline does): the errors then measure how far that path or precision
strays from the fp32 reference, against the same fp32 tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .fast_generate import PATHS, FastPath, fast_path
from .generate import GenerationTrace, generate_latent, latent_decoder
from .tokenizer import HARTTokenizer
from .transformer import HARTTransformer

RTOL = 1e-4


@dataclass
class Check:
    name: str
    error: float  # max abs error, or number of mismatching entries for discrete tensors
    tolerance: float
    discrete: bool

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def __str__(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        if self.discrete:
            return f"{status} {self.name:<40} mismatches {int(self.error)}"
        return f"{status} {self.name:<40} max|err| {self.error:.3e}  (tol {self.tolerance:.1e})"


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor) -> Check:
    ours, ref = torch.as_tensor(ours).detach().cpu(), ref.cpu()
    if tuple(ours.shape) != tuple(ref.shape):
        return Check(f"{name} (shape {tuple(ours.shape)} vs {tuple(ref.shape)})", float("inf"), 0.0, True)
    if not ref.is_floating_point():
        return Check(name, float((ours.to(ref.dtype) != ref).sum()), 0.0, True)
    ref64, ours64 = ref.double(), ours.double()
    tol = RTOL * max(1.0, ref64.abs().max().item())
    return Check(name, (ours64 - ref64).abs().max().item(), tol, False)


class NoiseTape:
    """Hands out recorded Gaussian draws in order, cut to the rows the caller asks for (the
    reference draws for rows whose results it then discards)."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws, self.used = list(draws), 0

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise RuntimeError("noise tape exhausted: the sampler drew more often than the reference")
        draw = self.draws[self.used]
        self.used += 1
        if draw.shape[0] < shape[0] or tuple(draw.shape[1:]) != tuple(shape[1:]):
            raise RuntimeError(f"noise draw #{self.used - 1} is {tuple(draw.shape)}, sampler asked {shape}")
        return draw[: shape[0]]


def _numbered(io: dict, prefix: str) -> list[torch.Tensor]:
    keys = sorted(k for k in io if k.startswith(prefix) and k[len(prefix):].isdigit())
    return [io[k] for k in keys]


def tokenizer_checks(tokenizer: HARTTokenizer, io: dict) -> list[Check]:
    images = io["images"]
    out = []
    f = tokenizer.encode_latent(images)
    out.append(compare("tokenizer.f_BChw", f, io["f_BChw"]))
    tokens = tokenizer.encode(images)
    for k, idx in enumerate(tokens.indices):
        out.append(compare(f"tokenizer.idx_{k}", idx, io[f"idx_{k}"]))
    q = tokenizer.quantize
    fhat_d = q.decode_fhat(tokens, with_residual=False)
    fhat_h = q.decode_fhat(tokens, with_residual=True)
    fhat_var = q.fhat_var(tokens.indices)
    last_codes = q.embedding(tokens.indices[-1])
    out += [
        compare("tokenizer.fhat_discrete", fhat_d, io["fhat_discrete"]),
        compare("tokenizer.fhat_discrete_var", fhat_var, io["fhat_discrete_var"]),
        compare("tokenizer.fhat_hybrid", fhat_h, io["fhat_hybrid"]),
        compare("tokenizer.residual_target", tokens.residual, io["residual_target"]),
        compare("tokenizer.frest_wo_last_discrete", tokens.residual + last_codes, io["frest_wo_last_discrete"]),
        compare("tokenizer.img_discrete", tokenizer.decode_latent(fhat_d), io["img_discrete"]),
        compare("tokenizer.img_discrete_var", tokenizer.decode_latent(fhat_var), io["img_discrete_var"]),
        compare("tokenizer.img_hybrid", tokenizer.decode(tokens), io["img_hybrid"]),
        compare("tokenizer.var_input_BLCv", q.teacher_forcing_input(tokens.indices), io["var_input_BLCv"]),
    ]
    for k, fh in enumerate(q.fhat_var(tokens.indices, progressive=True)):
        out.append(compare(f"tokenizer.img_progressive_var_{k}", tokenizer.decode_latent(fh),
                           io[f"img_progressive_var_{k}"]))
    for mode, continuous in (("discrete", False), ("hybrid", True)):
        fhat, vq_loss, usages, _ = q(f, continuous=continuous)
        out += [
            compare(f"tokenizer.qforward_{mode}_fhat", fhat, io[f"qforward_{mode}_fhat"]),
            compare(f"tokenizer.qforward_{mode}_vq_loss", vq_loss.reshape(1), io[f"qforward_{mode}_vq_loss"]),
            compare(f"tokenizer.qforward_{mode}_usages", torch.tensor([usages]), io[f"qforward_{mode}_usages"]),
            compare(f"tokenizer.vae_forward_{mode}_out", tokenizer(images, continuous=continuous)["out"],
                    io[f"vae_forward_{mode}_out"]),
        ]
    return out


def teacher_forced_checks(model: HARTTransformer, tokenizer: HARTTokenizer, io: dict) -> list[Check]:
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, a: captured.__setitem__("x_in", a[0]))]
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(f"block{i}", o)))
    try:
        cond = model.condition(io["context"], io["context_mask"], io["context_position_ids"])
        logits, hidden = model(cond, io["x_BLCv_wo_first_l"], return_hidden=True)
    finally:
        for h in hooks:
            h.remove()
    out = [compare("transformer.tf_x_in", captured["x_in"], io["tf_x_in"])]
    out += [compare(f"transformer.tf_block{i}_out", captured[f"block{i}"], io[f"tf_block{i}_out"])
            for i in range(len(model.blocks))]
    out.append(compare("transformer.tf_logits", logits, io["tf_logits"]))
    n_last = model.config.patch_nums[-1] ** 2
    last_idx = logits[:, -n_last:].argmax(-1)
    out.append(compare("transformer.tf_last_idx_greedy", last_idx, io["tf_last_idx_greedy"]))
    codes = tokenizer.quantize.embedding(io["tf_last_idx_greedy"])  # the reference's choice
    out.append(compare("transformer.tf_diff_cond_z", model.diffusion_condition(hidden[:, -n_last:], codes),
                       io["tf_diff_cond_z"]))
    out.append(compare("transformer.tf_diff_target", io["last_layer_gt"] - codes, io["tf_diff_target"]))
    return out


def diffusion_checks(model: HARTTransformer, io: dict, fast: FastPath | None = None) -> list[Check]:
    head = model.diffusion_head
    net, gen = head.net, head.gen_diffusion
    out = [
        compare("diffusion.respaced_betas", gen.betas, io["diff_respaced_betas"]),
        compare("diffusion.timestep_map", gen.timestep_map, io["diff_timestep_map"]),
        compare("diffusion.net_out", net(io["diff_net_x"], io["diff_net_t"], io["diff_net_c"]), io["diff_net_out"]),
        compare("diffusion.cfg_out", net.forward_with_cfg(io["diff_cfg_x"], io["diff_cfg_t"], io["diff_cfg_c"],
                                                          float(io["diff_cfg_scale"])), io["diff_cfg_out"]),
    ]
    for mode in ("nocfg", "cfg"):
        for k in sorted({int(key.split("_t")[1].split("_")[0]) for key in io if key.startswith(f"psample_{mode}_t")}):
            p = f"psample_{mode}_t{k}_"
            c = io[p + "c"]
            if mode == "cfg":
                def model_fn(x, t, c=c):
                    return net.forward_with_cfg(x, t, c, 1.5)
            else:
                def model_fn(x, t, c=c):
                    return net(x, t, c)
            t = torch.full((c.shape[0],), k, dtype=torch.long, device=c.device)
            res = gen.p_sample(model_fn, io[p + "x"], t, io[p + "noise"])
            for field in ("mean", "log_variance", "pred_xstart", "sample"):
                out.append(compare(f"diffusion.{p}{field}", res[field], io[p + field]))
    z = io["diff_train_z"]
    losses = head.train_diffusion.training_losses(
        lambda x, ts: net(x, ts, z), io["diff_train_target"] / head.vae_scale, io["diff_train_t"],
        io["diff_train_noise"],
    )
    for field in ("mse", "vb", "loss"):
        out.append(compare(f"diffusion.train_{field}", losses[field], io[f"diff_train_{field}"]))
    sampler = head if fast is None else fast.diffusion
    sample = sampler.sample(io["diffsample_z"], cfg=float(io["diffsample_cfg"]),
                            noise_fn=NoiseTape(_numbered(io, "diffsample_noise_")))
    out.append(compare("diffusion.sample_out", sample, io["diffsample_out"]))
    return out


def inference_checks(model: HARTTransformer, tokenizer: HARTTokenizer, io: dict,
                     fast: FastPath | None = None) -> list[Check]:
    trace = GenerationTrace([], [], [])
    dtype = model.word_embed.weight.dtype
    f_hat = generate_latent(
        model, tokenizer, io["context"].to(dtype), io["context_mask"], io["context_position_ids"],
        cfg=float(io["infer_cfg"]), top_k=1, top_p=0.0, noise_fn=NoiseTape(_numbered(io, "noise_")), trace=trace,
        fast=fast,
    )
    out = []
    for k, (lg, idx) in enumerate(zip(trace.logits, trace.indices, strict=True)):
        out.append(compare(f"inference.logits_{k}", lg, io[f"infer_logits_{k}"]))
        out.append(compare(f"inference.idx_{k}", idx, io[f"infer_idx_{k}"]))
    out += [
        compare("inference.stage_cfg", torch.tensor(trace.guidance, dtype=torch.float64), io["infer_stage_cfg"]),
        compare("inference.diff_cond_z", trace.diffusion_condition, io["infer_diff_cond_z"]),
        compare("inference.diff_out", trace.diffusion_output, io["infer_diff_out"]),
        compare("inference.fhat", f_hat, io["infer_fhat"]),
        compare("inference.image", latent_decoder(tokenizer, fast)(f_hat).add(1).mul(0.5), io["infer_image"]),
    ]
    return out


def run_checks(fixture: str | Path, device: str | torch.device = "cpu", path: str = "eager",
               dtype: torch.dtype = torch.float32, decode_dtype: torch.dtype | None = None) -> list[Check]:
    """Every check of one fixture; `path` (eager, fast, compiled) and `dtype` (the generating
    transformer's) apply to the generation checks, `decode_dtype` to the fast paths' VAE decode."""
    fixture, device = Path(fixture), torch.device(device)
    for sub in ("tokenizer", "llm", "io"):
        if not (fixture / sub).is_dir():
            raise FileNotFoundError(f"{fixture}: missing {sub}/ (expected tokenizer/, llm/ and io/)")
    tokenizer = HARTTokenizer.from_official(fixture / "tokenizer").to(device)
    model = HARTTransformer.from_official(fixture / "llm", fixture / "tokenizer").to(device)
    generator_model = model
    if dtype != torch.float32:  # the teacher-forced and diffusion checks stay on the fp32 model
        generator_model = copy.deepcopy(model).to(dtype)
        generator_model.diffusion_head.float()
    fast = fast_path(generator_model, path, decode_dtype)
    tok_io = load_file(fixture / "io" / "tokenizer_io.safetensors", device=str(device))
    tr_io = load_file(fixture / "io" / "transformer_io.safetensors", device=str(device))
    with torch.no_grad(), _full_fp32(device):
        return (
            tokenizer_checks(tokenizer, tok_io)
            + teacher_forced_checks(model, tokenizer, tr_io)
            + diffusion_checks(model, tr_io, fast)
            + inference_checks(generator_model, tokenizer, tr_io, fast)
        )


@contextlib.contextmanager
def _full_fp32(device: torch.device):
    """On CUDA, turn TF32 off for matmuls and convolutions (cuDNN allows it by default): the
    tolerance is for fp32 arithmetic."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hart_core.parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixture", help="folder with tokenizer/, llm/ and io/")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--device", default="cpu",
                        help="run our side here (e.g. cuda); the references were recorded on CPU")
    parser.add_argument("--path", choices=PATHS, default="eager",
                        help="generation path of the inference checks (default: eager, the reference)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="transformer precision of the inference checks (bf16 shows its deviation)")
    parser.add_argument("--decode-dtype", choices=("fp32", "bf16"), default="fp32",
                        help="precision of the fast paths' VAE decode in the inference checks")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        parser.error(f"--device {args.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    try:
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        checks = run_checks(args.fixture, device, args.path, dtypes[args.dtype], dtypes[args.decode_dtype])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in checks:
        print(c)
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        Path(args.json).write_text(json.dumps([c.__dict__ for c in checks], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
