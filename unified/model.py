"""`UnifiedModel`: one backbone that writes images from captions and captions from images.

    model = UnifiedModel.build(text_tokenizer, {"image": image_codec}, backbone=qwen2_config_dict)
    losses = model(model.training_batch(examples, generator))          # text CE + per-scale CE + diffusion
    images = model.generate_image(["a red circle"], seed=0)            # [B, 3, H, W] in [0, 1]
    texts = model.caption(images)                                     # ["a red circle"]
    model.save_pretrained("my-model"); UnifiedModel.from_pretrained("my-model")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_core.checkpoint import CheckpointError, load_checked, read_config, read_weights, save_folder
from hart_core.quantizer import HybridTokens
from hart_core.sampling import guided_sample, sample_tokens
from modalities import ModalityCodec, TextTokenizer, load_codec

from .backbone import Backbone
from .heads import HeadConfig, build_head
from .sequence import IGNORE, Item, SequenceBatch, SequenceBuilder, Text, attention_mask, group_positions

PreviewFn = Callable[[int, int, torch.Tensor], None]


@dataclass
class UnifiedConfig:
    backbone: dict  # a transformers config as a dict (with model_type); weights live in model.safetensors
    heads: list[HeadConfig] = field(default_factory=lambda: [HeadConfig()])
    text_loss_weight: float = 1.0
    token_loss_weight: float = 1.0
    # "token": every code of an item counts the same (HART, VAR); "scale": every scale counts the same,
    # so the few coarse codes that fix layout and colour are not outweighed by the many fine ones
    token_loss_weighting: str = "token"
    diffusion_loss_weight: float = 1.0
    caption_dropout: float = 0.1  # classifier-free guidance: train text-to-image without the caption
    default_cfg: float = 3.0  # guidance scale generate_image uses when none is given (a model's own best)
    # top-k generate_image uses when none is given: None follows HART's released schedule (600, then 300);
    # 1 is greedy (on the default model it helps training-split prompts but draws only seen combinations)
    default_top_k: int | None = None
    diffusion_token: str = "sampled"  # residual target relative to the sampled or the ground-truth code
    max_length: int = 2048

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["heads"] = [h.to_dict() for h in self.heads]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UnifiedConfig:
        d = dict(d)
        d.pop("model_type", None)
        d["heads"] = [HeadConfig(**h) for h in d.get("heads", [])]
        return cls(**d)


@dataclass
class Example:
    """One training example. task: "t2i" (caption -> image), "caption" (image -> caption) or "qa"."""

    task: str
    image: HybridTokens  # one row
    text: str  # caption, or the answer for "qa"
    question: str | None = None


def cat_tokens(parts: list[HybridTokens]) -> HybridTokens:
    return HybridTokens(
        indices=[torch.cat([p.indices[k] for p in parts]) for k in range(len(parts[0].indices))],
        residual=None if parts[0].residual is None else torch.cat([p.residual for p in parts]),
        grids=parts[0].grids,
    )


def split_tokens(tokens: HybridTokens) -> list[HybridTokens]:
    return [
        HybridTokens([idx[i : i + 1] for idx in tokens.indices],
                     None if tokens.residual is None else tokens.residual[i : i + 1], tokens.grids)
        for i in range(tokens.indices[0].shape[0])
    ]


class UnifiedModel(nn.Module):
    MODEL_TYPE = "hart_unified"

    def __init__(self, config: UnifiedConfig, text_tokenizer: TextTokenizer, codecs: dict[str, ModalityCodec],
                 backbone: Backbone | None = None):
        super().__init__()
        self.config = config
        self.text = text_tokenizer
        self.backbone = backbone if backbone is not None else Backbone.from_config(config.backbone)
        if self.backbone.embed_tokens.num_embeddings < text_tokenizer.vocab_size:
            self.backbone.resize_vocab(text_tokenizer.vocab_size)
        self.config.backbone = self.backbone.config.to_dict()
        if config.token_loss_weighting not in ("token", "scale"):
            raise ValueError(f"token_loss_weighting must be 'token' or 'scale', not {config.token_loss_weighting!r}")
        missing = {h.modality for h in config.heads} - set(codecs)
        if missing:
            raise ValueError(f"heads configured for {sorted(missing)} but no codec given for them")
        # Codecs are frozen tools, not part of the trained module: kept out of the state dict (they
        # are saved in their own folders) and out of ZeRO's partitioning, but moved with the model.
        self.codecs = dict(codecs)
        for codec in self.codecs.values():
            codec.requires_grad_(False)
        hidden = self.backbone.hidden_size
        self.heads = nn.ModuleDict({
            h.modality: build_head(h, hidden=hidden, latent_dim=codecs[h.modality].latent_dim,
                                   codebook_size=codecs[h.modality].codebook_size,
                                   num_scales=codecs[h.modality].num_scales)
            for h in config.heads
        })
        self.builder = SequenceBuilder({m: c.grids for m, c in codecs.items()}, self.special("<pad>"))

    @classmethod
    def build(cls, text_tokenizer: TextTokenizer, codecs: dict[str, ModalityCodec], backbone: dict | str | os.PathLike,
              heads: list[HeadConfig] | None = None, **config_kwargs) -> UnifiedModel:
        """backbone: a transformers config dict (random init) or a local pretrained LLM folder."""
        if isinstance(backbone, dict):
            bb = Backbone.from_config(backbone)
        else:
            bb = Backbone.from_pretrained(backbone)
        heads = heads or [HeadConfig(modality=m) for m in codecs]
        config = UnifiedConfig(backbone=bb.config.to_dict(), heads=heads, **config_kwargs)
        return cls(config, text_tokenizer, codecs, bb)

    def special(self, name: str) -> int:
        return self.text.token_id(name)

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    def _apply(self, fn, *args, **kwargs):
        # follow the model's device, but keep the codecs in fp32 (their latent arithmetic is cheap
        # and precision-sensitive)
        device = fn(torch.zeros(())).device
        for codec in self.codecs.values():
            codec.to(device)
        return super()._apply(fn, *args, **kwargs)

    # -- sequences -----------------------------------------------------------------------------

    def encode_text(self, text: str, what: str = "text") -> list[int]:
        if not text or not text.strip():
            raise ValueError(f"empty {what}")
        return self.text.encode(text)

    def row(self, task: str, tokens: HybridTokens | None, text: str | None = None, question: str | None = None,
            drop_caption: bool = False, modality: str = "image") -> list[Text | Item]:
        """The template of one task. With `text=None` the row stops where generation begins."""
        bos, eos, boi, eoi = (self.special(s) for s in ("<bos>", "<eos>", "<boi>", "<eoi>"))
        if task == "t2i":
            caption = [] if drop_caption else self.encode_text(text, "prompt")
            row = [Text([bos, *caption, boi])]
            if tokens is not None:
                row += [Item(modality, tokens, loss=True), Text([eoi, eos])]
            return row
        if task in ("caption", "qa"):
            row = [Text([bos, boi]), Item(modality, tokens, full=True)]
            if task == "qa":
                row.append(Text([eoi, *self.encode_text(question, "question"), self.special("<sep>")]))
            else:
                row.append(Text([eoi]))
            if text is not None:
                row.append(Text([*self.encode_text(text, "caption"), eos], loss=True))
            return row
        raise ValueError(f"unknown task {task!r} (t2i, caption, qa)")

    def training_batch(self, examples: list[Example], generator: torch.Generator | None = None) -> SequenceBatch:
        """Rows for a training step; t2i captions are dropped with probability `caption_dropout`."""
        drops = self._caption_drops(len(examples), generator)
        return self._training_batch(examples, drops)

    def training_batches(self, examples: list[Example], generator: torch.Generator | None = None
                         ) -> list[SequenceBatch]:
        """`training_batch` split by what the rows write: t2i rows (an image), then caption / QA rows (text),
        leaving out an empty kind. Each kind is padded to its own length, and the sum of the batches'
        `forward` losses is `training_batch`'s loss (same random draws): the text loss is a mean over text
        targets, which only caption / QA rows have, the code and residual losses means over written items,
        which only t2i rows have."""
        drops = self._caption_drops(len(examples), generator)
        kinds = ([i for i, e in enumerate(examples) if e.task == "t2i"],
                 [i for i, e in enumerate(examples) if e.task != "t2i"])
        return [self._training_batch([examples[i] for i in kind], drops[kind]) for kind in kinds if kind]

    def _caption_drops(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        # drawn on the generator's device (a CUDA generator cannot fill a CPU tensor), decided on the CPU
        device = generator.device if generator is not None else None
        return (torch.rand(n, generator=generator, device=device) < self.config.caption_dropout).cpu()

    def _training_batch(self, examples: list[Example], drops: torch.Tensor) -> SequenceBatch:
        rows = [self.row(e.task, e.image, e.text, e.question, drop_caption=bool(d) and e.task == "t2i")
                for e, d in zip(examples, drops, strict=True)]
        batch = self.builder.build(rows, pad_side="right")
        if batch.text_ids.shape[1] > self.config.max_length:
            raise ValueError(f"sequence of {batch.text_ids.shape[1]} positions exceeds max_length "
                             f"{self.config.max_length}")
        return batch.to(self.device)

    # Every forward pass calls the same modules in the same order, whatever the batch holds (a
    # micro-batch without captions still runs the text head, on zero rows). Data-parallel training
    # needs it: ZeRO-2 reduces every parameter's gradient on every rank, and ZeRO-3 gathers each
    # module's parameters collectively when it runs, so the ranks' call sequences must agree.

    def embed(self, batch: SequenceBatch) -> torch.Tensor:
        """Input embeddings [B, L, D]: text from the LM's table, items through their heads."""
        x = self.backbone.embed_tokens(batch.text_ids).clone()
        for modality in self.heads:
            items = [it for it in batch.items if it.modality == modality]
            tokens = cat_tokens([it.segment.tokens for it in items]).to(self.device) if items else None
            inputs = self.item_inputs(modality, tokens)
            for i, it in enumerate(items):
                # a read-only item is its last group alone (the complete latent)
                part = inputs[i, : it.length] if it.segment.scale_groups else inputs[i, -it.length :]
                x[it.row, it.start : it.start + it.length] = part.to(x.dtype)
        return x

    def item_inputs(self, modality: str, tokens: HybridTokens | None) -> torch.Tensor:
        """[N, sum of group sizes + G, D] for N complete items (teacher forcing), the last group being
        the complete latent; tokens=None gives N = 0."""
        codec, head = self.codecs[modality], self.heads[modality]
        n = codec.tokens_per_scale
        if tokens is None:
            N = 0
            later = [codec.codebook.new_zeros(0, nk, codec.latent_dim) for nk in n[1:]]
            latent = codec.codebook.new_zeros(0, n[-1], codec.latent_dim)
        else:
            N = tokens.indices[0].shape[0]
            later = codec.teacher_forcing_input(tokens.indices).split(list(n[1:]), dim=1)
            latent = codec.latent_to_tokens(codec.fhat(tokens, with_residual=tokens.residual is not None))
        groups = [head.embed(0, None, N, n[0])] + [head.embed(k + 1, t, N, n[k + 1]) for k, t in enumerate(later)]
        groups.append(head.embed(codec.num_scales, latent, N, latent.shape[1]))
        return torch.cat(groups, dim=1)

    # -- training ------------------------------------------------------------------------------

    def forward(self, batch: SequenceBatch, generator: torch.Generator | None = None) -> dict:
        c = self.config
        hidden = self.backbone(self.embed(batch), batch.positions, batch.attention_mask())
        metrics: dict[str, torch.Tensor] = {}
        text_rows = batch.text_targets != IGNORE
        logits = self.backbone.lm_head(hidden[text_rows]).float()  # possibly zero rows
        if text_rows.any():
            target = batch.text_targets[text_rows]
            metrics["text_ce"] = F.cross_entropy(logits, target)
            metrics["text_acc"] = (logits.argmax(-1) == target).float().mean().detach()
            text_ce = metrics["text_ce"]
        else:
            text_ce = logits.sum() * 0.0
        token_ce = diffusion = hidden.new_zeros((), dtype=torch.float32)
        for modality, head in self.heads.items():
            items = [it for it in batch.items if it.modality == modality and it.segment.loss]
            res = self._item_losses(modality, head, items, hidden, generator)
            token_ce, diffusion = token_ce + res.pop("ce"), diffusion + res.pop("diffusion")
            metrics.update({f"{modality}_{k}": v for k, v in res.items()})
        metrics["token_ce"], metrics["diffusion"] = token_ce, diffusion
        metrics["loss"] = (c.text_loss_weight * text_ce + c.token_loss_weight * token_ce
                           + c.diffusion_loss_weight * diffusion)
        return metrics

    def _item_losses(self, modality, head, items, hidden, generator) -> dict:
        """Per-scale CE and the residual diffusion loss of the items to generate. Without such items
        the same modules run on one all-zero stand-in item and the result is multiplied by zero."""
        codec = self.codecs[modality]
        n, C = codec.tokens_per_scale, codec.latent_dim
        L = sum(n)
        present = bool(items)
        if present:
            h = torch.stack([hidden[it.row, it.start : it.start + L] for it in items])  # [N, L, D]
            tokens = cat_tokens([it.segment.tokens for it in items]).to(hidden.device)
            target = torch.cat(tokens.indices, dim=1)
            residual = tokens.residual
        else:
            h = hidden.new_zeros(1, L, hidden.shape[-1])
            target = torch.zeros(1, L, dtype=torch.long, device=hidden.device)
            residual = None
        logits = head.logits(h, codec.codebook)
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [N, L]
        if self.config.token_loss_weighting == "scale":
            ce = torch.stack([part.mean() for part in ce.split(list(n), dim=1)])
        out = {"ce": ce.mean() * float(present)}
        if present:
            with torch.no_grad():
                hits = (logits.argmax(-1) == target).float()
                start = 0
                for k, nk in enumerate(n):
                    out[f"acc_scale{k}"] = hits[:, start : start + nk].mean()
                    start += nk
        book = codec.codebook
        gt_last = target[:, -n[-1]:]
        train_residual = residual is not None
        if train_residual and self.config.diffusion_token == "sampled":
            probs = logits[:, -n[-1]:].detach().softmax(-1).flatten(0, 1)
            idx = torch.multinomial(probs, 1, generator=generator).view_as(gt_last)
        else:
            idx = gt_last
        code = book[idx]
        z = head.diffusion_condition(h[:, -n[-1]:], code).flatten(0, 1)
        if train_residual:
            target_res = (residual + book[gt_last] - code).flatten(0, 1).to(z.dtype)
            reps = head.config.diffusion_batch_mul
            out["diffusion"] = head.diffusion.loss(target_res.repeat(reps, 1), z.repeat(reps, 1), generator=generator)
        else:  # no residual to learn: run the head without random draws, weight zero
            zeros_t = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
            zeros = torch.zeros(z.shape[0], C, device=z.device, dtype=z.dtype)
            out["diffusion"] = head.diffusion.loss(zeros, z, t=zeros_t, noise=zeros) * 0.0
        return out

    # -- generation: images --------------------------------------------------------------------

    @torch.no_grad()
    def generate_image(
        self,
        prompts: list[str],
        *,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 0.0,
        seed: int | None = 0,
        modality: str = "image",
        use_residual: bool = True,
        callback: PreviewFn | None = None,
        return_tokens: bool = False,
        use_cache: bool = True,
        prefix: list[torch.Tensor] | None = None,
    ):
        """Images [B, ...] in [0, 1] (the codec's decode) for B prompts, scale by scale with a KV cache
        and a batched unconditional stream (same item after an empty prompt) for CFG. cfg=None uses
        the model's `default_cfg`, top_k=None its `default_top_k` (0 = no top-k filtering).
        prefix: codes for the first scales (Long [B, tokens of scale k] each, e.g. `codec.encode(x).indices[:S]`)
        that the model continues from instead of drawing its own: a coarse layout to complete, or the truth
        when measuring which scales a model gets wrong. A prefix of every scale still draws the residual."""
        cfg = self.config.default_cfg if cfg is None else cfg
        top_k = self.config.default_top_k if top_k is None else top_k
        if isinstance(prompts, str):
            prompts = [prompts]
        codec, head = self.codecs[modality], self.heads[modality]
        gen = self._generator(seed)
        B, K = len(prompts), codec.num_scales
        prefix = list(prefix or [])
        if len(prefix) > K:
            raise ValueError(f"prefix has {len(prefix)} scales but the {modality} codec has {K}")
        for k, p in enumerate(prefix):
            if tuple(p.shape) != (B, codec.tokens_per_scale[k]):
                raise ValueError(f"prefix[{k}] has shape {tuple(p.shape)}, expected {(B, codec.tokens_per_scale[k])}")
        rows = [self.row("t2i", None, p, modality=modality) for p in prompts]
        rows += [self.row("t2i", None, drop_caption=True, modality=modality) for _ in prompts]
        batch = self.builder.build(rows, pad_side="left").to(self.device)
        state = _Decoder(self, batch, reserve=sum(codec.tokens_per_scale), use_cache=use_cache)
        f_hat = codec.empty_latent(B, self.device)
        indices = []
        x = None
        for si in range(K):
            n = codec.tokens_per_scale[si]
            inputs = head.embed(si, x, 2 * B, n)
            pos = torch.stack([group_positions(codec.grids[si], codec.grids[-1], float(p))
                               for p in state.next_position.tolist()]).to(self.device)
            hidden = state.step(inputs, pos, same_block=True)
            idx, _, _, t = guided_sample(head.logits(hidden, codec.codebook), si, K, cfg, top_k, top_p, gen)
            if si < len(prefix):  # drawn anyway, so the random stream of later scales does not shift
                idx = prefix[si].to(idx.device, torch.long)
            indices.append(idx)
            codes = codec.codebook[idx].float()
            if si == K - 1 and use_residual:
                hard = torch.cat((codec.codebook[idx], codec.codebook[idx]))
                z = head.diffusion_condition(hidden, hard).flatten(0, 1)
                residual = head.diffusion.sample(z, cfg=t, generator=gen)[: B * n].view(B, n, -1)
                codes = codes + residual
            f_hat, x = codec.next_scale_input(si, f_hat, codec.codes_to_grid(codes, si))
            x = x.repeat(2, 1, 1) if si < K - 1 else None
            if callback is not None:
                callback(si, K, codec.decode_latent(f_hat))
        images = codec.decode_latent(f_hat)
        if return_tokens:
            return images, indices
        return images

    # -- generation: text ----------------------------------------------------------------------

    @torch.no_grad()
    def caption(self, images, *, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 0.0, seed: int | None = 0, modality: str = "image", use_cache: bool = True
                ) -> list[str]:
        """Captions for a batch of images (anything the codec's `encode` accepts, or HybridTokens)."""
        tokens = self._tokens(images, modality)
        rows = [self.row("caption", t, modality=modality) for t in split_tokens(tokens)]
        return self._generate_text(rows, max_new_tokens, temperature, top_k, top_p, seed, use_cache)

    @torch.no_grad()
    def answer(self, images, questions: list[str], *, max_new_tokens: int = 16, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 0.0, seed: int | None = 0, modality: str = "image",
               use_cache: bool = True) -> list[str]:
        tokens = self._tokens(images, modality)
        if isinstance(questions, str):
            questions = [questions]
        parts = split_tokens(tokens)
        if len(questions) != len(parts):
            raise ValueError(f"{len(parts)} images but {len(questions)} questions")
        rows = [self.row("qa", t, question=q, modality=modality) for t, q in zip(parts, questions, strict=True)]
        return self._generate_text(rows, max_new_tokens, temperature, top_k, top_p, seed, use_cache)

    def _tokens(self, images, modality: str) -> HybridTokens:
        if isinstance(images, HybridTokens):
            return images.to(self.device)
        return self.codecs[modality].encode(images).to(self.device)

    def _generate_text(self, rows, max_new_tokens, temperature, top_k, top_p, seed, use_cache) -> list[str]:
        gen = self._generator(seed)
        batch = self.builder.build(rows, pad_side="left").to(self.device)
        state = _Decoder(self, batch, reserve=max_new_tokens, use_cache=use_cache)
        B, eos = len(rows), self.special("<eos>")
        hidden = state.hidden[:, -1:]
        out = torch.full((B, 0), eos, dtype=torch.long, device=self.device)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            logits = self.backbone.lm_head(hidden).float()
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                nxt, _ = sample_tokens(logits / temperature, top_k, top_p, gen)
            nxt = torch.where(done[:, None], torch.full_like(nxt, eos), nxt)
            out = torch.cat((out, nxt), dim=1)
            done |= nxt[:, 0] == eos
            if done.all() or step == max_new_tokens - 1:
                break
            pos = state.next_position[:, None, None].expand(B, 1, 3).to(self.device)
            hidden = state.step(self.backbone.embed_tokens(nxt), pos, same_block=False)
        texts = []
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            texts.append(self.text.decode(row))
        return texts

    def _generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        return gen

    # -- persistence ---------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """config.json + model.safetensors (backbone and heads), text_tokenizer/, codecs/<name>/."""
        folder = Path(folder)
        save_folder(folder, {"model_type": self.MODEL_TYPE, **self.config.to_dict()}, self.state_dict())
        self.text.save_pretrained(folder / "text_tokenizer")
        for name, codec in self.codecs.items():
            codec.save_pretrained(folder / "codecs" / name)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> UnifiedModel:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist")
        cfg = read_config(folder)
        if cfg.get("model_type") != cls.MODEL_TYPE:
            raise CheckpointError(f"{folder}: model_type {cfg.get('model_type')!r} is not {cls.MODEL_TYPE!r}")
        config = UnifiedConfig.from_dict(cfg)
        for sub in ["text_tokenizer"] + [f"codecs/{h.modality}" for h in config.heads]:
            if not (folder / sub).is_dir():
                raise CheckpointError(f"{folder}: missing {sub}/ (a model folder holds config.json, "
                                      "model.safetensors, text_tokenizer/ and codecs/<modality>/)")
        text = TextTokenizer.from_pretrained(folder / "text_tokenizer")
        codecs = {h.modality: load_codec(folder / "codecs" / h.modality) for h in config.heads}
        model = cls(config, text, codecs)
        load_checked(model, read_weights(folder, prefer_ema=False), str(folder))
        return model.eval()



