"""What the trainer trains: the unified model or the HART tokenizer. A task builds the module, turns a
micro-batch of decoded samples into a loss, writes sample grids, and exports a model folder."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hart_core.tokenizer import HARTTokenizer, TokenizerConfig
from modalities import ImageCodec, TextTokenizer, load_codec, specials_for
from unified import Example, HeadConfig, UnifiedConfig, UnifiedModel
from unified.sequence import IGNORE

from .codecs import codec_folder, codec_specs, make_codec
from .config import TrainConfig
from .data.decode import sample_modality

TASKS = ("t2i", "caption", "qa")


log = logging.getLogger("recipes.tasks")

def save_grid(images: torch.Tensor, captions: list[str], path: Path) -> None:
    """A row of images [B, 3, H, W] in [0, 1] with their prompts in a sidecar text file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ImageCodec.to_pil(torch.cat(list(images), dim=2)[None])[0].save(path)  # [3, H, B*W]
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


class UnifiedTask:
    """Mixed text-to-item / describing / QA training of `UnifiedModel`, over every modality it has a codec for.

    model settings (`cfg.model`): backbone (a transformers config dict, or a local LLM folder),
    codecs ({modality: spec or {codec: spec, head: HeadConfig fields}}, see `recipes.codecs`; or the
    legacy codec + head, an image codec), text_tokenizer (a folder, to which missing modality specials
    are added; default: trained on the data's texts, with every modality's specials), init_from (a
    unified model folder whose weights the model starts from; init_heads: {new head: its head}, e.g.
    {video: image}), and UnifiedConfig fields (loss weights and token_loss_weighting, caption_dropout,
    self_correction, diffusion_token, max_length).
    """

    name = "unified"

    def __init__(self, cfg: TrainConfig, artifacts: Path):
        self.cfg, self.artifacts = cfg, artifacts
        weights = {t: float(cfg.task_weights.get(t, 0.0)) for t in TASKS}
        if not any(weights.values()):
            raise ValueError(f"task_weights must give some weight to one of {TASKS}")
        self.weights = weights
        self.specs = codec_specs(cfg.model)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities of the model, in the recipe's order (a sample's item is the first it holds)."""
        return tuple(s.modality for s in self.specs)

    # -- construction: rank 0 prepares the artifacts (codecs, text tokenizer), everyone loads them

    def prepare(self, samples_for_text) -> None:
        m = self.cfg.model
        for spec in self.specs:
            codec = make_codec(spec, self.cfg.seed, self.cfg.image_size)
            codec.save_pretrained(self.artifacts / "codecs" / spec.modality)
        if m.get("text_tokenizer"):
            text = TextTokenizer.from_pretrained(m["text_tokenizer"])
            text.add_specials([s for s in specials_for(self.modalities) if s not in text.specials])
        else:
            fields = ("caption", "question", "answer")
            corpus = [s[f] for s in samples_for_text() for f in fields if s.get(f)]
            if not corpus:
                raise ValueError("no texts in the data to train a text tokenizer on; set model.text_tokenizer")
            text = TextTokenizer.train(corpus, vocab_size=int(m.get("text_vocab_size", 512)),
                                       specials=specials_for(self.modalities))
        text.save_pretrained(self.artifacts / "text_tokenizer")

    def build(self) -> UnifiedModel:
        m = self.cfg.model
        text = TextTokenizer.from_pretrained(self.artifacts / "text_tokenizer")
        codecs = {spec.modality: load_codec(codec_folder(self.artifacts, spec.modality)) for spec in self.specs}
        heads = [HeadConfig(modality=spec.modality, **spec.head) for spec in self.specs]
        settings = {f.name for f in dataclasses.fields(UnifiedConfig)} - {"backbone", "heads"}
        unified_kwargs = {k: m[k] for k in settings if k in m}
        backbone = m.get("backbone")
        if backbone is None:
            raise ValueError("model.backbone is required: a transformers config dict or a local LLM folder")
        if isinstance(backbone, dict):
            backbone = {**backbone, "vocab_size": max(int(backbone.get("vocab_size", 0)), text.vocab_size)}
        model = UnifiedModel.build(text, codecs, backbone, heads=heads, **unified_kwargs)
        if m.get("init_from"):  # start from a trained model: same on every rank, before DeepSpeed
            kept = model.adopt_weights(m["init_from"], m.get("init_heads"))
            log.info("started from %s (%s); fresh: %s", m["init_from"], m.get("init_heads") or "same heads",
                     ", ".join(kept) or "nothing")
        (self.artifacts / "unified_config.json").write_text(json.dumps(model.config.to_dict(), indent=1))
        return model

    def rebuild(self) -> UnifiedModel:
        """The model skeleton for loading a checkpoint (no data, no pretrained download)."""
        config = UnifiedConfig.from_dict(json.loads((self.artifacts / "unified_config.json").read_text()))
        text = TextTokenizer.from_pretrained(self.artifacts / "text_tokenizer")
        codecs = {h.modality: load_codec(codec_folder(self.artifacts, h.modality)) for h in config.heads}
        return UnifiedModel(config, text, codecs)

    # -- training ------------------------------------------------------------------------------

    def examples(self, model: UnifiedModel, samples: list[dict], generator: torch.Generator) -> list[Example]:
        """One example per sample: its item is the first the sample holds of the model's modalities
        (pre-tokenised by the token cache, or encoded here, one batch per modality), its task drawn
        by the task weights among those the sample's texts allow."""
        modalities = [s.get("modality") or sample_modality(s, model.codecs) for s in samples]
        for s, m in zip(samples, modalities, strict=True):
            if m is None:
                raise ValueError(f"sample {s.get('key')} holds no item of the model's modalities {list(model.codecs)}")
        rows = [s.get("tokens") for s in samples]
        for m in dict.fromkeys(modalities):
            todo = [i for i, (mi, t) in enumerate(zip(modalities, rows, strict=True)) if mi == m and t is None]
            for i, t in zip(todo, model.codecs[m].encode_items([samples[i][m] for i in todo]), strict=True):
                rows[i] = t
        out = []
        for s, t, m in zip(samples, rows, modalities, strict=True):
            w = torch.tensor([self.weights["t2i"] if s.get("caption") else 0.0,
                              self.weights["caption"] if s.get("caption") else 0.0,
                              self.weights["qa"] if s.get("question") and s.get("answer") else 0.0])
            if w.sum() == 0:
                w = torch.tensor([1.0, 0.0, 0.0])
            task = TASKS[int(torch.multinomial(w.to(generator.device), 1, generator=generator))]
            text = s.get("answer") if task == "qa" else s.get("caption")
            out.append(Example(task, t, text, s.get("question") if task == "qa" else None, modality=m))
        return out

    def loss(self, model: UnifiedModel, samples: list[dict], generator: torch.Generator):
        """With `split_by_task`, one forward pass per kind of row (`UnifiedModel.training_batches`), so
        short caption rows are not padded to long t2i rows; same loss. ZeRO-3 keeps one pass: its ranks
        must run the same number of forward passes."""
        examples = self.examples(model, samples, generator)
        if self.cfg.split_by_task and self.cfg.zero_stage != 3:
            batches = model.training_batches(examples, generator)
        else:
            batches = [model.training_batch(examples, generator)]
        loss, metrics, tokens = 0.0, {}, 0
        for batch in batches:
            out = model(batch, generator)
            loss = loss + out.pop("loss")
            tokens += int(batch.valid.sum())
            writes_text = bool(batch.text_targets.ne(IGNORE).any())
            for k, v in out.items():  # each metric from the pass that has its targets
                if len(batches) == 1 or k.startswith("text_") == writes_text:
                    metrics[k] = float(v.detach())
        return loss, metrics, tokens

    @torch.no_grad()
    def samples(self, model: UnifiedModel, prompts: list[str], path: Path, write: bool) -> None:
        """A grid of images from the prompts; sample grids are images, so a model without an image
        codec writes none."""
        if "image" not in model.codecs:
            return
        images = model.generate_image(prompts, seed=0)  # the model's own default_cfg / default_top_k
        if write:
            save_grid(images, prompts, path)

    def export(self, model: UnifiedModel, folder: Path) -> None:
        model.save_pretrained(folder)


