"""A tiny random unified model over any set of modalities in one call, for tests and demos.

    model = debug_model()                                     # text + 16x16 images
    model = debug_model(["image", "audio"])                   # + a 1-D toy codec named "audio"
    model = debug_model({"video": my_codec}, texts=corpus)    # your own codecs, a tokenizer from corpus

Its weights mean nothing; it has every part a real model has (HF backbone, per-modality heads with
residual diffusion heads, a sentencepiece text tokenizer with each modality's specials).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from modalities import ModalityCodec, TextTokenizer, debug_image_codec, debug_latent_codec, specials_for

from .heads import HeadConfig
from .model import UnifiedModel

DEBUG_TEXTS = (
    "a red circle", "a blue square", "a green triangle", "a yellow bar", "what shape is it",
    "what colour is it", "a rising tone", "a falling tone", "a ball moving left", "a ball moving right",
)


def debug_backbone(vocab_size: int, hidden: int = 64, layers: int = 2, kind: str = "qwen2",
                   max_positions: int = 1024) -> dict:
    """A transformers config dict of a tiny decoder LM (qwen2 or llama)."""
    return {"model_type": kind, "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": max_positions}


def debug_codec(modality: str, seed: int = 0) -> ModalityCodec:
    """16x16 images for "image"; a 1-D latent codec (grids 1, 2, 4) named after any other modality."""
    if modality == "image":
        return debug_image_codec(seed)
    return debug_latent_codec(seed=seed, name=modality)


def debug_model(modalities: Iterable[str] | Mapping[str, ModalityCodec] = ("image",), *, texts: Iterable[str] = (),
                vocab_size: int = 320, hidden: int = 64, layers: int = 2, kind: str = "qwen2", seed: int = 0,
                max_length: int = 1024, **config_kwargs) -> UnifiedModel:
    """A tiny random `UnifiedModel` (eval mode). modalities: names (debug codecs are made for them)
    or {name: codec}. texts: extra lines for the text tokenizer's corpus."""
    codecs = (dict(modalities) if isinstance(modalities, Mapping)
              else {m: debug_codec(m, seed) for m in modalities})
    corpus = [*DEBUG_TEXTS, *texts] * 4
    text = TextTokenizer.train(corpus, vocab_size=vocab_size, specials=specials_for(codecs))
    heads = [HeadConfig(modality=m, diff_width=64, diff_depth=2) for m in codecs]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UnifiedModel.build(text, codecs, debug_backbone(text.vocab_size, hidden, layers, kind, max_length),
                                   heads=heads, max_length=max_length, **config_kwargs)
    return model.eval()


def fit(model: UnifiedModel, examples: list, steps: int, lr: float = 3e-3,
        generator: torch.Generator | None = None) -> dict:
    """Train on one fixed batch of `Example`s with AdamW for `steps` steps (tests, notebooks: does the model
    learn these?); returns the last step's metrics, the model left in eval mode."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    out: dict = {}
    for _ in range(steps):
        out = model(model.training_batch(examples, generator), generator)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    return {k: float(v.detach()) for k, v in out.items()}