class _Decoder:
    """Incremental decoding over a left-padded prompt batch, with a KV cache or, for checking it,
    without one (every step reruns the whole sequence)."""

    def __init__(self, model: UnifiedModel, batch: SequenceBatch, reserve: int, use_cache: bool = True):
        length = batch.text_ids.shape[1]
        if length + reserve > model.config.max_length:
            raise ValueError(f"the prompt takes {length} positions and generation needs {reserve} more, beyond "
                             f"max_length {model.config.max_length}: shorten the prompt")
        self.model = model
        self.block, self.valid = batch.block, batch.valid
        self.next_position = batch.next_position.clone()
        self.next_block = batch.next_block.clone()
        self.embeds, self.positions = model.embed(batch), batch.positions
        self.cache = model.backbone.new_cache() if use_cache else None
        self.hidden = model.backbone(self.embeds, self.positions, batch.attention_mask(), self.cache)

    def step(self, embeds: torch.Tensor, positions: torch.Tensor, same_block: bool) -> torch.Tensor:
        """Feed new positions: one block for all of them (a scale) or one block each (text tokens)."""
        B, n = embeds.shape[:2]
        device = embeds.device
        offsets = torch.zeros(n, dtype=torch.long, device=device) if same_block else torch.arange(n, device=device)
        q_block = self.next_block[:, None] + offsets[None]
        q_valid = torch.ones(B, n, dtype=torch.bool, device=device)
        self.block = torch.cat((self.block, q_block), dim=1)
        self.valid = torch.cat((self.valid, q_valid), dim=1)
        self.next_block = self.next_block + (1 if same_block else n)
        if not same_block:  # text advances one position per token; an item's groups share its origin
            self.next_position = self.next_position + n
        if self.cache is not None:
            mask = attention_mask(q_block, q_valid, self.block, self.valid)
            return self.model.backbone(embeds, positions, mask, self.cache)
        self.embeds = torch.cat((self.embeds, embeds), dim=1)
        self.positions = torch.cat((self.positions, positions), dim=1)
        mask = attention_mask(self.block, self.valid, self.block, self.valid)
        return self.model.backbone(self.embeds, self.positions, mask)[:, -n:]