class TokenizerTask:
    """HART tokenizer training: reconstruction + VQ losses, decoding the discrete-only latent or the
    full hybrid one with probability 1/2 each (HART's alternating training).

    model settings: TokenizerConfig fields (vocab_size, z_channels, ch, ch_mult, v_patch_nums, ...).
    The patch discriminator of the reference training is not implemented yet.
    """

    name = "tokenizer"
    # a video sample trains on its frames (`video_frames` of them), so a video codec gets a frame tokenizer
    # made for its clips: one trained on still scenes reconstructs objects where stills never put them badly
    modalities = ("image", "video")

    def __init__(self, cfg: TrainConfig, artifacts: Path):
        if cfg.zero_stage == 3:
            raise ValueError("the tokenizer recipe supports ZeRO stages 0-2: its quantizer reads the codebook "
                             "outside forward(), which ZeRO-3 partitioning does not gather")
        self.cfg, self.artifacts = cfg, artifacts
        # dead-code restart: VQ codebooks collapse onto a handful of codes unless unused ones are revived
        self.restart_every = int(cfg.model.get("restart_dead_codes_every", 0))
        if self.restart_every and cfg.zero_stage > 0:
            raise ValueError("restart_dead_codes_every needs zero_stage 0 (ZeRO 1/2 keep a separate fp32 master "
                             "copy of the codebook that a restart would not reach)")
        self.hits: torch.Tensor | None = None

    def prepare(self, samples_for_text) -> None:
        d = dict(self.cfg.model)
        d.setdefault("freeze_codebook_for_hybrid", False)
        config = TokenizerConfig.from_dict(d)
        (self.artifacts / "tokenizer_config.json").write_text(json.dumps(config.to_dict(), indent=1))

    def build(self) -> HARTTokenizer:
        config = TokenizerConfig.from_dict(json.loads((self.artifacts / "tokenizer_config.json").read_text()))
        model = HARTTokenizer(config)
        model.requires_grad_(True)
        size = model.image_size
        if size != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"tokenizer config makes {size} images but image_size is {self.cfg.image_size}")
        return model

    rebuild = build

    def loss(self, model: HARTTokenizer, samples: list[dict], generator: torch.Generator):
        # the codec's own conversion (size checks, uint8 -> [-1, 1]), so training sees what encode sees
        images = ImageCodec(model).preprocess(frames_of(samples))
        continuous = bool(torch.rand((), generator=generator, device=generator.device) < 0.5)
        out = model.loss(images.to(next(model.parameters()).dtype), continuous=continuous)
        self.count_codes(out["indices"], model.config.vocab_size)
        metrics = {"recon": float(out["recon"].detach()), "vq": float(out["vq"].detach()),
                   "usage": float(out["usages"])}
        return out["loss"], metrics, len(samples)

    def count_codes(self, indices: list[torch.Tensor], vocab_size: int) -> None:
        """Add a micro-batch's codes to the use counts the next dead-code restart reads."""
        if self.restart_every:
            counts = torch.bincount(torch.cat([i.flatten() for i in indices]), minlength=vocab_size)
            self.hits = counts if self.hits is None else self.hits + counts

    @torch.no_grad()
    def after_step(self, model: HARTTokenizer, step: int, generator: torch.Generator) -> dict:
        """Every `restart_dead_codes_every` steps, codes no rank used since the last restart (or the last
        checkpoint) become jittered copies of used ones (chosen in proportion to use), so the codebook keeps
        splitting its busiest codes instead of collapsing. Same hits and generator on every rank -> same result.
        Counting starts again at every checkpoint, as a run resumed from it does: same codebook either way."""
        if not self.restart_every or self.hits is None:
            return {}
        if (step + 1) % self.restart_every:
            if (step + 1) % self.cfg.save_every == 0:
                self.hits = None
            return {}
        import torch.distributed as dist

        hits = self.hits.to(torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(hits)
        self.hits = None
        dead = (hits == 0).nonzero().flatten()
        if len(dead) == 0 or hits.sum() == 0:
            return {"dead_codes": 0.0}
        book = model.quantize.embedding.weight
        # random draws on the generator's device (CPU or CUDA, as the training loop made it)
        src = torch.multinomial(hits.float().to(generator.device), len(dead), replacement=True, generator=generator)
        jitter = 1 + 0.05 * torch.randn(len(dead), book.shape[1], generator=generator, device=generator.device)
        book.data[dead.to(book.device)] = book.data[src.to(book.device)] * jitter.to(book.device, book.dtype)
        return {"dead_codes": float(len(dead))}

    @torch.no_grad()
    def samples(self, model: HARTTokenizer, prompts, path: Path, write: bool) -> None:
        pass  # reconstructions need data; not written yet

    def export(self, model: HARTTokenizer, folder: Path) -> None:
        """An image codec folder (codec.json + tokenizer/), usable as the unified recipe's codec."""
        model = model.float().eval()
        ImageCodec.from_hart_tokenizer(model).save_pretrained(folder)


def frames_of(samples: list[dict]) -> torch.Tensor:
    """uint8 [N, H, W, 3]: each sample's image, or every frame of its video."""
    out = []
    for s in samples:
        if s.get("image") is not None:
            out.append(torch.from_numpy(np.array(s["image"].convert("RGB"))).unsqueeze(0))
        elif s.get("video") is not None:
            out.append(torch.as_tensor(s["video"]))
        else:
            raise ValueError(f"sample {s.get('key')} holds neither an image nor a video")
    return torch.cat(out)


def make_task(cfg: TrainConfig, artifacts: Path):
    from .audio_codec_task import AudioCodecTask  # it builds on TokenizerTask

    tasks = {"unified": UnifiedTask, "tokenizer": TokenizerTask, "audio_codec": AudioCodecTask}
    if cfg.task not in tasks:
        raise ValueError(f"unknown task {cfg.task!r} (known: {sorted(tasks)})")
    return tasks[cfg.task](cfg, artifacts)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
