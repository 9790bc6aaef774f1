"""The unified model's configuration (architecture and losses; sampling defaults live per modality in
its `HeadConfig`) and the training example."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hart_core.quantizer import HybridTokens

from .heads import HeadConfig

# settings that moved from the model into each modality's head; read from older config.json files
_MOVED_TO_HEADS = ("default_cfg", "default_top_k")


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
    caption_dropout: float = 0.1  # classifier-free guidance: train item writing without the prompt
    # self-correction: each code of a written item's scales but the last is replaced by a random one with this
    # probability in what the model reads, and the later scales' targets are re-encoded to correct it, so a model
    # learns to repair its own sampling errors instead of drawing on from them (Infinity's bitwise self-correction)
    self_correction: float = 0.0
    diffusion_token: str = "sampled"  # residual target relative to the sampled or the ground-truth code
    max_length: int = 2048

    def __post_init__(self) -> None:
        if self.token_loss_weighting not in ("token", "scale"):
            raise ValueError(f"token_loss_weighting must be 'token' or 'scale', not {self.token_loss_weighting!r}")
        if not 0.0 <= self.self_correction < 1.0:
            raise ValueError(f"self_correction must be in [0, 1), not {self.self_correction}")
        if self.diffusion_token not in ("sampled", "ground_truth"):
            raise ValueError(f"diffusion_token must be 'sampled' or 'ground_truth', not {self.diffusion_token!r}")
        names = [h.modality for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"one head per modality, got {names}")

    def head(self, modality: str) -> HeadConfig:
        for h in self.heads:
            if h.modality == modality:
                return h
        raise ValueError(f"this model has no {modality!r} head (it has: {[h.modality for h in self.heads]})")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["heads"] = [h.to_dict() for h in self.heads]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UnifiedConfig:
        d = dict(d)
        d.pop("model_type", None)
        moved = {k: d.pop(k) for k in _MOVED_TO_HEADS if k in d}
        d["heads"] = [HeadConfig(**{**moved, **h}) for h in d.get("heads", [])]
        return cls(**d)


@dataclass
class Example:
    """One training example: `task` names a template ("t2i", "caption", "qa", ... see templates.py),
    `tokens` holds the item's segments as rows (an image: one row). `text` is the prompt of an item
    to write (None or "": unconditional), the caption, or the answer of "qa"."""

    task: str
    tokens: HybridTokens
    text: str | None
    question: str | None = None
    modality: str = "image"
