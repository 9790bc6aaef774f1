"""`hart-unified demo`: a handful of prompts end to end, written to a folder with an index.html: for an
image model the images (with their coarse-to-fine strips) and the model's own caption of each; for a
video model the clips (GIFs, shown inline) and the model's own description of each; for an audio model
players and spectrograms of text-to-audio clips with the model's description of each, and a continuation."""

from __future__ import annotations

import html
from pathlib import Path

import torch
from PIL import Image

DEMO_PROMPTS = [
    "a red circle in the top left",
    "a blue square in the center",
    "a green triangle at the bottom",
    "a yellow circle in the top right and a purple square at the bottom",
    "the digit 3",
    "the digit 7",
]
DEMO_VIDEO_PROMPTS = [
    "a red circle moving right",
    "a blue square moving up",
    "a green triangle moving left and a yellow circle moving down",
    "a purple square moving down",
]
DEMO_AUDIO_PROMPTS = [
    "a rising scale on a square wave, fast",
    "a repeating arpeggio on a plucked string, slow",
    "a pair of alternating notes on a sine wave, fast",
    "a falling scale on a saw wave, slow",
]
ZOOM = 4  # small synthetic frames, shown 4x with nearest-neighbour pixels


def _zoom(images: torch.Tensor) -> torch.Tensor:
    return images.repeat_interleave(ZOOM, dim=-1).repeat_interleave(ZOOM, dim=-2)


def image_rows(model, out: Path, prompts: list[str], cfg: float | None, seed: int) -> list[str]:
    from modalities import ImageCodec

    steps: list[torch.Tensor] = []
    images = model.generate_image(prompts, cfg=cfg, seed=seed, callback=lambda k, n, img: steps.append(img.cpu()))
    # the model reads back the PNGs it wrote (the image codec reads float tensors as [-1, 1], not as images)
    captions = model.describe(ImageCodec.to_pil(images.cpu()), modality="image", max_new_tokens=24)
    rows = []
    for i, (prompt, caption) in enumerate(zip(prompts, captions, strict=True)):
        ImageCodec.to_pil(_zoom(images[i : i + 1].cpu()))[0].save(out / f"{i:02d}.png")
        ImageCodec.to_pil(_zoom(torch.cat([s[i] for s in steps], dim=2)[None]))[0].save(out / f"{i:02d}_scales.png")
        rows.append(f"<tr><td>{html.escape(prompt)}</td><td><img src='{i:02d}.png'></td>"
                    f"<td><img src='{i:02d}_scales.png'></td><td>{html.escape(caption)}</td></tr>")
        print(f"{prompt!r} -> {out / f'{i:02d}.png'} -> caption {caption!r}")
    return ["<tr><th>prompt</th><th>image</th><th>scales, coarse to fine</th><th>the model's caption of it</th></tr>",
            *rows]


def video_rows(model, out: Path, prompts: list[str], cfg: float | None, seed: int, frames: int) -> list[str]:
    from modalities import write_video
    from modalities.video_write import as_uint8_frames

    clips = model.generate(prompts, modality="video", segments=frames, cfg=cfg, seed=seed).cpu()
    texts = model.describe([torch.from_numpy(as_uint8_frames(c)) for c in clips], modality="video",
                           max_new_tokens=40)
    rows = []
    for i, (prompt, clip, text) in enumerate(zip(prompts, clips, texts, strict=True)):
        write_video(out / f"clip{i:02d}.gif", _zoom(clip), fps=4)
        write_video(out / f"clip{i:02d}.mp4", clip, fps=4)
        rows.append(f"<tr><td>{html.escape(prompt)}</td><td><img src='clip{i:02d}.gif'></td>"
                    f"<td>{html.escape(text)}</td></tr>")
        print(f"{prompt!r} -> {out / f'clip{i:02d}.gif'} -> description {text!r}")
    return ["<tr><th>prompt</th><th>clip</th><th>the model's description of it</th></tr>", *rows]


def spectrogram_image(wave: torch.Tensor, sample_rate: int, height: int = 128) -> Image.Image:
    """A log-mel spectrogram as a picture: time left to right, low notes at the bottom."""
    from modalities.audio_metrics import log_mel

    mel = log_mel(wave.float(), sample_rate, n_fft=512, n_mels=64)
    mel = (mel - mel.max()).clamp(min=-8) / 8 + 1  # the top 8 nats (about 70 dB) in [0, 1]
    pixels = (mel.flip(0) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels).resize((pixels.shape[1] * 3, height), Image.Resampling.NEAREST)
    return image.convert("RGB")


def audio_rows(model, out: Path, prompts: list[str], cfg: float | None, seed: int) -> list[str]:
    from modalities import save_audio

    from .data.tones import CLIP_SECONDS, ToneWorld

    codec = model.codecs["audio"]
    sr = codec.sample_rate
    audio = model.generate_audio(prompts, CLIP_SECONDS, cfg=cfg, seed=seed).cpu()
    texts = model.describe(list(audio), modality="audio", max_new_tokens=24)
    rows = ["<tr><th>prompt</th><th>audio</th><th>spectrogram</th><th>the model's description of it</th></tr>"]
    for i, (prompt, wave, text) in enumerate(zip(prompts, audio, texts, strict=True)):
        save_audio(out / f"audio{i:02d}.wav", wave, sr)
        spectrogram_image(wave, sr).save(out / f"audio{i:02d}.png")
        rows.append(f"<tr><td>{html.escape(prompt)}</td><td><audio controls src='audio{i:02d}.wav'></audio></td>"
                    f"<td><img src='audio{i:02d}.png'></td><td>{html.escape(text)}</td></tr>")
        print(f"{prompt!r} -> {out / f'audio{i:02d}.wav'} -> description {text!r}")
    # continuation: the first second of a melody the model never heard, then the model's next second
    melody = ToneWorld(seed=1, sample_rate=sr).sample(0)
    given = torch.from_numpy(melody["audio"])[: 2 * codec.chunk]
    continued = model.continue_audio(given, 2 * codec.chunk_seconds, seed=seed)[0].cpu()
    for name, wave in (("given", given), ("continued", continued)):
        save_audio(out / f"{name}.wav", wave, sr)
        spectrogram_image(wave, sr).save(out / f"{name}.png")
    rows.append(f"<tr><td>continuation of {html.escape(melody['caption'])}: the given second, then the model's</td>"
                "<td><audio controls src='given.wav'></audio><br><audio controls src='continued.wav'></audio></td>"
                "<td><img src='given.png'><br><img src='continued.png'></td><td></td></tr>")
    return rows


def run_demo(model, out: str | Path, prompts: list[str] | None = None, cfg: float | None = None, seed: int = 0,
             frames: int = 4) -> Path:
    """Write the demo folder; returns its index.html."""
    if not {"image", "video", "audio"} & set(model.codecs):
        raise ValueError(f"the demo shows images, video or audio; this model has: {', '.join(model.codecs)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    if "image" in model.codecs:
        sections.append(("images", image_rows(model, out, prompts or DEMO_PROMPTS, cfg, seed)))
    if "video" in model.codecs:
        sections.append(("video", video_rows(model, out, prompts or DEMO_VIDEO_PROMPTS, cfg, seed, frames)))
    if "audio" in model.codecs:
        sections.append(("audio", audio_rows(model, out, prompts or DEMO_AUDIO_PROMPTS, cfg, seed)))
    body = "".join(f"<h2>{name}</h2><table border=1 cellpadding=6>{''.join(rows)}</table>" for name, rows in sections)
    index = out / "index.html"
    index.write_text(f"<html><body><h1>hart-unified demo</h1>{body}</body></html>\n")
    return index
