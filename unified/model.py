"""`UnifiedModel`: one backbone that reads and writes text and items of any registered modality.

    model = UnifiedModel.build(text_tokenizer, {"image": image_codec}, backbone=qwen2_config_dict)
    losses = model(model.training_batch(examples, generator))          # text CE + per-scale CE + diffusion
    images = model.generate_image(["a red circle"], seed=0)            # [B, 3, H, W] in [0, 1]
    texts = model.caption(images)                                     # ["a red circle"]
    clips = model.generate(["a ball"], modality="video", segments=8)   # any item after any prompt
    model.save_pretrained("my-model"); UnifiedModel.from_pretrained("my-model")

This file holds the module (embeddings in, losses out) and its persistence; the layout rule is
pattern.py, the templates templates.py, generation generation.py, the item losses losses.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_core.checkpoint import (
    CheckpointError,
    build_config,
    check_finite,
    check_model_type,
    load_checked,
    read_weights,
    save_folder,
)
from hart_core.quantizer import HybridTokens
from modalities import ModalityCodec, TextTokenizer, load_codec

from .backbone import Backbone
from .config import Example, UnifiedConfig
from .generation import GenerationMixin
from .heads import HeadConfig, build_head
from .losses import item_losses
from .sequence import IGNORE, Item, Part, SequenceBatch, SequenceBuilder
from .templates import Specials, get_template


class UnifiedModel(GenerationMixin, nn.Module):
    MODEL_TYPE = "hart_unified"

    def __init__(self, config: UnifiedConfig, text_tokenizer: TextTokenizer, codecs: dict[str, ModalityCodec],
                 backbone: Backbone | None = None):
        super().__init__()
        self.config = config
        self.text = text_tokenizer
        # "dynamic": the KV cache grows step by step; "static": allocated once per generation (for
        # torch.compile / CUDA graphs; on a CPU the masked-out slots cost attention work)
        self.cache_implementation = "dynamic"
        self.backbone = backbone if backbone is not None else Backbone.from_config(config.backbone)
        if self.backbone.embed_tokens.num_embeddings < text_tokenizer.vocab_size:
            self.backbone.resize_vocab(text_tokenizer.vocab_size)
        self.config.backbone = self.backbone.config.to_dict()
        missing = {h.modality for h in config.heads} - set(codecs)
        if missing:
            raise ValueError(f"heads configured for {sorted(missing)} but no codec given for them")
        self._specials = {h.modality: self._item_specials(h) for h in config.heads}
        # Codecs are frozen tools, not part of the trained module: kept out of the state dict (they
        # are saved in their own folders) and out of ZeRO's partitioning, but moved with the model.
        self.codecs = dict(codecs)
        for codec in self.codecs.values():
            codec.requires_grad_(False)
        hidden = self.backbone.hidden_size
        self.heads = nn.ModuleDict({
            h.modality: build_head(h, hidden=hidden, latent_dim=codecs[h.modality].latent_dim,
                                   codebook_size=codecs[h.modality].codebook_size,
                                   num_scales=codecs[h.modality].num_scales, grid=codecs[h.modality].grids[-1])
            for h in config.heads
        })
        self.builder = SequenceBuilder({m: c.grids for m, c in codecs.items()}, self.special("<pad>"))

    @classmethod
    def build(cls, text_tokenizer: TextTokenizer, codecs: dict[str, ModalityCodec], backbone: dict | str | os.PathLike,
              heads: list[HeadConfig] | None = None, **config_kwargs) -> UnifiedModel:
        """backbone: a transformers config dict (random init) or a local pretrained LLM folder."""
        bb = Backbone.from_config(backbone) if isinstance(backbone, dict) else Backbone.from_pretrained(backbone)
        heads = heads or [HeadConfig(modality=m) for m in codecs]
        config = UnifiedConfig(backbone=bb.config.to_dict(), heads=heads, **config_kwargs)
        return cls(config, text_tokenizer, codecs, bb)

    def special(self, name: str) -> int:
        return self.text.token_id(name)

    def _item_specials(self, head: HeadConfig) -> Specials:
        names = ("<bos>", "<eos>", "<sep>", head.begin, head.end)
        unknown = [n for n in names if n not in self.text.specials]
        if unknown:
            raise ValueError(f"the text tokenizer lacks the specials {unknown} of the {head.modality!r} head; "
                             "train it with modalities.specials_for([...modalities]) or add_specials")
        return Specials(*(self.special(n) for n in names))

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

    # -- rows ----------------------------------------------------------------------------------

    def encode_text(self, text: str, what: str = "text") -> list[int]:
        if not text or not text.strip():
            raise ValueError(f"empty {what}")
        return self.text.encode(text)

    def row(self, task: str, tokens: HybridTokens | None, text: str | None = None, question: str | None = None,
            drop_text: bool = False, modality: str = "image") -> list[Part]:
        """One example laid out by its task's template. tokens: the item's segments as rows. With
        `text=None` a row that writes text stops where generation begins; a row that writes an item
        and has no tokens stops before the item."""
        template = get_template(task)
        if modality not in self._specials:
            raise ValueError(f"this model has no {modality!r} head (it has: {sorted(self._specials)})")
        specials = self._specials[modality]
        if template.writes == "item":
            prompt = [] if drop_text or not text else self.encode_text(text, "prompt")
            item = None if tokens is None else Item(modality, tokens, loss=True)
            return template.layout(specials, item, prompt, None, None)
        if tokens is None:
            raise ValueError(f"the {template.name} task needs the item's tokens")
        target = None if text is None else self.encode_text(text, "target text")
        asked = None if question is None else self.encode_text(question, "question")
        return template.layout(specials, Item(modality, tokens, read=True), [], target, asked)

    def training_batch(self, examples: list[Example], generator: torch.Generator | None = None) -> SequenceBatch:
        """Rows for a training step; the prompts of item-writing rows are dropped with probability
        `caption_dropout` (classifier-free guidance)."""
        return self._training_batch(examples, self._caption_drops(len(examples), generator), generator)

    def training_batches(self, examples: list[Example], generator: torch.Generator | None = None
                         ) -> list[SequenceBatch]:
        """`training_batch` split by what the rows write: items, then text, leaving out an empty kind.
        Each kind is padded to its own length, and the sum of the batches' `forward` losses is
        `training_batch`'s loss (same random draws): the text loss is a mean over text targets, which
        only text-writing rows have, the code and residual losses means over written items."""
        drops = self._caption_drops(len(examples), generator)
        writes_item = [get_template(e.task).writes == "item" for e in examples]
        kinds = ([i for i, w in enumerate(writes_item) if w], [i for i, w in enumerate(writes_item) if not w])
        return [self._training_batch([examples[i] for i in kind], drops[kind], generator) for kind in kinds if kind]

    def _caption_drops(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        # drawn on the generator's device (a CUDA generator cannot fill a CPU tensor), decided on the CPU
        device = generator.device if generator is not None else None
        return (torch.rand(n, generator=generator, device=device) < self.config.caption_dropout).cpu()

    def _training_batch(self, examples: list[Example], drops: torch.Tensor,
                        generator: torch.Generator | None = None) -> SequenceBatch:
        rows = [self.row(e.task, e.tokens, e.text, e.question, drop_text=bool(d), modality=e.modality)
                for e, d in zip(examples, drops, strict=True)]
        if self.config.self_correction > 0:
            self._make_errors([p for row in rows for p in row if isinstance(p, Item) and p.loss], generator)
        batch = self.builder.build(rows, pad_side="right")
        if batch.text_ids.shape[1] > self.config.max_length:
            raise ValueError(f"sequence of {batch.text_ids.shape[1]} positions exceeds max_length "
                             f"{self.config.max_length}")
        return batch.to(self.device)

    @torch.no_grad()
    def _make_errors(self, items: list[Item], generator: torch.Generator | None) -> None:
        """Self-correction: re-encode written items' latents with errors made on the way (see
        `MultiScaleResidualQuantizer.encode_correcting`): their tokens become the correcting targets,
        their inputs the erroneous codes. Without a residual the discrete latent is re-encoded. Items of
        one modality (and residual or not) are re-encoded as one batch, in the order given."""
        groups: dict[tuple[str, bool], list[Item]] = {}
        for item in items:
            groups.setdefault((item.modality, item.tokens.residual is not None), []).append(item)
        for (modality, with_residual), group in groups.items():
            codec = self.codecs[modality]
            tokens = HybridTokens.concat([it.tokens for it in group]).to(self.device)
            f = codec.fhat(tokens, with_residual=with_residual)
            labels, inputs = codec.quantizer.encode_correcting(f, self.config.self_correction, generator,
                                                               codec.grids)
            if not with_residual:
                labels = HybridTokens(labels.indices, None, labels.grids)
            sizes = [it.tokens.batch_size for it in group]
            read = HybridTokens(inputs, None, labels.grids).split(sizes)
            for it, part, codes in zip(group, labels.split(sizes), read, strict=True):
                it.tokens, it.inputs = part, codes.indices

    # -- embeddings and losses -----------------------------------------------------------------
    # Every forward pass calls the same modules in the same order, whatever the batch holds (a
    # micro-batch without captions still runs the text head, on zero rows). Data-parallel training
    # needs it: ZeRO-2 reduces every parameter's gradient on every rank, and ZeRO-3 gathers each
    # module's parameters collectively when it runs, so the ranks' call sequences must agree.

    def embed(self, batch: SequenceBatch) -> torch.Tensor:
        """Input embeddings [B, L, D]: text from the LM's table, items group by group from their heads."""
        x = self.backbone.embed_tokens(batch.text_ids).clone()
        for modality in self.heads:
            layouts = [it for it in batch.items if it.modality == modality]
            tokens = HybridTokens.concat([it.item.tokens for it in layouts]).to(self.device) if layouts else None
            read = None
            if any(it.item.inputs is not None for it in layouts):  # self-correction: the erroneous codes
                per_item = [it.item.inputs or it.item.tokens.indices for it in layouts]
                read = [torch.cat([codes[k].to(self.device) for codes in per_item]) for k in range(len(per_item[0]))]
            inputs = self.segment_inputs(modality, tokens, read)
            first = 0  # the item's first segment row in `inputs`
            for it in layouts:
                groups = [inputs[first + g.segment, g.ladder_offset : g.ladder_offset + g.size]
                          for g in it.pattern.groups]
                x[it.row, it.start : it.start + it.length] = torch.cat(groups).to(x.dtype)
                first += it.pattern.segments
        return x

    def segment_inputs(self, modality: str, tokens: HybridTokens | None,
                       read: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Inputs of every group a segment can have, [R, sum of scale sizes + G, D] for R segments:
        the K scale groups (teacher forcing, from the codes `read` if given, else tokens.indices), then
        the complete latent. tokens=None gives R = 0."""
        codec, head = self.codecs[modality], self.heads[modality]
        n = codec.tokens_per_scale
        if tokens is None:
            R = 0
            later = [codec.codebook.new_zeros(0, nk, codec.latent_dim) for nk in n[1:]]
            latent = codec.codebook.new_zeros(0, n[-1], codec.latent_dim)
        else:
            R = tokens.batch_size
            later = codec.teacher_forcing_input(tokens.indices if read is None else read).split(list(n[1:]), dim=1)
            as_read = tokens if read is None else HybridTokens(read, tokens.residual, tokens.grids)  # what sums to f
            latent = codec.latent_to_tokens(codec.fhat(as_read, with_residual=tokens.residual is not None))
        groups = [head.embed(0, None, R, n[0])] + [head.embed(k + 1, t, R, n[k + 1]) for k, t in enumerate(later)]
        groups.append(head.embed(codec.num_scales, latent, R, latent.shape[1]))
        return torch.cat(groups, dim=1)

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
        for modality in self.heads:
            layouts = [it for it in batch.items if it.modality == modality and it.item.loss]
            res = item_losses(self, modality, layouts, hidden, generator)
            token_ce, diffusion = token_ce + res.pop("ce"), diffusion + res.pop("diffusion")
            metrics.update({f"{modality}_{k}": v for k, v in res.items()})
        metrics["token_ce"], metrics["diffusion"] = token_ce, diffusion
        metrics["loss"] = (c.text_loss_weight * text_ce + c.token_loss_weight * token_ce
                           + c.diffusion_loss_weight * diffusion)
        return metrics

    # -- persistence ---------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """config.json + model.safetensors (backbone and heads), text_tokenizer/, codecs/<name>/."""
        folder = Path(folder)
        save_folder(folder, {"model_type": self.MODEL_TYPE, **self.config.to_dict()}, self.state_dict())
        self.text.save_pretrained(folder / "text_tokenizer")
        for name, codec in self.codecs.items():
            codec.save_pretrained(folder / "codecs" / name)

    @torch.no_grad()
    def adopt_weights(self, folder: str | os.PathLike, heads: Mapping[str, str] | None = None) -> list[str]:
        """Start from another unified model's weights, to fine-tune it or grow it a modality: its backbone,
        and each head of this model from the head `heads.get(name, name)` there (e.g. {"video": "image"}:
        a video head starts as the image head of the same codec). Text embedding rows are copied for the ids
        both text tokenizers share (this one may append specials). Returns the parameters left as they were."""
        folder = Path(folder)
        theirs = TextTokenizer.from_pretrained(folder / "text_tokenizer")
        probe = "a red circle moving right, the digit 7? 0123"
        shared = all(self.text.special_ids.get(s) == i for s, i in theirs.special_ids.items())
        if theirs.vocab_size > self.text.vocab_size or theirs.encode(probe) != self.text.encode(probe) or not shared:
            raise ValueError(f"{folder}: its text tokenizer is not this model's (start from its text_tokenizer/ "
                             "and add specials to it, so that shared ids mean the same)")
        source = read_weights(folder, prefer_ema=False)
        check_finite(source, str(folder))  # a diverged model is no start
        rename = dict(heads or {})
        kept = []
        for name, tensor in self.state_dict().items():
            src = name
            if name.startswith("heads."):
                modality, rest = name[len("heads."):].split(".", 1)
                src = f"heads.{rename.get(modality, modality)}.{rest}"
            w = source.get(src)
            if w is None:
                kept.append(name)
            elif w.shape == tensor.shape:
                tensor.copy_(w)
            elif w.dim() == tensor.dim() and w.shape[1:] == tensor.shape[1:] and w.shape[0] < tensor.shape[0]:
                tensor[: w.shape[0]].copy_(w)  # a text table that grew: the shared ids' rows
            else:
                raise ValueError(f"{folder}: {src} has shape {tuple(w.shape)}, "
                                 f"this model's {name} {tuple(tensor.shape)}")
        return kept

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> UnifiedModel:
        folder = Path(folder)
        config = build_config(UnifiedConfig.from_dict, check_model_type(folder, cls.MODEL_TYPE), folder)
        for sub in ["text_tokenizer"] + [f"codecs/{h.modality}" for h in config.heads]:
            if not (folder / sub).is_dir():
                raise CheckpointError(f"{folder}: missing {sub}/ (a model folder holds config.json, "
                                      "model.safetensors, text_tokenizer/ and codecs/<modality>/)")
        text = TextTokenizer.from_pretrained(folder / "text_tokenizer")
        codecs = {h.modality: load_codec(folder / "codecs" / h.modality) for h in config.heads}
        model = cls(config, text, codecs)
        load_checked(model, read_weights(folder, prefer_ema=False), str(folder))
        return model.eval()
