"""What the trainer trains: the unified model or the HART tokenizer. A task builds the module, turns a
micro-batch of decoded samples into a loss, writes sample grids, and exports a model folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn as nn

from hart_core.tokenizer import HARTTokenizer, TokenizerConfig
from modalities import ImageCodec, TextTokenizer, debug_image_codec, load_codec
from unified import Example, HeadConfig, UnifiedConfig, UnifiedModel
from unified.sequence import IGNORE

from .config import TrainConfig

TASKS = ("t2i", "caption", "qa")


def save_grid(images: torch.Tensor, captions: list[str], path: Path) -> None:
    """A row of images in [0, 1] with their prompts in a sidecar text file."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    row = torch.cat(list(images.clamp(0, 1)), dim=2)  # [3, H, B*W]
    Image.fromarray(row.mul(255).round().byte().permute(1, 2, 0).cpu().numpy()).save(path)
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


class UnifiedTask:
    """Mixed text-to-image / captioning / QA training of `UnifiedModel`.

    model settings (`cfg.model`): backbone (a transformers config dict, or a local LLM folder),
    codec ("debug" or a codec / released HART tokenizer folder), text_tokenizer (a folder; default:
    trained on the data's texts), head (HeadConfig fields), and UnifiedConfig fields (loss weights and
    token_loss_weighting, caption_dropout, diffusion_token, max_length).
    """

    name = "unified"

    def __init__(self, cfg: TrainConfig, artifacts: Path):
        self.cfg, self.artifacts = cfg, artifacts
        weights = {t: float(cfg.task_weights.get(t, 0.0)) for t in TASKS}
        if not any(weights.values()):
            raise ValueError(f"task_weights must give some weight to one of {TASKS}")
        self.weights = weights

    # -- construction: rank 0 prepares the artifacts (codec, text tokenizer), everyone loads them

    def prepare(self, samples_for_text) -> None:
        m = self.cfg.model
        codec_spec = m.get("codec", "debug")
        if codec_spec == "debug":
            codec = debug_image_codec(self.cfg.seed, image_size=self.cfg.image_size)
        elif (Path(codec_spec) / "codec.json").is_file():
            codec = load_codec(codec_spec)
        else:
            codec = ImageCodec.from_official(codec_spec)
        codec.save_pretrained(self.artifacts / "codec")
        if m.get("text_tokenizer"):
            text = TextTokenizer.from_pretrained(m["text_tokenizer"])
        else:
            fields = ("caption", "question", "answer")
            corpus = [s[f] for s in samples_for_text() for f in fields if s.get(f)]
            if not corpus:
                raise ValueError("no texts in the data to train a text tokenizer on; set model.text_tokenizer")
            text = TextTokenizer.train(corpus, vocab_size=int(m.get("text_vocab_size", 512)))
        text.save_pretrained(self.artifacts / "text_tokenizer")

    def build(self) -> UnifiedModel:
        m = self.cfg.model
        text = TextTokenizer.from_pretrained(self.artifacts / "text_tokenizer")
        codec = load_codec(self.artifacts / "codec")
        settings = {f.name for f in dataclasses.fields(UnifiedConfig)} - {"backbone", "heads"}
        unified_kwargs = {k: m[k] for k in settings if k in m}
        # sampling defaults are per modality now; a recipe may still set them at the model level
        moved = {k: m[k] for k in ("default_cfg", "default_top_k") if k in m}
        head = HeadConfig(modality="image", **{**moved, **m.get("head", {})})
        backbone = m.get("backbone")
        if backbone is None:
            raise ValueError("model.backbone is required: a transformers config dict or a local LLM folder")
        if isinstance(backbone, dict):
            backbone = {**backbone, "vocab_size": max(int(backbone.get("vocab_size", 0)), text.vocab_size)}
        model = UnifiedModel.build(text, {"image": codec}, backbone, heads=[head], **unified_kwargs)
        (self.artifacts / "unified_config.json").write_text(json.dumps(model.config.to_dict(), indent=1))
        return model

    def rebuild(self) -> UnifiedModel:
        """The model skeleton for loading a checkpoint (no data, no pretrained download)."""
        config = UnifiedConfig.from_dict(json.loads((self.artifacts / "unified_config.json").read_text()))
        text = TextTokenizer.from_pretrained(self.artifacts / "text_tokenizer")
        return UnifiedModel(config, text, {"image": load_codec(self.artifacts / "codec")})

    # -- training ------------------------------------------------------------------------------

    def examples(self, model: UnifiedModel, samples: list[dict], generator: torch.Generator) -> list[Example]:
        if all("tokens" in s for s in samples):  # pre-tokenised (token_cache)
            rows = [s["tokens"] for s in samples]
        else:
            rows = model.codecs["image"].encode([s["image"] for s in samples]).rows()
        out = []
        for s, t in zip(samples, rows, strict=True):
            w = torch.tensor([self.weights["t2i"] if s.get("caption") else 0.0,
                              self.weights["caption"] if s.get("caption") else 0.0,
                              self.weights["qa"] if s.get("question") and s.get("answer") else 0.0])
            if w.sum() == 0:
                w = torch.tensor([1.0, 0.0, 0.0])
            task = TASKS[int(torch.multinomial(w.to(generator.device), 1, generator=generator))]
            text = s.get("answer") if task == "qa" else s.get("caption")
            out.append(Example(task, t, text, s.get("question") if task == "qa" else None))
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
        images = ImageCodec(model).preprocess([s["image"] for s in samples])
        continuous = bool(torch.rand((), generator=generator, device=generator.device) < 0.5)
        out = model.loss(images.to(next(model.parameters()).dtype), continuous=continuous)
        if self.restart_every:
            counts = torch.bincount(torch.cat([i.flatten() for i in out["indices"]]), minlength=model.config.vocab_size)
            self.hits = counts if self.hits is None else self.hits + counts
        metrics = {"recon": float(out["recon"].detach()), "vq": float(out["vq"].detach()),
                   "usage": float(out["usages"])}
        return out["loss"], metrics, len(samples)

    @torch.no_grad()
    def after_step(self, model: HARTTokenizer, step: int, generator: torch.Generator) -> dict:
        """Every `restart_dead_codes_every` steps, codes no rank used since the last restart become
        jittered copies of used ones (chosen in proportion to use), so the codebook keeps splitting
        its busiest codes instead of collapsing. Same hits and generator on every rank -> same result."""
        if not self.restart_every or (step + 1) % self.restart_every or self.hits is None:
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


def make_task(cfg: TrainConfig, artifacts: Path):
    tasks = {"unified": UnifiedTask, "tokenizer": TokenizerTask}
    if cfg.task not in tasks:
        raise ValueError(f"unknown task {cfg.task!r} (known: {sorted(tasks)})")
    return tasks[cfg.task](cfg, artifacts)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
