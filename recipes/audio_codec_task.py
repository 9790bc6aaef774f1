"""The audio codec recipe: `AudioCodec` trained on multi-resolution STFT + mel + complex STFT (phase) + waveform
losses and the quantizer's VQ loss, decoding the discrete-only latent or the full hybrid one with probability
1/2 each (HART's alternating training), in the same DeepSpeed trainer as the other tasks.

model settings: AudioCodecConfig fields (sample_rate, chunk, n_fft, hop, width, dilations, latent_dim,
vocab_size, scales, ...), loss weights (stft_weight, mel_weight, phase_weight, wave_weight),
restart_dead_codes_every.
The recipe's `sample_rate` must equal the codec's (the data is resampled to it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from modalities.audio import AudioCodec, AudioCodecConfig
from modalities.audio_metrics import complex_stft_loss, mel_distance, multi_resolution_stft_loss

from .config import TrainConfig
from .tasks import TokenizerTask

LOSS_WEIGHTS = {"stft_weight": 1.0, "mel_weight": 1.0, "wave_weight": 0.1, "phase_weight": 1.0}


class AudioCodecTask(TokenizerTask):
    name = "audio_codec"
    modalities = ("audio",)

    def __init__(self, cfg: TrainConfig, artifacts: Path):
        super().__init__(cfg, artifacts)
        self.weights = {k: float(cfg.model.get(k, v)) for k, v in LOSS_WEIGHTS.items()}

    def _config(self) -> AudioCodecConfig:
        known = {f.name for f in dataclasses.fields(AudioCodecConfig)}
        settings = {k: v for k, v in self.cfg.model.items() if k in known}
        unknown = set(self.cfg.model) - known - set(LOSS_WEIGHTS) - {"restart_dead_codes_every"}
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)} for the audio codec recipe "
                             f"(known: {sorted(known | set(LOSS_WEIGHTS))}, restart_dead_codes_every)")
        config = AudioCodecConfig(**settings)
        if self.cfg.sample_rate != config.sample_rate:
            raise ValueError(f"the recipe's sample_rate ({self.cfg.sample_rate}) must equal the codec's "
                             f"({config.sample_rate}): the data is resampled to the recipe's")
        return config

    def prepare(self, samples_for_text) -> None:
        config = dataclasses.asdict(self._config())
        (self.artifacts / "audio_codec_config.json").write_text(json.dumps(config, indent=1))

    def build(self) -> AudioCodec:
        config = AudioCodecConfig(**json.loads((self.artifacts / "audio_codec_config.json").read_text()))
        return AudioCodec(config).train()

    rebuild = build

    def loss(self, model: AudioCodec, samples: list[dict], generator: torch.Generator):
        chunks = torch.cat([model.to_chunks(s["audio"]) for s in samples])
        continuous = bool(torch.rand((), generator=generator, device=generator.device) < 0.5)
        out = model(chunks, continuous)
        pred = out["out"]
        stft = multi_resolution_stft_loss(pred, chunks)
        mel = mel_distance(pred, chunks, model.sample_rate)
        wave = F.l1_loss(pred, chunks)
        phase = complex_stft_loss(pred, chunks, model.config.n_fft)
        w = self.weights
        loss = (w["stft_weight"] * stft + w["mel_weight"] * mel + w["wave_weight"] * wave + w["phase_weight"] * phase
                + out["vq_loss"])
        self.count_codes(out["indices"], model.config.vocab_size)
        metrics = {"stft": float(stft.detach()), "mel": float(mel.detach()), "wave_l1": float(wave.detach()),
                   "phase": float(phase.detach()),
                   "vq": float(out["vq_loss"].detach()), "usage": float(out["usages"])}
        return loss, metrics, len(samples)

    @torch.no_grad()
    def samples(self, model: AudioCodec, prompts, path: Path, write: bool) -> None:
        pass  # reconstructions are measured by `python -m recipes.eval.audio_codec`

    def export(self, model: AudioCodec, folder: Path) -> None:
        """An audio codec folder (codec.json + weights/), usable as a unified recipe's audio codec."""
        model.float().eval().save_pretrained(folder)
