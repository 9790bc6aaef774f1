"""Training configuration: a YAML recipe plus `key=value` overrides from the command line."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    task: str = "unified"  # "unified" (one backbone), "tokenizer" (the HART VQ-VAE) or "audio_codec"
    output_dir: str = "runs/debug"
    seed: int = 0
    steps: int = 100
    global_batch: int = 8  # samples per optimizer step, over all ranks and accumulation steps
    micro_batch: int = 4  # samples per forward pass on one rank
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    zero_stage: int = 0  # 0, 1, 2 or 3
    offload_optimizer: bool = False  # ZeRO-2/3: optimizer states in CPU memory
    precision: str = "fp32"  # "fp32" or "bf16"
    ema_decay: float = 0.0  # 0 disables the EMA copy of the weights
    save_every: int = 50
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 3  # stop after this many steps in a row with a NaN/Inf loss (each one skipped)
    log_every: int = 1
    sample_every: int = 0  # write a PNG grid of generated samples every N steps (0: never)
    sample_prompts: list[str] = field(default_factory=list)
    image_size: int = 16  # images and video frames
    video_frames: int | None = None  # frames sampled evenly from each video (None: every frame of the file)
    sample_rate: int | None = None  # audio resampled to this rate (None: the file's own; set it to the codec's)
    audio_seconds: float | None = None  # audio cut or zero-padded to this length (None: as long as each file)
    token_cache: str | None = None  # folder: pre-tokenise images once with the codec and reuse (unified task)
    data: Any = None  # a data source spec (see recipes.data.open_source)
    model: dict = field(default_factory=dict)  # task-specific model settings
    task_weights: dict = field(default_factory=lambda: {"t2i": 1.0, "caption": 1.0, "qa": 0.0})
    # unified task: one forward pass per kind of row (image-writing, text-writing), so short rows are not
    # padded to long ones; the same loss (see UnifiedTask.loss)
    split_by_task: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):  # YAML reads 3e-3 (no dot) as a string
            value = getattr(self, f.name)
            if f.type in ("float", "int") and isinstance(value, str):
                try:
                    setattr(self, f.name, float(value) if f.type == "float" else int(value))
                except ValueError:
                    raise ValueError(f"{f.name}: expected a number, got {value!r}") from None
        self.betas = tuple(float(b) for b in self.betas)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch}")
        if self.offload_optimizer and self.zero_stage < 2:
            raise ValueError("offload_optimizer needs zero_stage 2 or 3")
        for name in ("steps", "global_batch", "micro_batch", "save_every", "keep_checkpoints", "log_every",
                     "max_nonfinite_steps", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "sample_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {getattr(self, name)!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")

    @property
    def decode_options(self) -> dict:
        """What the data decoders need besides the image size (see recipes.data.decode_sample)."""
        return {"video_frames": self.video_frames, "sample_rate": self.sample_rate, "audio_seconds": self.audio_seconds}

    @property
    def micro_batches_per_step(self) -> int:
        return self.global_batch // self.micro_batch

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe and apply `a.b=value` overrides (values parsed as YAML: 3, 1e-3, true, [1, 2])."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        _set(raw, key, yaml.safe_load(value))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"unknown recipe keys: {sorted(unknown)} (known: {sorted(names)})")
    return TrainConfig(**raw)
